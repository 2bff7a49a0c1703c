"""Everything `llmctl finetune` can be told, with its defaults; saved, resolved, with every adapter.

The settings of one method sit in their own nested object (`cfg.dpo.beta`, `cfg.distill.teacher`).
No torch here: the CLI reads these defaults for --help.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmctl.finetune.data import ColumnMap
from llmctl.training.config import TrainConfig


@dataclass
class FinetuneTrainConfig(TrainConfig):
    """The loop's settings as fine-tuning starts from them: LoRA trains few weights from a good start,
    so a lower peak rate, a short warm-up, no weight decay, a progress row every step."""

    batch_size: int = 8  # examples packed per micro-step
    lr: float = 2e-4
    min_lr: float | None = None  # None: a tenth of lr
    warmup_steps: int = 10
    weight_decay: float = 0.0
    eval_every: int = 50
    save_every: int = 50
    log_every: int = 1

    def __post_init__(self) -> None:
        if self.min_lr is None:
            self.min_lr = self.lr / 10


@dataclass
class DPOSettings:
    beta: float = 0.1  # how far from the reference the policy may move (higher: closer)
    label_smoothing: float = 0.0  # the conservative variant's share of flipped labels


@dataclass
class DistillSettings:
    teacher: str | None = None  # a local registry model sharing the student's tokenizer
    temperature: float = field(default=2.0, metadata={"flag": "--distill-temperature"})
    alpha: float = field(default=0.5, metadata={"flag": "--distill-alpha"})  # alpha·KL + (1 − alpha)·CE


@dataclass
class FinetuneConfig:
    data: list[Path]
    base: str = "smollm2"
    out: Path = Path("runs/lora")
    train: TrainConfig = field(default_factory=FinetuneTrainConfig)
    method: str = "lora"  # a name in finetune.run.METHODS: lora (supervised), dpo, distill
    format: str = "auto"
    columns: ColumnMap = field(default_factory=ColumnMap)
    skip_bad_rows: bool = False
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    targets: list[str] | None = None  # None: every linear layer
    epochs: float = 3.0  # used when the training config sets no max_steps, max_tokens or max_time
    max_length: int | None = None  # None: the model's context, at most 2048
    eval_split: float = 0.1
    gradient_checkpointing: bool = False
    keep_mlp_activations: bool = False  # keep gate/up outputs for backward: faster, more memory (fast_mlp.py)
    qlora: bool = False
    name: str | None = None  # None: the output directory's name
    resume: str | None = None
    register: bool = True
    dpo: DPOSettings = field(default_factory=DPOSettings)
    distill: DistillSettings = field(default_factory=DistillSettings)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["data"], d["out"] = [str(p) for p in self.data], str(self.out)
        return d


def flag(settings, name: str) -> str:
    """The command-line flag of a method setting: --name, unless the field says otherwise."""
    return next(f for f in dataclasses.fields(settings) if f.name == name).metadata.get(
        "flag", "--" + name.replace("_", "-"))
