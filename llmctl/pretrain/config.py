"""Everything `llmctl pretrain` can be told, with its defaults; saved, resolved, with every run.
No torch here: the CLI reads these defaults for --help."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmctl.pretrain.model import GPTConfig
from llmctl.training.config import TrainConfig


@dataclass
class PretrainConfig:
    data: list[str]
    out: Path = Path("runs/gpt")
    model: GPTConfig = field(default_factory=GPTConfig)  # GPTConfig's defaults are the tiny preset
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = "tiny"  # the preset `model` started from (recorded in the registry description)
    glob: str = "**/*"
    text_field: str = "text"
    min_chars: int = 1
    val_fraction: float = 0.1
    tokenizer: str = "bpe"  # bpe, char, or a registry model whose tokenizer to reuse
    vocab_size: int = 4096
    name: str | None = None
    resume: str | None = None
    prepare_only: bool = False
    register: bool = True

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["out"] = str(self.out)
        return d
