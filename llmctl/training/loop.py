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
from llmctl.training.checkpoint import (is_sharded, read_checkpoint, resolve_resume, restore_rng, write_checkpoint,
                                        write_sharded_checkpoint)
from llmctl.training.config import TrainConfig
from llmctl.training.distributed import (WithStateDict, fsdp_requested, full_state_dict, load_sharded,
                                         refuse_deepspeed, shard_model)
from llmctl.training.metrics import MetricsLog, plot_loss
from llmctl.training.optim import build_optimizer
from llmctl.training.recompute import recomputing, use_recomputed_norms
from llmctl.training.task import TrainTask

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}


def cpu_only() -> bool:
    """No accelerator here: accelerate must be told, or torchrun on CPU runs N separate jobs."""
    mps = getattr(torch.backends, "mps", None)
    return not torch.cuda.is_available() and not (mps is not None and mps.is_available())


def resolve_precision(precision: str) -> str:
    """auto: bf16 where the GPU has it, fp16 (with loss scaling) on older GPUs, fp32 on CPUs."""
    if precision != "auto":
        return precision
    if not torch.cuda.is_available():
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def check_compiler(device: torch.device) -> None:
    """--compile needs what inductor compiles with: Triton on GPUs, a C++ compiler on CPUs."""
    import importlib.util
    import shutil

    if device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            raise UsageError("--compile needs Triton on GPUs, and it is not installed", hint="pip install triton, or "
                             "drop --compile")
    elif not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
        raise UsageError("--compile needs a C++ compiler on CPUs (g++ or clang++), and none was found",
                         hint="install one (apt-get install g++), or drop --compile")


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
        self._pending: list[tuple[int, torch.Tensor]] = []  # (step, loss on the device) not yet read
        # 6N per token (forward and backward through N weights): the progress line's MFU on GPUs
        self.flops_per_token = 6 * sum(p.numel() for p in model.parameters())

    # -- setup -------------------------------------------------------------------------------------
    def setup(self) -> None:
        from accelerate import Accelerator

        precision = self.precision = resolve_precision(self.cfg.precision)
        if torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: free speed, fine for training
            torch.backends.cudnn.allow_tf32 = True
        refuse_deepspeed()  # before accelerate, which would only say DeepSpeed is not installed
        # Accumulation through accelerate: DDP, FSDP and DeepSpeed each step once per grad_accum micro-batches.
        self.accelerator = Accelerator(mixed_precision={"fp32": "no"}.get(precision, precision), cpu=cpu_only(),
                                       gradient_accumulation_steps=self.cfg.grad_accum)
        refuse_deepspeed(self.accelerator)
        self.fsdp = fsdp_requested(self.cfg.fsdp)
        self.task.check(self.accelerator.num_processes)
        self.device = self.accelerator.device
        if self.cfg.compile:
            check_compiler(self.device)
        start = resolve_resume(self.resume, self.checkpoints)
        if self.resume and self.resume != "auto" and start is None:
            raise UsageError(f"--resume {self.resume}: no checkpoint found")
        optimizer_state = rng = None
        if start is not None:
            if is_sharded(start) != self.fsdp:
                raise UsageError(f"{start} was written {'with' if is_sharded(start) else 'without'} FSDP; "
                                 f"resume it the same way", hint="add or drop --fsdp")
            self.state, optimizer_state, rng = read_checkpoint(start, self.model, torch.device("cpu"))
            self.note(f"resuming from {start} (step {self.state['step']})")
        if self.fsdp:  # before the optimizer: sharding replaces the parameters
            if getattr(self.cfg, "optimizer", "adamw") != "adamw":  # Muon orthogonalises whole matrices, not shards
                raise UsageError(f"--fsdp trains with AdamW only, not --optimizer {self.cfg.optimizer}",
                                 hint="pass --optimizer adamw, or train without --fsdp")
            self.model = shard_model(self.model, self.cfg.fsdp_layers, self.device, precision)
        # cheap activations recomputed in backward (training/recompute.py); the compiler plans its own
        # memory, and FSDP frees the gathered weights the recipes would read between forward and backward
        self.recompute = not self.cfg.compile and not self.fsdp
        if self.recompute:
            use_recomputed_norms(self.model)
        if self.cfg.compile:
            self.model = torch.compile(self.model)
        self.optimizer = build_optimizer(self.model, self.cfg)
        if self.fsdp:  # sharded already; accelerate would wrap it in DDP on CPUs
            if start is not None:
                load_sharded(start, self.model, self.optimizer)
        else:
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
                self._pending.append((s["step"] + 1, self._step(world)))
                s["step"] += 1
                s["tokens"] += self.tokens_per_step
                s["elapsed"] = time.perf_counter() - t0
                window_tokens += self.tokens_per_step
                finishing = self.progress(s["elapsed"]) >= 1.0
                evaluating, saving = s["step"] % c.eval_every == 0, s["step"] % c.save_every == 0
                if s["step"] % c.log_every == 0 or s["step"] == 1 or finishing or evaluating or saving:
                    last_loss = self._read_losses()
                if s["step"] % c.log_every == 0 or s["step"] == 1 or finishing:
                    now = time.perf_counter()
                    tps = window_tokens / max(1e-9, now - window_start)
                    window_start, window_tokens = now, 0
                    row = {"step": s["step"], "loss": round(last_loss, 5), "lr": lr, "tokens": s["tokens"],
                           "tokens_per_s": round(tps, 1), "elapsed": round(s["elapsed"], 2),
                           "progress": self.progress(s["elapsed"]), **self.task.train_metrics()}
                    mfu = self.mfu(tps, self.flops_per_token)
                    if mfu is not None:
                        row["mfu"] = round(mfu, 4)
                    self._emit(row)
                if evaluating:
                    self.evaluate()
                if saving:
                    self.save_checkpoint()
        except KeyboardInterrupt:
            self._read_losses()  # never keep a step that went non-finite
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
        if self.fsdp:  # every process takes part; the main one gets the whole model, on the CPU
            self.history["whole_state_dict"] = full_state_dict(self.model)
        return final

    def _step(self, world: int) -> torch.Tensor:
        """One optimizer step over grad_accum micro-batches; the mean loss stays on the device (reading
        it would wait for the GPU every step)."""
        acc, c = self.accelerator, self.cfg
        total = torch.zeros((), device=self.device)
        for micro in range(c.grad_accum):
            batch = {k: v.to(self.device) for k, v in
                     self.task.train_batch(self.state["step"], micro, acc.process_index, world).items()}
            # accumulate(): no gradient sync but on the last micro-batch (DDP's no_sync, FSDP's
            # requires_gradient_sync), backward scaled by 1/grad_accum, DeepSpeed's own stepping.
            with acc.accumulate(self.model), acc.autocast():
                if self.fsdp:
                    self.model.set_requires_gradient_sync(acc.sync_gradients)
                with recomputing(self.recompute):
                    loss = self.task.loss(self.model, batch)
                acc.backward(loss)
            total += loss.detach() / c.grad_accum
        if not acc.sync_gradients:
            raise RuntimeError("gradient accumulation is out of step with the optimizer")
        if c.grad_clip > 0:
            if self.fsdp:  # sharded gradients: torch computes the global norm over DTensors
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
            else:
                acc.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return acc.reduce(total, reduction="mean") if world > 1 else total

    def _read_losses(self) -> float | None:
        """The losses of the steps since the last read, now on the host: the last one, or a
        TrainingError at the first that is not finite (before any checkpoint could keep it)."""
        pending, self._pending = self._pending, []
        if not pending:
            return None
        values = torch.stack([loss for _, loss in pending]).float().cpu().tolist()
        for (step, _), value in zip(pending, values):
            if not math.isfinite(value):
                raise TrainingError(f"the loss became {value} at step {step}; stopping",
                                    hint=f"lower --lr or raise --warmup-steps; the last good checkpoint is in "
                                         f"{self.checkpoints} (--resume auto)")
        return values[-1]

    # -- evaluation --------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        model = self.accelerator.unwrap_model(self.model)
        model.eval()
        acc = self.accelerator
        # Every process sums the same keys in the same order (even with no batches) so they reduce.
        keys = [*self.task.eval_keys, "count"]
        totals = torch.zeros(len(keys), device=self.device, dtype=torch.float64)
        for batch in self._eval_batches():
            if batch is None:  # this process has no batch left; a sharded forward needs it anyway
                with acc.autocast():
                    self.task.eval_sums(model, self._any_batch())
                continue
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
            # A sharded model generates only with every process taking part (the same seed: the same text).
            sample = self.task.sample(model) if self.is_main or self.fsdp else None
            sample = sample if self.is_main else None
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

    def _eval_batches(self):
        """This process's validation batches; under FSDP as many forwards on every process (every
        forward gathers weights from all of them), the missing ones as None."""
        acc = self.accelerator
        batches = list(self.task.eval_batches(acc.process_index, acc.num_processes))
        if self.fsdp and acc.num_processes > 1:
            most = torch.tensor(len(batches), device=self.device)
            torch.distributed.all_reduce(most, op=torch.distributed.ReduceOp.MAX)
            batches += [None] * (int(most) - len(batches))
        return batches

    def _any_batch(self) -> dict[str, torch.Tensor]:
        acc = self.accelerator
        batch = self.task.train_batch(0, 0, acc.process_index, acc.num_processes)
        return {k: v.to(self.device) for k, v in batch.items()}

    # -- checkpoints and output --------------------------------------------------------------------
    def save_checkpoint(self, pointers: tuple[str, ...] = ("last",)) -> None:
        if self.history.get("saved_step") == self.state["step"] and pointers == ("last",):
            return  # this step is already on disk (saved as the new best)
        self.history["saved_step"] = self.state["step"]
        self.accelerator.wait_for_everyone()
        state = dict(self.state, train_config=asdict(self.cfg), run_config=self.run_config)
        if self.fsdp and self.state["step"] > 0:  # every process writes its shards
            write_sharded_checkpoint(self.checkpoints, self.model, self.optimizer, state, pointers,
                                     self.cfg.keep_checkpoints, main=self.is_main,
                                     barrier=self.accelerator.wait_for_everyone)
        elif self.is_main and self.state["step"] > 0:
            write_checkpoint(self.checkpoints, self.accelerator.unwrap_model(self.model), self.optimizer, state,
                             pointers, self.cfg.keep_checkpoints)
        self.accelerator.wait_for_everyone()

    def _emit(self, row: dict[str, Any], sample: str | None = None) -> None:
        if not self.is_main:
            return
        self.metrics.log({k: v for k, v in row.items() if k != "progress"})
        self.on_progress(dict(row, sample=sample) if sample is not None else row)

    def unwrapped(self):
        """The model to save_pretrained (on the main process): under FSDP the whole model that train()
        gathered at its end, since a process holds only its shards."""
        if self.fsdp:
            return WithStateDict(self.model, self.history["whole_state_dict"])
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

