"""The one training loop, for pretraining and fine-tuning alike, on accelerate.

Shape (as torchtune's recipes): setup -> train -> save_checkpoint -> cleanup. What differs between
levels is the model and the `TrainTask` (training/task.py: batches, loss, evaluation, samples),
never the loop. The batch for step N depends only on (seed, N), so a resumed run sees exactly the
data an uninterrupted one would.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch

from llmctl.errors import TrainingError, UsageError
from llmctl.training.checkpoint import read_checkpoint, resolve_resume, restore_rng, write_checkpoint
from llmctl.training.config import TrainConfig
from llmctl.training.metrics import MetricsLog, plot_loss
from llmctl.training.task import TrainTask

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}


def cpu_only() -> bool:
    """No accelerator here: accelerate must be told, or torchrun on CPU runs N separate jobs."""
    mps = getattr(torch.backends, "mps", None)
    return not torch.cuda.is_available() and not (mps is not None and mps.is_available())


def param_groups(model, weight_decay: float) -> list[dict]:
    """Decay matrices; never decay biases, norms or (as nanoGPT) anything one-dimensional."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Trainer:
    def __init__(self, model, task: TrainTask, config: TrainConfig, run_dir: Path, *, resume: str | None = None,
                 tokens_per_step: int, on_progress: Callable[[dict], None] | None = None,
                 note: Callable[[str], None] = lambda s: None, run_config: dict | None = None):
        config.check()
        self.model, self.task, self.cfg, self.run_dir = model, task, config, run_dir
        self.resume, self.tokens_per_step = resume, tokens_per_step
        self.on_progress, self.note = on_progress or (lambda row: None), note
        self.run_config = run_config or {}
        self.checkpoints = run_dir / "checkpoints"
        self.state = {"step": 0, "tokens": 0, "elapsed": 0.0, "best_val_loss": None}
        self.history: dict[str, Any] = {}

    # -- setup -------------------------------------------------------------------------------------
    def setup(self) -> None:
        from accelerate import Accelerator

        precision = self.cfg.precision
        if precision == "auto":
            precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
        self.accelerator = Accelerator(mixed_precision={"fp32": "no"}.get(precision, precision), cpu=cpu_only())
        self.device = self.accelerator.device
        start = resolve_resume(self.resume, self.checkpoints)
        if self.resume and self.resume != "auto" and start is None:
            raise UsageError(f"--resume {self.resume}: no checkpoint found")
        optimizer_state = rng = None
        if start is not None:
            self.state, optimizer_state, rng = read_checkpoint(start, self.model, torch.device("cpu"))
            self.note(f"resuming from {start} (step {self.state['step']})")
        if self.cfg.compile:
            self.model = torch.compile(self.model)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, self.cfg.weight_decay), lr=self.cfg.lr,
                                           betas=(self.cfg.beta1, self.cfg.beta2),
                                           fused=self.device.type == "cuda" or None)
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        if optimizer_state is not None:
            self.optimizer.load_state_dict(optimizer_state)
        if rng is not None:
            restore_rng(rng)
        self.metrics = MetricsLog(self.run_dir, self.state["step"] if start else None,
                                  tensorboard=self.accelerator.is_main_process) if self.is_main else None

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    # -- schedule ----------------------------------------------------------------------------------
    def progress(self, elapsed: float) -> float:
        c, s = self.cfg, self.state
        parts = [s["step"] / c.max_steps if c.max_steps else 0.0, s["tokens"] / c.max_tokens if c.max_tokens else 0.0,
                 elapsed / c.max_time if c.max_time else 0.0]
        return max(parts)

    def lr_at(self, step: int, progress: float) -> float:
        c = self.cfg
        warm = min(1.0, (step + 1) / c.warmup_steps) if c.warmup_steps else 1.0
        cosine = c.min_lr + 0.5 * (c.lr - c.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))
        return warm * cosine

    # -- train -------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        c, s, acc = self.cfg, self.state, self.accelerator
        world = acc.num_processes
        self.model.train()
        t0 = time.perf_counter() - s["elapsed"]
        window_start, window_tokens = time.perf_counter(), 0
        last_loss = None
        try:
            while self.progress(time.perf_counter() - t0) < 1.0:
                lr = self.lr_at(s["step"], self.progress(time.perf_counter() - t0))
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                loss = self._step(world)
                if not math.isfinite(loss):
                    raise TrainingError(f"the loss became {loss} at step {s['step'] + 1}; stopping",
                                        hint=f"lower --lr or raise --warmup-steps; the last good checkpoint is in "
                                             f"{self.checkpoints} (--resume auto)")
                s["step"] += 1
                s["tokens"] += self.tokens_per_step
                s["elapsed"] = time.perf_counter() - t0
                window_tokens += self.tokens_per_step
                last_loss = loss
                finishing = self.progress(s["elapsed"]) >= 1.0
                if s["step"] % c.log_every == 0 or s["step"] == 1 or finishing:
                    now = time.perf_counter()
                    tps = window_tokens / max(1e-9, now - window_start)
                    window_start, window_tokens = now, 0
                    self._emit({"step": s["step"], "loss": round(loss, 5), "lr": lr, "tokens": s["tokens"],
                                "tokens_per_s": round(tps, 1), "elapsed": round(s["elapsed"], 2),
                                "progress": self.progress(s["elapsed"]), **self.task.train_metrics()})
                if s["step"] % c.eval_every == 0:
                    self.evaluate()
                if s["step"] % c.save_every == 0:
                    self.save_checkpoint()
        except KeyboardInterrupt:
            self.save_checkpoint()  # Ctrl-C keeps what was learned; --resume auto continues
            raise
        except torch.OutOfMemoryError:
            raise TrainingError(f"out of memory at step {s['step'] + 1} (batch {c.batch_size} x {c.grad_accum} "
                                f"accumulation)", hint="lower --batch-size (raise --grad-accum to keep the batch), "
                                "shorten sequences, or use --gradient-checkpointing / bf16") from None
        self.history["final_train_loss"] = last_loss
        self.history["seconds"] = s["elapsed"]
        last_eval = self.history.get("last_eval")
        final = last_eval if last_eval and last_eval["step"] == s["step"] else self.evaluate()
        self.save_checkpoint()
        return final

    def _step(self, world: int) -> float:
        acc, c = self.accelerator, self.cfg
        total = torch.zeros((), device=self.device)
        for micro in range(c.grad_accum):
            batch = {k: v.to(self.device) for k, v in
                     self.task.train_batch(self.state["step"], micro, acc.process_index, world).items()}
            sync = micro == c.grad_accum - 1
            context = acc.no_sync(self.model) if not sync and world > 1 else _null()
            with context, acc.autocast():
                loss = self.task.loss(self.model, batch) / c.grad_accum
            acc.backward(loss)
            total += loss.detach()
        mean = acc.reduce(total, reduction="mean") if world > 1 else total
        value = float(mean)
        if math.isfinite(value):
            if c.grad_clip > 0:
                acc.clip_grad_norm_(self.model.parameters(), c.grad_clip)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return value

    # -- evaluation --------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        model = self.accelerator.unwrap_model(self.model)
        model.eval()
        acc = self.accelerator
        # Every process sums the same keys in the same order (even with no batches) so they reduce.
        keys = [*self.task.eval_keys, "count"]
        totals = torch.zeros(len(keys), device=self.device, dtype=torch.float64)
        for batch in self.task.eval_batches(acc.process_index, acc.num_processes):
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with acc.autocast():
                sums = self.task.eval_sums(model, batch)
            totals += torch.tensor([sums[k] for k in keys], device=self.device, dtype=torch.float64)
        if acc.num_processes > 1:
            totals = acc.reduce(totals, reduction="sum")
        means = {k: float(totals[i] / totals[-1].clamp(min=1)) for i, k in enumerate(keys[:-1])}
        val_loss = means.pop("val_loss")
        row = {"step": self.state["step"], "val_loss": round(val_loss, 5), **{k: round(v, 5) for k, v in means.items()}}
        if self.task.reports_perplexity:
            row["val_ppl"] = round(math.exp(min(val_loss, 50)), 3)
        row.update(self.task.eval_extras(val_loss))
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            sample = self.task.sample(model) if self.is_main else None
        model.train()
        best = self.state["best_val_loss"]
        row["best"] = best is None or val_loss < best
        if row["best"]:
            self.state["best_val_loss"] = val_loss
        self._emit(row, sample=sample)
        self.history.update(last_eval=row, sample=sample)
        if row["best"] and self.state["step"] > 0:
            self.save_checkpoint(pointers=("last", "best"))
        return row

    # -- checkpoints and output --------------------------------------------------------------------
    def save_checkpoint(self, pointers: tuple[str, ...] = ("last",)) -> None:
        if self.history.get("saved_step") == self.state["step"] and pointers == ("last",):
            return  # this step is already on disk (saved as the new best)
        self.history["saved_step"] = self.state["step"]
        self.accelerator.wait_for_everyone()
        if self.is_main and self.state["step"] > 0:
            state = dict(self.state, train_config=asdict(self.cfg), run_config=self.run_config)
            write_checkpoint(self.checkpoints, self.accelerator.unwrap_model(self.model), self.optimizer, state,
                             pointers, self.cfg.keep_checkpoints)
        self.accelerator.wait_for_everyone()

    def _emit(self, row: dict[str, Any], sample: str | None = None) -> None:
        if not self.is_main:
            return
        self.metrics.log({k: v for k, v in row.items() if k != "progress"})
        self.on_progress(dict(row, sample=sample) if sample is not None else row)

    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    def mfu(self, tokens_per_s: float, flops_per_token: float) -> float | None:
        if self.device.type != "cuda":
            return None
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
        return None if peak is None else tokens_per_s * flops_per_token / (peak * self.accelerator.num_processes)

    def cleanup(self, title: str) -> None:
        if self.is_main:
            self.metrics.close()
            plot_loss(self.metrics.path, self.run_dir / "loss.png", title)
        self.accelerator.end_training()


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
