"""What the training loop asks of a level (pretraining, each fine-tuning method): batches, the loss,
evaluation, progress extras and samples. `TrainTask` gives next-token cross-entropy everywhere a
task has nothing else to say; a task overrides only what differs."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from llmctl.training.chunked_loss import chunked_terms


def forward(model, batch: dict[str, torch.Tensor]):
    """The model's output on a batch: plain rows, or packed rows whose positions restart at each
    example. Without a cache and a mask, transformers reads the example boundaries from the
    positions (a cache, even in eval mode, would make it ignore them: hence use_cache=False)."""
    return model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                 position_ids=batch.get("position_ids"), use_cache=False)


def lm_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over positions whose label is not -100 (labels are already shifted),
    computed chunk by chunk (training/chunked_loss.py). With `loss_tokens` in the batch the sum is
    divided by that instead: this micro-batch's share of the whole step's learned tokens, so that
    every token of a step weighs the same however the step is split over micro-batches and processes."""
    labels = batch["labels"].reshape(-1)
    ce, out = chunked_terms(model, lambda: forward(model, batch),
                            lambda logits, at: F.cross_entropy(logits, labels[at], ignore_index=-100, reduction="none"))
    count = batch["loss_tokens"] if "loss_tokens" in batch else (labels != -100).sum()
    loss = ce.sum() / count
    aux = getattr(out, "aux_loss", None)
    if aux is not None:  # mixture of experts: keep the router balanced
        loss = loss + model.config.router_aux_loss_coef * aux
    return loss


class TrainTask:
    """The data and objective of one training run. The batches of step N must depend only on
    (seed, N), so that a resumed run sees exactly what an uninterrupted one would."""

    # Validation metric names, "val_loss" first; eval_sums returns each of them summed over a batch.
    eval_keys: tuple[str, ...] = ("val_loss",)
    # The validation loss is next-token cross-entropy, so its perplexity means something.
    reports_perplexity: bool = True

    def check(self, world: int) -> None:
        """Refuse, before anything is written, a step this data cannot fill on `world` processes."""

    def train_batch(self, step: int, micro: int, rank: int, world: int) -> dict[str, torch.Tensor]:
        """Micro-batch `micro` of step `step` for this process: input_ids, labels (-100 = no loss)."""
        raise NotImplementedError

    def eval_batches(self, rank: int, world: int) -> Iterable[dict[str, torch.Tensor]]:
        """This process's share of the fixed validation set (the same set whatever `world` is)."""
        raise NotImplementedError

    def loss(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The training loss of one micro-batch."""
        return lm_loss(model, batch)

    def eval_sums(self, model, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Each eval_keys metric summed over the batch's items, and "count", the number of items:
        the loop adds them up over every process and batch, then divides."""
        # per learned token: the same validation loss whatever the batch size (packed rows differ in length)
        tokens = int((batch["labels"] != -100).sum())
        return {"val_loss": float(lm_loss(model, batch)) * tokens, "count": tokens}

    def eval_extras(self, val_loss: float) -> dict[str, float]:
        """Metrics derived from the validation loss (e.g. bits per character)."""
        return {}

    def train_metrics(self) -> dict[str, float]:
        """Numbers for the next progress row besides the loss (e.g. DPO's rewards since the last row)."""
        return {}

    def sample(self, model) -> str | None:
        """A short generation to show progress, or None."""
        return None
