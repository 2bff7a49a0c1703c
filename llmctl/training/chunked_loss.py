"""Losses without the full float32 logits: the output layer runs on chunks of positions, each chunk's
loss terms are computed at once and its logits dropped, so memory holds batch x length x vocab floats
for one chunk, never for the whole batch, nor several copies of it.

Backward needs each chunk's logits again. A frozen output layer (LoRA) gets its gradient to the hidden
states while the chunk's logits are still there, in forward: nothing to recompute, one head matmul less
per chunk. A trained one (pretraining) keeps only the hidden states and recomputes a chunk's logits in
backward (checkpointing), since its weight gradient needs them; where the whole batch is one chunk, it
keeps that chunk's logits instead (memory holds one chunk either way, and the head's matmul is not run
twice: ~10% of a step for a 3x96 model with a 2,048-token vocabulary).

The model still runs through its own forward (DDP and FSDP see an ordinary call, FSDP gathers the
head's weights as usual); only the output layer's forward is swapped for the time of the call.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch.utils.checkpoint import checkpoint

CHUNK = 1024  # positions per chunk at most
# float32 logits per chunk at most: 24 MB, under glibc's largest mmap threshold (32 MB), so the chunks'
# logits and their softmax come from the heap and are reused, not mapped and faulted in afresh each time
LOGITS_PER_CHUNK = 6 * 2**20


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


def chunk_positions(head: torch.nn.Module) -> int:
    """Positions per chunk: CHUNK, or fewer where the vocabulary is large (LOGITS_PER_CHUNK)."""
    vocab = getattr(head, "out_features", None)
    return min(CHUNK, max(1, LOGITS_PER_CHUNK // vocab)) if vocab else CHUNK


class FrozenHeadTerms(torch.autograd.Function):
    """The terms of every chunk, and in the same pass their gradient to that chunk's hidden states: a
    term depends only on its own position's logits, so its gradient to the hidden states is the slope
    (term by hidden state, one row per position) times the gradient that reaches the term in backward."""

    @staticmethod
    def forward(ctx, flat: torch.Tensor, one_chunk: Callable, chunk: int) -> torch.Tensor:
        # What is kept of each chunk (its terms and slopes) goes into buffers made before the first
        # chunk: kept per chunk, it would sit in the heap among that chunk's freed logits, the next
        # chunk's logits would no longer fit there, and the heap would grow by about a chunk's worth
        # each time (~580 MB at 1,600 positions with SmolLM2).
        positions, terms, slopes = flat.size(0), None, None
        for start in range(0, positions, chunk):
            with torch.enable_grad():
                piece = flat[start:start + chunk].detach().requires_grad_()
                value = one_chunk(piece, start)
                columns = value.reshape(value.size(0), -1)  # DPO and cross-entropy: one; distillation: two
                if terms is None:
                    terms = value.new_empty(positions, *value.shape[1:])
                    slopes = flat.new_empty(positions, columns.size(1), flat.size(1))
                for j in range(columns.size(1)):
                    slopes[start:start + piece.size(0), j] = _slope(columns[:, j], piece, j + 1 < columns.size(1))
            terms[start:start + piece.size(0)] = value.detach()
        ctx.save_for_backward(slopes)
        return terms

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (slopes,) = ctx.saved_tensors  # (positions, terms per position, hidden)
        grad = grad.reshape(slopes.size(0), slopes.size(1)).to(slopes.dtype)
        return torch.einsum("pk,pkh->ph", grad, slopes), None, None


def _slope(column: torch.Tensor, piece: torch.Tensor, keep_graph: bool) -> torch.Tensor:
    if not column.requires_grad:
        return torch.zeros_like(piece)
    (slope,) = torch.autograd.grad(column.sum(), piece, retain_graph=keep_graph, allow_unused=True)
    return torch.zeros_like(piece) if slope is None else slope


def chunked_terms(model, run: Callable[[], object], terms: Callable[[torch.Tensor, slice], torch.Tensor],
                  chunk: int | None = None) -> tuple[torch.Tensor, object]:
    """Run the model's forward; instead of its (batch, length, vocab) logits, apply `terms(logits,
    positions)` to the float32 logits of each chunk of flattened positions and concatenate the
    results: (per-position terms of the whole batch, the model's output). `terms` gives one value (or
    one row of values) per position, each from that position's logits alone."""
    head = output_layer(model)
    real = head.forward
    chunk = chunk or chunk_positions(head)
    frozen = not any(p.requires_grad for p in head.parameters())
    found: dict[str, torch.Tensor] = {}

    def one_chunk(hidden: torch.Tensor, start: int) -> torch.Tensor:
        return terms(real(hidden).float(), slice(start, start + hidden.size(0)))

    def chunked(hidden: torch.Tensor) -> torch.Tensor:
        flat = hidden.reshape(-1, hidden.size(-1))
        if not (torch.is_grad_enabled() and flat.requires_grad):
            found["terms"] = torch.cat([one_chunk(flat[s:s + chunk], s) for s in range(0, flat.size(0), chunk)])
        elif frozen:
            found["terms"] = FrozenHeadTerms.apply(flat, one_chunk, chunk)
        elif flat.size(0) <= chunk:
            found["terms"] = one_chunk(flat, 0)
        else:  # keep only the hidden states; the logits come back in backward
            found["terms"] = torch.cat([checkpoint(one_chunk, flat[s:s + chunk], s, use_reentrant=False)
                                        for s in range(0, flat.size(0), chunk)])
        return found["terms"]  # what the model returns as "logits"; unused

    with _head_forward(head, chunked):
        out = run()
    return found["terms"], out
