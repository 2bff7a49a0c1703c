"""What a fine-tuning method is: the few things that differ between supervised LoRA, DPO and
distillation. finetune.run does everything else (loading, LoRA, the loop, saving, registering) the
same way for each, and finds a method by name in its one table, METHODS.

A method is made for one run, from that run's FinetuneConfig; the run calls, in this order:
check, load, read, prepare, task, then description and lineage when it registers the adapter.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar

import torch

from llmctl.finetune.config import FinetuneConfig
from llmctl.finetune.data import DataReport
from llmctl.finetune.task import FinetuneTask


class Method(ABC):
    """One way to fine-tune: a subclass sets what is abstract here and overrides what else differs."""

    title: ClassVar[str]  # for the loss plot: "<title> on <base>"
    # What one item of its data is, for notes and errors; "examples": fine-tuning examples (the
    # format `finetune inspect` and --dry-run show)
    unit: ClassVar[str] = "examples"
    # May train a registered adapter further (e.g. DPO after supervised fine-tuning)
    goes_on_from_adapter: ClassVar[bool] = False

    def __init__(self, cfg: FinetuneConfig):
        self.cfg = cfg

    def settings(self) -> Any:
        """Its own settings on the FinetuneConfig (a dataclass, e.g. cfg.dpo), or None."""
        return None

    def check(self) -> None:
        """Refuse bad settings before anything is loaded."""

    def load(self, tokenizer) -> None:
        """Load what it needs besides the base; called once the base is loaded, with its tokenizer."""

    @abstractmethod
    def read(self, tokenizer, max_length: int) -> tuple[list, DataReport]:
        """Every item of cfg.data, tokenized and checked (bad rows raise, or are skipped and reported).
        Items have `source` (file:line, which decides the validation split) and `tokens`."""

    def prepare(self, model, items: list, device: torch.device, note: Callable[[str], None]) -> None:
        """Work on the starting weights (LoRA added), before the loop may load a checkpoint."""

    @abstractmethod
    def task(self, train: list, val: list) -> FinetuneTask:
        """The training task on the shared loop: batches of its items and its objective."""

    @abstractmethod
    def description(self, summary: dict) -> str:
        """The registry's one-line description of the adapter (summary: what finetune() returns)."""

    def lineage(self) -> dict[str, Any]:
        """What the registry records of this method besides base, data and run: its settings."""
        settings = self.settings()
        return dataclasses.asdict(settings) if settings is not None else {}
