"""The settings of the training loop, with pretraining's defaults; fine-tuning starts from its own
(finetune.config.FinetuneTrainConfig). No torch here: the CLI reads these defaults for --help."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmctl.errors import UsageError


@dataclass
class TrainConfig:
    max_steps: int | None = None
    max_tokens: int | None = None
    max_time: float | None = None  # seconds
    batch_size: int = 16  # sequences per device per micro-step
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 10
    save_every: int = 100
    log_every: int = 10
    seed: int = 1337
    precision: str = "auto"  # auto, fp32, bf16, fp16
    compile: bool = False
    keep_checkpoints: int = 1
    optimizer: str = "adamw"  # adamw, or muon (Muon for hidden matrices, AdamW for the rest: training/optim.py)
    muon_lr: float = 0.02  # Muon's peak rate; it follows the same warmup and cosine as --lr
    # Fully sharded training (FSDP2) under torchrun / accelerate launch; an accelerate config with
    # FSDP turns it on by itself. fsdp_layers: the layer classes to shard one by one (comma-separated;
    # default: the model's decoder layer).
    fsdp: bool = False
    fsdp_layers: str | None = None

    def has_budget(self) -> bool:
        return self.max_steps is not None or self.max_tokens is not None or self.max_time is not None

    def check(self) -> None:
        for name in ("batch_size", "grad_accum", "eval_every", "eval_batches", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("max_steps", "max_tokens", "max_time"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise UsageError(f"need 0 < --lr and 0 <= --min-lr <= --lr, got lr={self.lr}, min-lr={self.min_lr}")
        if self.optimizer not in ("adamw", "muon"):
            raise UsageError(f"unknown --optimizer '{self.optimizer}'", hint="use adamw or muon")
        if not self.muon_lr > 0:
            raise UsageError(f"--muon-lr must be positive, got {self.muon_lr}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise UsageError(f"--precision must be auto, fp32, bf16 or fp16, got {self.precision}")
        if not self.has_budget():
            self.max_steps = 1000


def given(**values: Any) -> dict[str, Any]:
    """Only the settings a caller set (None: not given), so a config's own defaults fill the rest."""
    return {name: value for name, value in values.items() if value is not None}
