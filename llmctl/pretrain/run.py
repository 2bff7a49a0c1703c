"""`llmctl pretrain` as a function: prepare data, build the GPT, train it, save a Hugging Face
model directory, register it. Works the same under torchrun / accelerate launch (DDP).
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from llmctl.errors import UsageError
from llmctl.fsutil import atomic_write_json, save_pretrained_into
from llmctl.pretrain.config import PretrainConfig
from llmctl.pretrain.data import CorpusSpec
from llmctl.pretrain.experts import RouterStats, starved_warning
from llmctl.pretrain.model import GPTConfig, architecture, build_model, count_parameters
from llmctl.pretrain.prepare import prepare_data
from llmctl.pretrain.resolve import fill_in
from llmctl.pretrain.shards import Manifest, load_tokens
from llmctl.registry import default_name
from llmctl.training.config import TrainConfig
from llmctl.training.checkpoint import check_run_start
from llmctl.training.loop import Trainer, cpu_only
from llmctl.training.task import TrainTask

TRAIN_RECORD = "llmctl-train.json"


class PretrainTask(TrainTask):
    """Random windows of the token stream, next-token cross-entropy on every position; the windows of
    step N depend only on (seed, N)."""

    def __init__(self, data_dir: Path, manifest: Manifest, tokenizer, context: int, train: TrainConfig):
        self.train_tokens = load_tokens(data_dir, "train", manifest)
        self.val_tokens = load_tokens(data_dir, "val", manifest)
        self.manifest, self.tokenizer, self.context, self.cfg = manifest, tokenizer, context, train
        self.router_stats = None  # RouterStats when the model is a mixture of experts
        for split, tokens in (("training", self.train_tokens), ("validation", self.val_tokens)):
            if len(tokens) <= context + 1:
                raise UsageError(f"the context ({context} tokens) is longer than the {split} data ({len(tokens)} tokens)",
                                 hint="use a smaller --context, add data, or change --val-fraction")

    def _windows(self, tokens: np.ndarray, offsets: torch.Tensor) -> dict[str, torch.Tensor]:
        rows = np.stack([np.asarray(tokens[o:o + self.context + 1], dtype=np.int64) for o in offsets.tolist()])
        block = torch.from_numpy(rows)
        return {"input_ids": block[:, :-1].contiguous(), "labels": block[:, 1:].contiguous()}

    def train_batch(self, step: int, micro: int, rank: int, world: int) -> dict[str, torch.Tensor]:
        bs = self.cfg.batch_size
        generator = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step)
        offsets = torch.randint(0, len(self.train_tokens) - self.context - 1, (bs * self.cfg.grad_accum * world,),
                                generator=generator)
        start = (micro * world + rank) * bs  # the global batch is the same whatever the number of processes
        return self._windows(self.train_tokens, offsets[start:start + bs])

    def eval_batches(self, rank: int, world: int):
        generator = torch.Generator().manual_seed(self.cfg.seed + 1)
        bs = self.cfg.batch_size
        offsets = torch.randint(0, len(self.val_tokens) - self.context - 1, (self.cfg.eval_batches * bs * world,),
                                generator=generator)
        for start in range(rank * bs, len(offsets), bs * world):  # each process takes every world-th slice
            yield self._windows(self.val_tokens, offsets[start:start + bs])

    def train_metrics(self) -> dict[str, float]:
        return self.router_stats.metrics() if self.router_stats else {}

    def eval_extras(self, val_loss: float) -> dict[str, float]:
        # Bits per character compares runs with different tokenizers: nats/token -> bits/char.
        return {"val_bpc": round(val_loss / math.log(2) / self.manifest.val_chars_per_token, 4)}

    def sample(self, model) -> str | None:
        torch.manual_seed(self.cfg.seed)
        start = torch.tensor([[self.manifest.eot_id]], device=model.device)
        out = model.generate(start, max_new_tokens=60, do_sample=True, top_k=40, temperature=0.8,
                             pad_token_id=self.manifest.eot_id)
        return self.tokenizer.decode(out[0, 1:], skip_special_tokens=True)


def flops_per_token(model, c: GPTConfig) -> float:
    """PaLM's estimate: 6N for the weights plus attention's 12 * layers * width * context."""
    return 6 * count_parameters(model) + 12 * c.layers * c.width * c.context


def pretrain(cfg: PretrainConfig, note: Callable[[str], None] = lambda s: None,
             on_progress: Callable[[dict], None] | None = None,
             on_data_progress: Callable[[int, int, int], None] | None = None) -> dict[str, Any]:
    """Prepare, train, save and register; returns the summary (`--json`). Progress goes to the callbacks."""
    from accelerate import PartialState

    from llmctl.loading import quiet_transformers

    quiet_transformers()
    check_run_start(cfg.name, cfg.resume, cfg.out)
    state = PartialState(cpu=cpu_only())
    fill_in(cfg, note if state.is_main_process else (lambda s: None), lambda measure: _from_main(state, measure))
    cfg.train.check()
    cfg.out.mkdir(parents=True, exist_ok=True)
    spec = CorpusSpec(cfg.data, cfg.glob, cfg.text_field, cfg.min_chars)
    if not 0 < cfg.val_fraction < 1:
        raise UsageError(f"--val-fraction must be between 0 and 1, got {cfg.val_fraction}")
    with state.main_process_first():  # rank 0 tokenizes; the others then find the shards and reuse them
        tokenizer, manifest, reused = prepare_data(spec, cfg.tokenizer, cfg.vocab_size, cfg.out / "data",
                                                   cfg.train.seed, cfg.val_fraction, note if state.is_main_process else (lambda s: None),
                                                   on_data_progress if state.is_main_process else None,
                                                   sample_bytes=cfg.tokenizer_sample)
    data_summary = {"train_tokens": manifest.train_tokens, "val_tokens": manifest.val_tokens,
                    "vocab_size": manifest.vocab_size, "reused": reused, "corpus": manifest.corpus,
                    "data_dir": str(cfg.out / "data")}
    if cfg.prepare_only:
        return {"prepared": True, **data_summary}
    task = PretrainTask(cfg.out / "data", manifest, tokenizer, cfg.model.context, cfg.train)
    model = build_model(cfg.model, manifest.vocab_size, manifest.eot_id, cfg.train.seed)
    parameters = count_parameters(model)
    if cfg.model.experts:
        task.router_stats = RouterStats(model, cfg.model.experts, cfg.model.experts_per_token)
        on_progress = _watching_experts(on_progress, note if state.is_main_process else (lambda s: None))
    tokens_per_step = cfg.train.batch_size * cfg.train.grad_accum * state.num_processes * cfg.model.context
    trainer = Trainer(model, task, cfg.train, cfg.out, resume=cfg.resume, tokens_per_step=tokens_per_step,
                      on_progress=on_progress, note=note, run_config=cfg.to_dict())
    trainer.setup()
    note(f"training {parameters:,} parameters on {state.num_processes} process(es), "
         f"{tokens_per_step:,} tokens a step")
    start_tokens, start_seconds = trainer.state["tokens"], trainer.state["elapsed"]
    try:
        final = trainer.train()
        seconds = trainer.state["elapsed"] - start_seconds
        tps = (trainer.state["tokens"] - start_tokens) / max(1e-9, seconds)
        summary = {
            "steps": trainer.state["step"], "tokens": trainer.state["tokens"],
            "seconds": round(trainer.state["elapsed"], 2), "tokens_per_s": round(tps, 1),
            "final_train_loss": trainer.history.get("final_train_loss"), "final_val_loss": final["val_loss"],
            "val_bpc": final.get("val_bpc"), "val_ppl": final["val_ppl"], "best_val_loss": trainer.state["best_val_loss"],
            "parameters": parameters, "output_dir": str(cfg.out), "processes": state.num_processes,
            "sample": trainer.history.get("sample"),
        }
        mfu = trainer.mfu(tps, flops_per_token(model, cfg.model))
        if mfu is not None:
            summary["mfu"] = round(mfu, 4)
        if state.is_main_process:
            _save_model(trainer.unwrapped(), tokenizer, cfg, summary, data_summary)
            if cfg.register:
                summary["name"] = _register(cfg, summary, manifest, parameters)
        state.wait_for_everyone()
    finally:
        trainer.cleanup(f"{default_name(cfg.out)}: {parameters:,} parameters")
    return summary


def _watching_experts(on_progress, note: Callable[[str], None]) -> Callable[[dict], None]:
    def show(row: dict) -> None:
        warning = starved_warning(row)
        if warning:
            note(warning)
        if on_progress:
            on_progress(row)
    return show


def _from_main(state, measure: Callable[[], float]) -> float:
    """The main process measures; every other one gets its figure, so all choose the same settings."""
    value = [measure() if state.is_main_process else None]
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(value, from_process=0)
    return value[0]


def _save_model(model, tokenizer, cfg: PretrainConfig, summary: dict, data_summary: dict) -> None:
    """Write the HF model files beside data/ and checkpoints/, each by rename; the record last."""
    save_pretrained_into(cfg.out, model, tokenizer)
    record = {"config": cfg.to_dict(), "summary": summary, "data": data_summary,
              "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write_json(cfg.out / TRAIN_RECORD, json.loads(json.dumps(record, default=str)))


def _register(cfg: PretrainConfig, summary: dict, manifest: Manifest, parameters: int) -> str:
    from llmctl.registry import ModelEntry, Registry

    name = cfg.name or default_name(cfg.out)
    training = {k: summary[k] for k in ("steps", "tokens", "seconds", "final_train_loss", "final_val_loss", "val_bpc")}
    entry = ModelEntry(
        name=name, provider="hf", source=str(cfg.out.resolve()), chat_template="none",
        context_length=cfg.model.context,
        description=f"GPT pretrained by llmctl ({cfg.preset or 'budget-sized'} preset, {parameters:,} parameters)",
        lineage={"level": "pretrain", "run": str(cfg.out.resolve()), "base": None, "data": cfg.data,
                 "created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        info={"parameters": parameters, "tokenizer": {"kind": manifest.tokenizer, "vocab_size": manifest.vocab_size},
              "architecture": architecture(cfg.model),
              "model": cfg.model.to_dict(), "training": training},
    )
    Registry().add(entry, replace=True)
    return name
