"""`llmctl pretrain pairs`: the self-supervised (input -> target) pairs pretraining makes from plain
text, and the loss a model gives each target, so the easy and the hard next tokens show.

The text is cut as pretraining cuts its token stream: samples of context + 1 tokens, each sharing
its last token with the next sample's first, so every token after the first is a target exactly
once. In a sample, every prefix predicts the token after it: "Every" -> " effort",
"Every effort" -> " moves", ...
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llmctl.errors import UsageError
from llmctl.inspect.local import check_text, context_length, inspected_tokenizer, load_inspected
from llmctl.inspect.tokens import Token, as_tokens
from llmctl.registry import ModelEntry

if TYPE_CHECKING:
    from llmctl.config import Config


@dataclass
class Pair:
    sample: int  # which training sample (window of context + 1 tokens) the pair comes from
    start: int  # the input's first token, as an index into the text's tokens
    target: int  # the target, as an index into the text's tokens (the input ends just before it)
    loss: float | None = None  # cross-entropy of the target, in nats


@dataclass
class TrainingPairs:
    model: str
    text: str
    context: int
    tokens: list[Token]
    pairs: list[Pair]
    loss_from: str | None = None  # the model whose loss is shown; None: tokenizer only
    notes: list[str] = field(default_factory=list)

    @property
    def samples(self) -> int:
        return len({p.sample for p in self.pairs})

    @property
    def mean_loss(self) -> float | None:
        losses = [p.loss for p in self.pairs if p.loss is not None]
        return sum(losses) / len(losses) if losses else None

    def to_dict(self) -> dict:
        mean = self.mean_loss
        return {"model": self.model, "text": self.text, "context": self.context, "tokens": len(self.tokens),
                "samples": self.samples, "pair_count": len(self.pairs), "loss_from": self.loss_from,
                "mean_loss": mean, "perplexity": math.exp(mean) if mean is not None else None, "notes": self.notes,
                "pairs": [{"sample": p.sample,
                           "input_ids": [t.id for t in self.tokens[p.start:p.target]],
                           "input": [t.text for t in self.tokens[p.start:p.target]],
                           "target_id": self.tokens[p.target].id, "target": self.tokens[p.target].text,
                           "loss": p.loss, "prob": math.exp(-p.loss) if p.loss is not None else None}
                          for p in self.pairs]}


def make_pairs(n_tokens: int, context: int) -> list[Pair]:
    """The pairs of a stream of `n_tokens` tokens cut into samples of `context` + 1 tokens."""
    pairs = []
    for sample, start in enumerate(range(0, n_tokens - 1, context)):
        end = min(start + context + 1, n_tokens)
        pairs += [Pair(sample, start, target) for target in range(start + 1, end)]
    return pairs


def run_tokenizer_entry(ref: str) -> ModelEntry | None:
    """A pretraining run directory that has its tokenizer (data/tokenizer) but no model yet
    (--prepare-only, or training still under way): that tokenizer, as an entry."""
    from llmctl.pretrain.prepare import TOKENIZER_DIR

    path = Path(ref).expanduser()
    tokenizer_dir = path / "data" / TOKENIZER_DIR
    if path.is_dir() and not (path / "config.json").is_file() and tokenizer_dir.is_dir():
        return ModelEntry(name=ref, provider="hf", source=str(tokenizer_dir.resolve()), chat_template="none")
    return None


def training_pairs(ref: str, text: str, context: int | None = None, *, with_loss: bool = True,
                   config: Config | None = None) -> TrainingPairs:
    """The pairs `text` gives under `ref`'s tokenizer (a registry model, a model directory or a
    pretraining run), and with `with_loss` the loss `ref`'s weights give each target."""
    check_text(text)
    if context is not None and context < 1:
        raise UsageError("--context must be at least 1")
    run_entry = run_tokenizer_entry(ref)
    notes = []
    if run_entry is not None and with_loss:
        notes.append(f"{ref} has no trained model yet: tokenizer only, no loss")
        with_loss = False
    local = None
    if with_loss:
        local = load_inspected(ref, "the loss of training pairs", config)
        entry, tokenizer = local.entry, local.tokenizer
    else:
        entry, tokenizer = inspected_tokenizer(run_entry or ref, "training pairs", config)
    # As pretraining shards are written: the plain text, no BOS (documents are separated by end-of-text).
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if len(ids) < 2:
        raise UsageError(f"the text is {len(ids)} token{'' if len(ids) == 1 else 's'}; a training pair needs two "
                         "(an input and its target)",
                         hint="pass a longer text")
    limit = context_length(local) if local else None
    if context is None:
        context = min(len(ids) - 1, limit or len(ids))
    elif limit and context > limit:
        raise UsageError(f"--context {context} is longer than {entry.name}'s context of {limit}",
                         hint=f"use --context {limit} or less")
    result = TrainingPairs(entry.name, text, context, as_tokens(tokenizer, ids), make_pairs(len(ids), context),
                           entry.name if local else None, notes)
    if local:
        _add_losses(local, ids, result.pairs)
    return result


def _add_losses(local, ids: list[int], pairs: list[Pair]) -> None:
    """One forward pass per sample, exactly as a training step sees it: the sample's inputs, and the
    cross-entropy of each of its targets."""
    import torch
    import torch.nn.functional as F

    by_sample: dict[int, list[Pair]] = {}
    for p in pairs:
        by_sample.setdefault(p.sample, []).append(p)
    with torch.inference_mode():
        for sample in by_sample.values():
            start, end = sample[0].start, sample[-1].target
            inputs = torch.tensor([ids[start:end]], device=local.device)
            targets = torch.tensor(ids[start + 1:end + 1], device=local.device)
            losses = F.cross_entropy(local.model(inputs).logits[0].float(), targets, reduction="none")
            for pair, loss in zip(sample, losses.tolist()):
                pair.loss = loss
