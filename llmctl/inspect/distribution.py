"""One next-token distribution: softmax at a temperature, the top k with their text, and its entropy.

Shared by the local backend (`prompt --top-probs`) and `llmctl next`, so both show the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass
class Candidate:
    id: int
    token: str
    prob: float


@dataclass
class Distribution:
    temperature: float
    top: list[Candidate]
    entropy_bits: float
    probs: torch.Tensor = field(repr=False)  # the whole distribution, over the vocabulary

    @property
    def other(self) -> float:
        """The probability mass outside the top k."""
        return max(0.0, 1.0 - sum(c.prob for c in self.top))

    def to_dict(self) -> dict:
        return {"temperature": self.temperature, "entropy_bits": round(self.entropy_bits, 6),
                "top": [{"id": c.id, "token": c.token, "prob": c.prob} for c in self.top], "other": self.other}


def probabilities(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T). T = 0 is greedy decoding: all the mass on the likeliest token."""
    logits = logits.float()
    if temperature <= 0:
        return torch.nn.functional.one_hot(logits.argmax(), logits.numel()).float()
    return torch.softmax(logits / temperature, dim=-1)


def entropy_bits(probs: torch.Tensor) -> float:
    """How uncertain the distribution is: 0 bits for one certain token, log2(n) for n equal ones."""
    p = probs[probs > 0].double()
    return float(-(p * p.log()).sum() / math.log(2))


def token_text(tokenizer, token_id: int) -> str:
    """A token as text; a byte fragment of a longer character shows as its vocabulary entry."""
    text = tokenizer.decode([token_id])
    return text if "\ufffd" not in text else str(tokenizer.convert_ids_to_tokens(token_id))


def distribution(logits: torch.Tensor, temperature: float, k: int, tokenizer) -> Distribution:
    """The distribution `logits` give at `temperature`, with its k likeliest tokens."""
    probs = probabilities(logits, temperature)
    # Ranked by logit, which temperature never reorders: at T = 0 the runners-up still show (at 0).
    top = torch.topk(logits.float(), min(k, logits.numel())).indices
    candidates = [Candidate(int(i), token_text(tokenizer, int(i)), float(probs[i])) for i in top]
    return Distribution(temperature, candidates, entropy_bits(probs), probs)
