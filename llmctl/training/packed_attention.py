"""Attention for packed training rows without a length x length mask, where flash attention is missing.

A packed row holds several examples whose positions restart at each one. For eager and SDPA,
transformers keeps them apart with a block-causal (L x L) mask; SDPA cannot use its flash kernel with an
explicit mask, so it falls back to the math path, which also keeps L x L attention weights per head for
the backward pass. That is memory that grows with the square of the row, and compute spent on pairs
of tokens that the mask then throws away.

This attention reads the example boundaries from the positions instead (as flash attention's
variable-length kernels do on a GPU) and runs SDPA with `is_causal=True` on each example on its own:
the fused kernel, memory linear in the row, and only the pairs within an example computed. Anything it
is not made for (a padding mask, a cache of earlier tokens, a query shorter than its keys) goes to
transformers' own SDPA unchanged.
"""

from __future__ import annotations

import functools
import weakref

import torch
import torch.nn.functional as F

from llmctl.training.recompute import register

NAME = "llmctl_packed_sdpa"
# Architectures whose decoder layers pass position_ids through to the attention function, with plain
# causal attention (no sliding window, soft-capping or sinks); each is checked by tests/test_packed_attention.py.
SUPPORTED = ("llama", "qwen2", "qwen3", "mistral")


def _segments(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """[(start, end), ...] per row: an example starts wherever a position is not the previous one plus one."""
    rows = []
    for positions in position_ids.tolist():
        starts = [0] + [i for i in range(1, len(positions)) if positions[i] != positions[i - 1] + 1]
        rows.append(list(zip(starts, starts[1:] + [len(positions)])))
    return rows


class _LastSegments:
    """The boundaries of the last position_ids seen: every layer (and a gradient-checkpointing recompute)
    gets the same tensor object, so reading it to the host happens once per forward, not once per layer.
    Keyed on that object (a weak reference) and its version, never on its address: a later batch's
    positions may be allocated where a freed tensor was."""

    tensor: weakref.ref | None = None
    key: tuple = ()
    value: list[list[tuple[int, int]]] = []

    @classmethod
    def of(cls, position_ids: torch.Tensor, batch: int) -> list[list[tuple[int, int]]]:
        key = (position_ids._version, batch)
        if cls.tensor is None or cls.tensor() is not position_ids or cls.key != key:
            cls.tensor, cls.key = weakref.ref(position_ids), key
            cls.value = _segments(position_ids.expand(batch, -1))
        return cls.value


def packed_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                **kwargs):
    """transformers' attention-function signature: query (batch, heads, L, dim), key and value
    (batch, kv_heads, L, dim); returns (batch, L, heads, dim) and no weights."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    length = query.shape[2]
    if attention_mask is not None or key.shape[2] != length or kwargs.get("softcap") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    # Grouped-query attention: the kernel reads each key/value head for its group of query heads
    # (enable_gqa), so backward keeps the key/value heads as they are, not copies repeated per query head.
    gqa = key.shape[1] != query.shape[1]
    position_ids = kwargs.get("position_ids")
    if position_ids is None:
        rows = [[(0, length)]] * query.shape[0]
    else:
        rows = _LastSegments.of(position_ids, query.shape[0])
    p = dropout if module.training else 0.0

    def attend(rows_at: slice, start: int, end: int) -> torch.Tensor:
        return F.scaled_dot_product_attention(query[rows_at, :, start:end], key[rows_at, :, start:end],
                                              value[rows_at, :, start:end], dropout_p=p, is_causal=True, scale=scaling,
                                              enable_gqa=gqa)

    # Rows packed alike (the usual case: one packed row) go through together; otherwise each row on its own.
    groups = [(slice(None), rows[0])] if all(r == rows[0] for r in rows) else \
        [(slice(b, b + 1), row) for b, row in enumerate(rows)]
    outputs = [attend(at, s, e) for at, row in groups for s, e in row]
    if len(outputs) == 1:
        return outputs[0].transpose(1, 2).contiguous(), None
    counts = tuple(len(row) for _, row in groups)
    out = _joined(counts, *outputs)
    # the kernel keeps each example's output for its backward: o_proj need not keep this copy as well
    register(out, functools.partial(_joined, counts), *outputs)
    return out, None


def _joined(counts: tuple[int, ...], *outputs: torch.Tensor) -> torch.Tensor:
    """(batch, L, heads, dim) from the examples' outputs (batch or 1, heads, length, dim), `counts` of them
    to each row group, in order."""
    rows, at = [], 0
    for count in counts:
        rows.append(torch.cat(outputs[at:at + count], dim=2))
        at += count
    return torch.cat(rows, dim=0).transpose(1, 2).contiguous()


def packed_mask(batch_size: int, q_length: int, kv_length: int, attention_mask=None, **kwargs):
    """No mask where packed_sdpa finds the examples itself (no padding mask, no earlier tokens);
    otherwise the mask transformers' SDPA would get."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None and q_length == kv_length and kwargs.get("kv_offset", 0) == 0:
        return None
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, attention_mask=attention_mask,
                     **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, packed_sdpa)
    AttentionMaskInterface.register(NAME, packed_mask)


def use_packed_attention(model) -> bool:
    """Switch a model that would train with SDPA to packed_sdpa; True if it did. Eager (asked for) and
    flash attention (which already handles packed rows) stay as they are, as do architectures not in
    SUPPORTED."""
    config = model.config
    if config.model_type not in SUPPORTED or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False
    _register()
    model.set_attn_implementation(NAME)
    return True
