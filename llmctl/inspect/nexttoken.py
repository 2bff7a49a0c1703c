"""`llmctl next`: the next-token distribution after a text at several temperatures, and, with more
steps, along the greedy continuation, so the text is seen being built one token at a time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmctl.errors import UsageError
from llmctl.inspect.distribution import Distribution, distribution, token_text
from llmctl.inspect.local import check_text, context_length, eos_ids, load_inspected
from llmctl.inspect.tokens import encode

if TYPE_CHECKING:
    from llmctl.config import Config

MAX_TEMPERATURE = 5.0
MAX_TEMPERATURES = 6


@dataclass
class NextStep:
    context: str  # the text so far: TEXT plus the tokens chosen at earlier steps
    chosen_id: int  # the greedy choice, appended before the next step
    chosen: str
    distributions: list[Distribution]  # one per temperature, in the order given

    def to_dict(self) -> dict:
        return {"context": self.context, "chosen": {"id": self.chosen_id, "token": self.chosen},
                "distributions": [{**d.to_dict(), "chosen_prob": float(d.probs[self.chosen_id])}
                                  for d in self.distributions]}


@dataclass
class NextTokens:
    model: str
    text: str
    temperatures: list[float]
    k: int
    steps: list[NextStep]
    stopped_at_eos: bool = False

    @property
    def continuation(self) -> str:
        """The greedy tokens appended to the text (an end-of-text choice ends it and is not part of it)."""
        return "".join(s.chosen for s in (self.steps[:-1] if self.stopped_at_eos else self.steps))

    def to_dict(self) -> dict:
        return {"model": self.model, "text": self.text, "temperatures": self.temperatures, "top": self.k,
                "continuation": self.continuation, "stopped_at_eos": self.stopped_at_eos,
                "steps": [s.to_dict() for s in self.steps]}


def check_temperatures(temperatures: list[float]) -> list[float]:
    if not temperatures:
        raise UsageError("no temperature given", hint="e.g. --temperature 0.2,1.0,1.5")
    if len(temperatures) > MAX_TEMPERATURES:
        raise UsageError(f"{len(temperatures)} temperatures given; at most {MAX_TEMPERATURES} fit side by side")
    for t in temperatures:
        if not 0 <= t <= MAX_TEMPERATURE:
            raise UsageError(f"temperature {t:g} is out of range", hint=f"use 0 (greedy) to {MAX_TEMPERATURE:g}")
    if len(set(temperatures)) != len(temperatures):
        raise UsageError("a temperature is given twice")
    return temperatures


def next_tokens(ref: str, text: str, temperatures: list[float] = (1.0,), k: int = 10, steps: int = 1,
                config: Config | None = None) -> NextTokens:
    """The k likeliest next tokens after `text` (completed as is, no chat template) at each temperature;
    `steps` > 1 appends the likeliest token and looks again, stopping early at end-of-text."""
    import torch

    check_text(text)
    temperatures = check_temperatures(list(temperatures))
    if k < 1 or steps < 1:
        raise UsageError("--top and --steps must be at least 1")
    local = load_inspected(ref, "next-token distributions", config)
    tokenizer, model = local.tokenizer, local.model
    ids = encode(tokenizer, text)
    if len(ids) + steps - 1 > context_length(local):
        raise UsageError(f"the text is {len(ids)} tokens; with {steps} steps that passes {local.entry.name}'s "
                         f"context of {context_length(local)}", hint="shorten the text or use fewer --steps")
    eos = eos_ids(local)
    result = NextTokens(local.entry.name, text, temperatures, k, [])
    continuation: list[int] = []
    with torch.inference_mode():
        for _ in range(steps):
            # The whole text again at each step: a few dozen short passes, no cache to keep in step.
            logits = model(torch.tensor([ids + continuation], device=local.device)).logits[0, -1]
            chosen = int(logits.float().argmax())
            context = text + tokenizer.decode(continuation) if continuation else text
            result.steps.append(NextStep(context, chosen, token_text(tokenizer, chosen),
                                         [distribution(logits, t, k, tokenizer) for t in temperatures]))
            if chosen in eos:
                result.stopped_at_eos = True
                break
            continuation.append(chosen)
    return result
