"""Logit distillation: the student learns the teacher's whole next-token distribution on the response
tokens (KL(teacher ‖ student) at a temperature, as Hinton et al. 2015), mixed with ordinary cross-entropy.

Both models read the same packed token ids, so they must share a tokenizer; for models that do not,
distil through text instead (`llmctl data distill`, then fine-tune on its file). The fine-tuning
method `--method distill` is at the end.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from llmctl.errors import UsageError
from llmctl.finetune.config import DistillSettings
from llmctl.finetune.sft import SupervisedLoRA
from llmctl.finetune.task import FinetuneTask
from llmctl.finetune.tokenize import IGNORE, Tokenized
from llmctl.training.chunked_loss import chunked_terms, hidden_and_head
from llmctl.training.config import TrainConfig
from llmctl.training.task import forward

SAMPLE_TEXT = "The quick brown fox jumps over the lazy dog. 1234567890 ¿Qué? def f(x): return x ** 2\n"
SAMPLED_IDS = 64  # ids compared one by one, spread over the whole vocabulary


def check_shared_tokenizer(student_tokenizer, teacher_tokenizer, student: str, teacher: str) -> None:
    """Same vocabulary size, the same token behind a spread of ids, the same ids for a sample text."""
    hint = ("logit distillation compares the two models token by token; for models with different "
            "tokenizers distil through text: llmctl data distill (the teacher answers prompts), then "
            "llmctl finetune on its file")
    sizes = len(student_tokenizer), len(teacher_tokenizer)
    if sizes[0] != sizes[1]:
        raise UsageError(f"the teacher '{teacher}' and the student '{student}' must share a tokenizer: their "
                         f"vocabularies have {sizes[1]} and {sizes[0]} tokens", hint=hint)
    step = max(1, sizes[0] // SAMPLED_IDS)
    for token_id in range(0, sizes[0], step):
        ours, theirs = (t.convert_ids_to_tokens(token_id) for t in (student_tokenizer, teacher_tokenizer))
        if ours != theirs:
            raise UsageError(f"the teacher '{teacher}' and the student '{student}' must share a tokenizer: token "
                             f"id {token_id} is {theirs!r} for the teacher but {ours!r} for the student", hint=hint)
    encoded = [t(SAMPLE_TEXT, add_special_tokens=False)["input_ids"] for t in (student_tokenizer, teacher_tokenizer)]
    if encoded[0] != encoded[1]:
        raise UsageError(f"the teacher '{teacher}' and the student '{student}' must share a tokenizer: they split "
                         "the same text into different tokens", hint=hint)


def check_distill_settings(temperature: float, alpha: float) -> None:
    if not temperature > 0:
        raise UsageError(f"--distill-temperature must be positive, got {temperature}")
    if not 0 <= alpha <= 1:
        raise UsageError(f"--distill-alpha must be between 0 and 1, got {alpha}",
                         hint="loss = alpha·KL + (1 − alpha)·cross-entropy")


class DistillTerms(NamedTuple):
    kl: torch.Tensor  # per response token, KL(teacher ‖ student) at temperature T, times T²
    ce: torch.Tensor  # per response token, the student's cross-entropy on the data


def distill_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                  temperature: float, learned_only: bool = True) -> DistillTerms:
    """Per-token KL and CE on the learned tokens; with learned_only=False on every position (CE 0
    where the label is IGNORE), for a chunk whose positions are picked afterwards."""
    learned = labels != IGNORE if learned_only else torch.ones_like(labels, dtype=torch.bool)
    # A model may pad its embedding past the tokenizer; ids beyond the shared part never occur in data.
    width = min(student_logits.size(-1), teacher_logits.size(-1))
    student = student_logits[learned][:, :width].float()
    teacher = teacher_logits[learned][:, :width].float()
    log_s = F.log_softmax(student / temperature, dim=-1)
    log_t = F.log_softmax(teacher / temperature, dim=-1)
    # T² keeps the gradient's size independent of T (Hinton et al.)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1) * temperature ** 2
    ce = F.cross_entropy(student, labels[learned], ignore_index=IGNORE, reduction="none")
    return DistillTerms(kl, ce)


class DistillTask(FinetuneTask):
    """FinetuneTask's data and batches; the loss is α·KL(teacher ‖ student) + (1 − α)·CE per token."""

    eval_keys = ("val_loss", "val_kl", "val_ce")
    reports_perplexity = False  # the loss mixes KL and cross-entropy: no perplexity

    def __init__(self, train: list[Tokenized], val: list[Tokenized], cfg: TrainConfig, teacher,
                 temperature: float = 2.0, alpha: float = 0.5):
        super().__init__(train, val, cfg)
        self.teacher, self.temperature, self.alpha = teacher.eval().requires_grad_(False), temperature, alpha
        self._window = {"kl": 0.0, "ce": 0.0, "tokens": 0}

    def _terms(self, model, batch: dict[str, torch.Tensor]) -> DistillTerms:
        device = batch["input_ids"].device
        if next(self.teacher.parameters()).device != device:  # follows the student wherever the loop put it
            self.teacher.to(device)
        with torch.no_grad():  # the teacher's last hidden states; its logits are made chunk by chunk
            hidden, teacher_head, _ = hidden_and_head(self.teacher, lambda: forward(self.teacher, batch))
        hidden = hidden.reshape(-1, hidden.size(-1))
        labels = batch["labels"].reshape(-1)

        def terms(student_logits: torch.Tensor, at: slice) -> torch.Tensor:
            with torch.no_grad():
                teacher_logits = teacher_head(hidden[at]).float()
            kl, ce = distill_terms(student_logits, teacher_logits, labels[at], self.temperature, learned_only=False)
            return torch.stack([kl, ce], dim=-1)

        both, _ = chunked_terms(model, lambda: forward(model, batch), terms)
        learned = labels != IGNORE
        return DistillTerms(both[learned, 0], both[learned, 1])

    def loss(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        terms = self._terms(model, batch)
        self._window["kl"] += float(terms.kl.detach().sum())
        self._window["ce"] += float(terms.ce.detach().sum())
        self._window["tokens"] += terms.kl.numel()
        # per token of the whole step (loss_tokens: this micro-batch's share), as lm_loss
        count = batch["loss_tokens"] if "loss_tokens" in batch else terms.kl.numel()
        return (self.alpha * terms.kl.sum() + (1 - self.alpha) * terms.ce.sum()) / count

    def eval_sums(self, model, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        terms = self._terms(model, batch)
        kl, ce = float(terms.kl.sum()), float(terms.ce.sum())
        return {"val_loss": self.alpha * kl + (1 - self.alpha) * ce, "val_kl": kl, "val_ce": ce,
                "count": terms.kl.numel()}

    def train_metrics(self) -> dict[str, float]:
        """KL and cross-entropy per token on the training data since the last progress row."""
        window, self._window = self._window, {"kl": 0.0, "ce": 0.0, "tokens": 0}
        tokens = window.pop("tokens")
        return {k: round(v / tokens, 5) for k, v in window.items()} if tokens else {}


def load_teacher(ref: str, student: str, student_tokenizer):
    """The teacher (a model or an adapter, merged), once it is known to share the tokenizer."""
    from llmctl.finetune.models import load_merged
    from llmctl.providers import capabilities_of
    from llmctl.registry import Registry

    entry = Registry().resolve(ref)
    if not capabilities_of(entry).logits:
        raise UsageError(f"--teacher {ref}: a remote ({entry.provider}) model gives no logits to distil",
                         hint="distil through text: llmctl data distill, then llmctl finetune on its file")
    _, teacher, tokenizer = load_merged(ref, packed=True)
    check_shared_tokenizer(student_tokenizer, tokenizer, student, ref)
    return teacher


class Distillation(SupervisedLoRA):
    """Supervised fine-tuning's examples; the loss also pulls toward a teacher's logits."""

    title = "logit distillation"
    goes_on_from_adapter = True

    def settings(self) -> DistillSettings:
        return self.cfg.distill

    def check(self) -> None:
        if not self.cfg.distill.teacher:
            raise UsageError("--method distill needs a teacher", hint="pass --teacher MODEL (a local registry model)")
        check_distill_settings(self.cfg.distill.temperature, self.cfg.distill.alpha)

    def load(self, tokenizer) -> None:
        self.teacher = load_teacher(self.cfg.distill.teacher, self.cfg.base, tokenizer)

    def task(self, train: list[Tokenized], val: list[Tokenized]) -> DistillTask:
        settings = self.cfg.distill
        return DistillTask(train, val, self.cfg.train, self.teacher, settings.temperature, settings.alpha)

    def description(self, summary: dict) -> str:
        return (f"LoRA adapter (rank {summary['rank']}) distilled from {self.cfg.distill.teacher} on "
                f"{summary['base']}")
