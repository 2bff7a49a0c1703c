"""`llmctl finetune` as a function: LoRA on any local registry model, on the shared training loop,
by supervised fine-tuning, DPO on preference pairs or logit distillation from a teacher; the output is
a standard peft adapter directory, registered as base + adapter."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

from llmctl.errors import ModelError, UsageError
from llmctl.finetune.data import ColumnMap, DataReport, load_examples
from llmctl.finetune.tokenize import Tokenized, encode_all, pack
from llmctl.fsutil import atomic_write_json, save_pretrained_into
from llmctl.pretrain.data import is_validation
from llmctl.training.loop import TrainConfig, Trainer, cpu_only

TRAIN_RECORD = "llmctl-finetune.json"


@dataclass
class FinetuneConfig:
    data: list[Path]
    base: str
    out: Path
    train: TrainConfig = field(default_factory=TrainConfig)
    format: str = "auto"
    columns: ColumnMap = field(default_factory=ColumnMap)
    skip_bad_rows: bool = False
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    targets: list[str] | None = None  # None: every linear layer
    epochs: float = 3.0  # used when no --max-steps/--max-tokens/--max-time is given
    max_length: int | None = None
    eval_split: float = 0.1
    gradient_checkpointing: bool = False
    qlora: bool = False
    name: str | None = None
    resume: str | None = None
    register: bool = True
    method: str = "lora"  # lora (supervised), dpo (preference pairs) or distill (a teacher's logits)
    beta: float = 0.1  # dpo: how far from the reference the policy may move (higher: closer)
    label_smoothing: float = 0.0  # dpo: the conservative variant's share of flipped labels
    teacher: str | None = None  # distill: a local registry model sharing the student's tokenizer
    distill_temperature: float = 2.0
    distill_alpha: float = 0.5  # loss = alpha * KL + (1 - alpha) * cross-entropy

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["data"], d["out"] = [str(p) for p in self.data], str(self.out)
        return d


METHODS = ("lora", "dpo", "distill")
METHOD_TITLES = {"lora": "LoRA", "dpo": "DPO", "distill": "logit distillation"}


class FinetuneTask:
    """Shuffled epochs of examples, `batch_size` examples packed per micro-batch. The examples of
    step N depend only on (seed, N), and the global batch is the same for any number of processes."""

    collate = staticmethod(pack)  # DPO packs preference pairs instead

    def __init__(self, train: list[Tokenized], val: list[Tokenized], cfg: TrainConfig):
        self.train, self.val, self.cfg = train, val, cfg

    def _example(self, position: int) -> Tokenized:
        epoch, index = divmod(position, len(self.train))
        order = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(self.cfg.seed + epoch))
        return self.train[int(order[index])]

    def train_batch(self, step: int, micro: int, rank: int, world: int) -> dict[str, torch.Tensor]:
        bs = self.cfg.batch_size
        start = step * bs * self.cfg.grad_accum * world + (micro * world + rank) * bs
        return self.collate([self._example(p) for p in range(start, start + bs)])

    def eval_batches(self, rank: int, world: int):
        bs = self.cfg.batch_size
        for start in range(rank * bs, len(self.val), bs * world):
            yield self.collate(self.val[start:start + bs])

    def eval_extras(self, val_loss: float) -> dict[str, float]:
        return {}

    def sample(self, model) -> str | None:
        return None


def load_base(ref: str, qlora: bool, continue_adapter: bool = False, config=None):
    """The base model and tokenizer from the registry (only local models can be trained). With
    `continue_adapter`, `ref` may be a registered adapter: its base model comes back (attach the
    adapter with add_lora) and its tokenizer, saved with the adapter's template."""
    from llmctl.loading import load_local, local_entry

    entry = local_entry(ref, "fine-tuning")
    if entry.adapter and not continue_adapter:
        raise UsageError(f"'{ref}' is already an adapter", hint=f"merge it first: llmctl finetune merge {ref} --out DIR")
    local = load_local(entry, config, adapter="skip", place=False, quantize_4bit=qlora, doing="fine-tuning")
    return entry, local.model, local.tokenizer, local.origin


def choose_template(entry, tokenizer) -> str:
    """The model's own chat template, or Alpaca for models without one; the adapter records which."""
    from llmctl.templates import ALPACA_TEMPLATE, apply_entry_template

    if apply_entry_template(entry, tokenizer):
        return entry.chat_template
    tokenizer.chat_template = ALPACA_TEMPLATE
    return "alpaca"


def add_lora(model, cfg: FinetuneConfig, adapter_dir: str | None = None):
    """A new LoRA adapter on `model`, or the adapter in `adapter_dir` to train further."""
    from peft import LoraConfig, get_peft_model

    if cfg.qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    if adapter_dir:
        from llmctl.loading import attach_adapter

        return attach_adapter(model, adapter_dir, trainable=True)
    targets = cfg.targets or "all-linear"
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                      task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, lora)
    except ValueError as e:
        linear = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise UsageError(f"--targets {','.join(cfg.targets or [])}: {str(e).splitlines()[0]}",
                         hint=f"this model's linear layers: {', '.join(linear)}") from None


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


def check_method(cfg: FinetuneConfig) -> None:
    if cfg.method not in METHODS:
        raise UsageError(f"unknown --method '{cfg.method}'", hint="use " + ", ".join(METHODS))
    if cfg.method == "dpo":
        from llmctl.finetune.dpo import check_dpo_settings

        check_dpo_settings(cfg.beta, cfg.label_smoothing)
    if cfg.method == "distill":
        from llmctl.finetune.distill import check_distill_settings

        if not cfg.teacher:
            raise UsageError("--method distill needs a teacher", hint="pass --teacher MODEL (a local registry model)")
        check_distill_settings(cfg.distill_temperature, cfg.distill_alpha)
    elif cfg.teacher:
        raise UsageError(f"--teacher is for --method distill, not {cfg.method}")


def load_merged(ref: str, config=None):
    """(entry, model, tokenizer) of a local model; for an adapter, base + adapter folded into one model."""
    from llmctl.loading import load_local

    local = load_local(ref, config, adapter="merge", place=False, doing="loading weights")
    return local.entry, local.model, local.tokenizer


def load_teacher(ref: str, student: str, student_tokenizer):
    """The distillation teacher (a model or an adapter, merged), once it is known to share the tokenizer."""
    from llmctl.finetune.distill import check_shared_tokenizer
    from llmctl.providers import capabilities_of
    from llmctl.registry import Registry

    entry = Registry().resolve(ref)
    if not capabilities_of(entry).logits:
        raise UsageError(f"--teacher {ref}: a remote ({entry.provider}) model gives no logits to distil",
                         hint="distil through text: llmctl data distill, then llmctl finetune on its file")
    _, teacher, tokenizer = load_merged(ref)
    check_shared_tokenizer(student_tokenizer, tokenizer, student, ref)
    return teacher


def _max_length(model, cfg: FinetuneConfig) -> int:
    context = getattr(model.config, "max_position_embeddings", None) or 2048
    max_length = cfg.max_length or min(context, 2048)
    if max_length > context:
        raise UsageError(f"--max-length {max_length} is longer than the model's context ({context})")
    return max_length


def prepare_data(cfg: FinetuneConfig, model, tokenizer, note: Callable[[str], None]) -> tuple[list, list, DataReport]:
    """Training and validation items (examples, or preference pairs for DPO), every row checked."""
    if cfg.method == "dpo":
        from llmctl.finetune.dpo import encode_pairs, load_pairs

        rows, report = load_pairs(cfg.data, cfg.skip_bad_rows)
        items = encode_pairs(tokenizer, rows, _max_length(model, cfg), cfg.skip_bad_rows, report.skipped)
    else:
        examples, report = load_examples(cfg.data, cfg.format, cfg.columns, cfg.skip_bad_rows)
        items = encode_all(tokenizer, examples, _max_length(model, cfg), cfg.skip_bad_rows, report.skipped)
    if report.skipped:
        note(f"skipped {len(report.skipped)} rows: {report.skipped[0]}" + (" …" if len(report.skipped) > 1 else ""))
    train, val = split(items, cfg.eval_split, cfg.train.seed)
    return train, val, report


def make_task(cfg: FinetuneConfig, train: list, val: list, teacher=None) -> FinetuneTask:
    if cfg.method == "dpo":
        from llmctl.finetune.dpo import DPOTask

        return DPOTask(train, val, cfg.train, cfg.beta, cfg.label_smoothing)
    if cfg.method == "distill":
        from llmctl.finetune.distill import DistillTask

        return DistillTask(train, val, cfg.train, teacher, cfg.distill_temperature, cfg.distill_alpha)
    return FinetuneTask(train, val, cfg.train)


def _tokens(item) -> int:
    return len(item.ids) if isinstance(item, Tokenized) else len(item.chosen.ids) + len(item.rejected.ids)


def finetune(cfg: FinetuneConfig, note: Callable[[str], None] = lambda s: None,
             on_progress: Callable[[dict], None] | None = None) -> dict[str, Any]:
    from accelerate import PartialState

    check_method(cfg)
    state = PartialState(cpu=cpu_only())
    # DPO and distillation may go on from an adapter (e.g. after supervised fine-tuning)
    entry, model, tokenizer, origin = load_base(cfg.base, cfg.qlora, continue_adapter=cfg.method != "lora")
    template = choose_template(entry, tokenizer)
    teacher = load_teacher(cfg.teacher, cfg.base, tokenizer) if cfg.method == "distill" else None
    train_items, val_items, report = prepare_data(cfg, model, tokenizer, note)
    per_step = cfg.train.batch_size * cfg.train.grad_accum * state.num_processes
    if cfg.train.max_steps is None and cfg.train.max_tokens is None and cfg.train.max_time is None:
        cfg.train.max_steps = max(1, math.ceil(cfg.epochs * len(train_items) / per_step))
    unit = "pairs" if cfg.method == "dpo" else "examples"
    note(f"{report.format} data: {len(train_items)} training and {len(val_items)} validation {unit}; "
         f"base {entry.name} ({origin}); template {template}")
    torch.manual_seed(cfg.train.seed)  # LoRA's A matrices start random: the same seed, the same start
    model = add_lora(model, cfg, entry.adapter)
    if cfg.method == "dpo":  # before setup() loads a checkpoint: a resumed run gets the same reference
        from llmctl.finetune.dpo import add_reference_logps

        note(f"reference log-probs of {len(train_items) + len(val_items)} pairs with the starting weights")
        add_reference_logps(model, train_items + val_items, cfg.train.batch_size, state.device)
    lora = model.peft_config["default"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    mean_tokens = sum(_tokens(t) for t in train_items) / len(train_items)
    trainer = Trainer(model, make_task(cfg, train_items, val_items, teacher), cfg.train, cfg.out, resume=cfg.resume,
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
                summary["name"] = _register(cfg, summary, template)
        state.wait_for_everyone()
    finally:
        trainer.cleanup(f"{METHOD_TITLES[cfg.method]} on {cfg.base}")
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


def _register(cfg: FinetuneConfig, summary: dict, template: str) -> str:
    from llmctl.pretrain.run import default_name
    from llmctl.registry import ModelEntry, Registry

    name, base, run = cfg.name or default_name(cfg.out), summary["base"], str(cfg.out.resolve())
    description = {"lora": f"LoRA adapter (rank {summary['rank']}) on {base}",
                   "dpo": f"DPO-trained LoRA adapter (rank {summary['rank']}, beta {cfg.beta}) on {base}",
                   "distill": f"LoRA adapter (rank {summary['rank']}) distilled from {cfg.teacher} on {base}"}
    lineage = {"level": "finetune", "method": cfg.method, "base": base, "run": run,
               "data": [str(p) for p in cfg.data], "data_sha256": data_hash(cfg.data),
               "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if summary["parent_adapter"]:
        lineage["parent"] = summary["parent_adapter"]  # the adapter this run went on from
    lineage.update({"dpo": {"beta": cfg.beta, "label_smoothing": cfg.label_smoothing},
                    "distill": {"teacher": cfg.teacher, "temperature": cfg.distill_temperature,
                                "alpha": cfg.distill_alpha}}.get(cfg.method, {}))
    training = {k: v for k, v in summary.items() if k in ("steps", "val_loss_before", "val_loss_after", "train_examples")
                or k.endswith(("_before", "_after"))}
    entry = ModelEntry(
        name=name, provider="hf", source=run, base=base, adapter=run, chat_template=template,
        description=description[cfg.method], lineage=lineage,
        info={"trainable_parameters": summary["trainable_parameters"], "rank": summary["rank"],
              "alpha": summary["alpha"], "training": training},
    )
    Registry().add(entry, replace=True)
    return name
