"""Everything `llmctl pretrain` can be told, with its defaults; saved, resolved, with every run.
No torch here: the CLI reads these defaults for --help."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmctl.pretrain.model import GPTConfig
from llmctl.training.config import TrainConfig


# Settings left as None are chosen from the budget, corpus and machine (pretrain/auto.py) when the run starts.
AUTO_TRAIN = ("batch_size", "lr", "min_lr", "warmup_steps", "eval_every", "save_every", "optimizer", "muon_lr")
AUTO_MODEL = ("layers", "heads", "width", "context", "dropout")


def auto_model() -> GPTConfig:
    return GPTConfig(**dict.fromkeys(AUTO_MODEL))


def auto_train() -> TrainConfig:
    return TrainConfig(**dict.fromkeys(AUTO_TRAIN))


@dataclass
class PretrainConfig:
    data: list[str]
    out: Path = Path("runs/gpt")
    model: GPTConfig = field(default_factory=auto_model)  # None fields: chosen; a preset fills them all
    train: TrainConfig = field(default_factory=auto_train)
    preset: str | None = None  # the preset `model` started from (recorded in the registry description)
    glob: str = "**/*"
    text_field: str = "text"
    min_chars: int = 1
    val_fraction: float = 0.1
    tokenizer: str | None = None  # bpe, char, or a registry model whose tokenizer to reuse; None: chosen
    vocab_size: int | None = None
    tokenizer_sample: int = 4_000_000  # bytes of the corpus BPE is trained on (prepare.DEFAULT_SAMPLE_BYTES)
    name: str | None = None
    resume: str | None = None
    prepare_only: bool = False
    register: bool = True
    chosen: dict[str, str] = field(default_factory=dict)  # setting -> why, for those chosen automatically

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["out"] = str(self.out)
        return d
