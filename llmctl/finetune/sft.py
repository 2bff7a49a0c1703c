"""Supervised LoRA fine-tuning: next-token cross-entropy on the response tokens of examples."""

from __future__ import annotations

from llmctl.finetune.data import DataReport, load_examples
from llmctl.finetune.method import Method
from llmctl.finetune.task import FinetuneTask
from llmctl.finetune.tokenize import encode_all


class SupervisedLoRA(Method):
    title = "LoRA"

    def read(self, tokenizer, max_length: int) -> tuple[list, DataReport]:
        cfg = self.cfg
        examples, report = load_examples(cfg.data, cfg.format, cfg.columns, cfg.skip_bad_rows)
        return encode_all(tokenizer, examples, max_length, cfg.skip_bad_rows, report.skipped), report

    def task(self, train: list, val: list) -> FinetuneTask:
        return FinetuneTask(train, val, self.cfg.train)

    def description(self, summary: dict) -> str:
        return f"LoRA adapter (rank {summary['rank']}) on {summary['base']}"
