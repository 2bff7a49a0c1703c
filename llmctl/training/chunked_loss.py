"""Losses without the full float32 logits: the output layer runs on chunks of positions, each chunk's
loss terms are computed at once and its logits dropped (recomputed in backward), so memory holds
batch x length x vocab floats for one chunk, never for the whole batch, nor several copies of it.

The model still runs through its own forward (DDP and FSDP see an ordinary call, FSDP gathers the
head's weights as usual); only the output layer's forward is swapped for the time of the call.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch.utils.checkpoint import checkpoint

CHUNK = 1024  # positions per chunk: ~4 MB of float32 logits per 1k-token vocabulary


def output_layer(model) -> torch.nn.Module:
    """The model's output layer, through the wrappers that hide it (DDP's .module, torch.compile's
    ._orig_mod); peft forwards the call to its base model."""
    while not hasattr(model, "get_output_embeddings"):
        model = getattr(model, "module", None) or model._orig_mod
    return model.get_output_embeddings()


@contextmanager
def _head_forward(head: torch.nn.Module, replacement: Callable) -> Iterator[None]:
    had_own = "forward" in head.__dict__
    real = head.forward
    head.forward = replacement
    try:
        yield
    finally:
        if had_own:
            head.forward = real
        else:
            del head.forward


def hidden_and_head(model, run: Callable[[], object]) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor], object]:
    """Run `run()` (the model's forward) with the output layer returning its input instead of logits:
    (final hidden states, the real output layer, the model's output). Only for no-grad use (a
    teacher), since the head's weights may be resharded once the forward is over."""
    head = output_layer(model)
    real = head.forward
    with _head_forward(head, lambda hidden: hidden):
        out = run()
    return out.logits, real, out


def chunked_terms(model, run: Callable[[], object], terms: Callable[[torch.Tensor, slice], torch.Tensor],
                  chunk: int | None = None) -> tuple[torch.Tensor, object]:
    """Run the model's forward; instead of its (batch, length, vocab) logits, apply `terms(logits,
    positions)` to the float32 logits of each chunk of flattened positions and concatenate the
    results: (per-position terms of the whole batch, the model's output)."""
    head = output_layer(model)
    real = head.forward
    chunk = chunk or CHUNK
    found: dict[str, torch.Tensor] = {}

    def one_chunk(hidden: torch.Tensor, start: int) -> torch.Tensor:
        return terms(real(hidden).float(), slice(start, start + hidden.size(0)))

    def chunked(hidden: torch.Tensor) -> torch.Tensor:
        flat = hidden.reshape(-1, hidden.size(-1))
        parts = []
        for start in range(0, flat.size(0), chunk):
            piece = flat[start:start + chunk]
            if torch.is_grad_enabled():  # keep only the hidden states; the logits come back in backward
                parts.append(checkpoint(one_chunk, piece, start, use_reentrant=False))
            else:
                parts.append(one_chunk(piece, start))
        found["terms"] = torch.cat(parts)
        return found["terms"]  # what the model returns as "logits"; unused

    with _head_forward(head, chunked):
        out = run()
    return found["terms"], out
