"""`llmctl finetune` as a function: LoRA on any local registry model, on the shared training loop,
by one of the methods in METHODS (supervised, DPO on preference pairs, logit distillation from a
teacher); the output is a standard peft adapter directory, registered as base + adapter.

A method is one module declaring a finetune.method.Method; adding one is that module and one line
in METHODS. Everything else here is the same for every method.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

from llmctl.errors import UsageError
from llmctl.finetune.config import FinetuneConfig, flag
from llmctl.finetune.data import DataReport
from llmctl.finetune.distill import Distillation
from llmctl.finetune.dpo import DPO
from llmctl.finetune.method import Method
from llmctl.finetune.models import add_lora, choose_template, load_base
from llmctl.finetune.sft import SupervisedLoRA
from llmctl.fsutil import atomic_write_json, save_pretrained_into
from llmctl.pretrain.data import is_validation
from llmctl.training.checkpoint import check_run_start
from llmctl.training.loop import Trainer, cpu_only

TRAIN_RECORD = "llmctl-finetune.json"

METHODS: dict[str, type[Method]] = {
    "lora": SupervisedLoRA,  # supervised: examples, cross-entropy on the responses
    "dpo": DPO,  # preference pairs
    "distill": Distillation,  # a teacher's logits on the examples
}


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise UsageError(f"unknown --method '{name}'", hint="use " + ", ".join(METHODS))
    return METHODS[name]


def method_for(cfg: FinetuneConfig) -> Method:
    """The run's method, its settings checked; a setting of another method is an error, not ignored."""
    method = method_class(cfg.method)(cfg)
    for name, other in METHODS.items():
        settings = other(cfg).settings()
        if name == cfg.method or settings is None:
            continue
        defaults = type(settings)()
        for field in dataclasses.fields(settings):
            if getattr(settings, field.name) != getattr(defaults, field.name):
                raise UsageError(f"{flag(settings, field.name)} is for --method {name}, not {cfg.method}")
    method.check()
    return method


def split(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """Hold out a share of the items (examples or preference pairs), chosen by their file:line."""
    if not 0 < fraction < 1:
        raise UsageError(f"--eval-split must be between 0 and 1, got {fraction}")
    held = [is_validation(t.source, seed, fraction) for t in items]
    if not any(held) and len(items) > 1:
        held[-1] = True
    val = [t for t, h in zip(items, held) if h]
    train = [t for t, h in zip(items, held) if not h]
    if not train:
        raise UsageError("too few examples to hold out a validation split", hint="add data")
    return train, val


def _max_length(model, cfg: FinetuneConfig) -> int:
    context = getattr(model.config, "max_position_embeddings", None) or 2048
    max_length = cfg.max_length or min(context, 2048)
    if max_length > context:
        raise UsageError(f"--max-length {max_length} is longer than the model's context ({context})")
    return max_length


def read_split(method: Method, model, tokenizer, note: Callable[[str], None]) -> tuple[list, list, DataReport]:
    """Training and validation items of the method's kind, every row checked."""
    cfg = method.cfg
    items, report = method.read(tokenizer, _max_length(model, cfg))
    if report.skipped:
        note(f"skipped {len(report.skipped)} rows: {report.skipped[0]}" + (" …" if len(report.skipped) > 1 else ""))
    train, val = split(items, cfg.eval_split, cfg.train.seed)
    return train, val, report


def finetune(cfg: FinetuneConfig, note: Callable[[str], None] = lambda s: None,
             on_progress: Callable[[dict], None] | None = None) -> dict[str, Any]:
    from accelerate import PartialState

    method = method_for(cfg)
    check_run_start(cfg.name, cfg.resume, cfg.out)
    state = PartialState(cpu=cpu_only())
    entry, model, tokenizer, origin = load_base(cfg.base, cfg.qlora, continue_adapter=method.goes_on_from_adapter)
    template = choose_template(entry, tokenizer)
    method.load(tokenizer)
    train_items, val_items, report = read_split(method, model, tokenizer, note)
    per_step = cfg.train.batch_size * cfg.train.grad_accum * state.num_processes
    if not cfg.train.has_budget():
        cfg.train.max_steps = max(1, math.ceil(cfg.epochs * len(train_items) / per_step))
    note(f"{report.format} data: {len(train_items)} training and {len(val_items)} validation {method.unit}; "
         f"base {entry.name} ({origin}); template {template}")
    torch.manual_seed(cfg.train.seed)  # LoRA's A matrices start random: the same seed, the same start
    model = add_lora(model, cfg, entry.adapter)
    method.prepare(model, train_items + val_items, state.device, note)
    lora = model.peft_config["default"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    mean_tokens = sum(t.tokens for t in train_items) / len(train_items)
    trainer = Trainer(model, method.task(train_items, val_items), cfg.train, cfg.out, resume=cfg.resume,
                      tokens_per_step=int(per_step * mean_tokens), on_progress=on_progress, note=note,
                      run_config=cfg.to_dict())
    trainer.setup()
    try:
        before = trainer.evaluate() if trainer.state["step"] == 0 else None
        final = trainer.train()
        summary = {"method": cfg.method, "steps": trainer.state["step"], "tokens": trainer.state["tokens"],
                   "seconds": round(trainer.state["elapsed"], 2),
                   "tokens_per_s": round(trainer.state["tokens"] / max(1e-9, trainer.state["elapsed"]), 1),
                   "val_loss_before": before["val_loss"] if before else None, "val_loss_after": final["val_loss"],
                   **before_after(before, final), "final_train_loss": trainer.history.get("final_train_loss"),
                   "train_examples": len(train_items), "val_examples": len(val_items), "skipped_rows": len(report.skipped),
                   "trainable_parameters": trainable, "rank": lora.r, "alpha": lora.lora_alpha,
                   "format": report.format, "template": template, "base": entry.base if entry.adapter else cfg.base,
                   "parent_adapter": cfg.base if entry.adapter else None, "output_dir": str(cfg.out)}
        if state.is_main_process:
            _save_adapter(trainer.unwrapped(), tokenizer, cfg, summary)
            if cfg.register:
                summary["name"] = _register(method, summary, template)
        state.wait_for_everyone()
    finally:
        trainer.cleanup(f"{method.title} on {cfg.base}")
    return summary


def before_after(before: dict | None, final: dict) -> dict[str, float | None]:
    """Each validation metric besides the loss (DPO rewards, distillation KL and CE), before and after."""
    pairs = {}
    for key in final:
        if key.startswith("val_") and key not in ("val_loss", "val_ppl"):
            pairs[f"{key[4:]}_before"] = before.get(key) if before else None
            pairs[f"{key[4:]}_after"] = final[key]
    return pairs


def data_hash(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(Path(path).read_bytes())
    return h.hexdigest()


def _save_adapter(model, tokenizer, cfg: FinetuneConfig, summary: dict) -> None:
    """adapter_config.json + adapter_model.safetensors + tokenizer (with the template), by rename."""
    save_pretrained_into(cfg.out, model, tokenizer)
    atomic_write_json(cfg.out / TRAIN_RECORD, {"config": cfg.to_dict(), "summary": summary,
                                               "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")})


def _register(method: Method, summary: dict, template: str) -> str:
    from llmctl.registry import default_name
    from llmctl.registry import ModelEntry, Registry

    cfg = method.cfg
    name, base, run = cfg.name or default_name(cfg.out), summary["base"], str(cfg.out.resolve())
    lineage = {"level": "finetune", "method": cfg.method, "base": base, "run": run,
               "data": [str(p) for p in cfg.data], "data_sha256": data_hash(cfg.data),
               "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if summary["parent_adapter"]:
        lineage["parent"] = summary["parent_adapter"]  # the adapter this run went on from
    lineage.update(method.lineage())
    training = {k: v for k, v in summary.items() if k in ("steps", "val_loss_before", "val_loss_after", "train_examples")
                or k.endswith(("_before", "_after"))}
    entry = ModelEntry(
        name=name, provider="hf", source=run, base=base, adapter=run, chat_template=template,
        description=method.description(summary), lineage=lineage,
        info={"trainable_parameters": summary["trainable_parameters"], "rank": summary["rank"],
              "alpha": summary["alpha"], "training": training},
    )
    Registry().add(entry, replace=True)
    return name
