"""Activations recomputed in backward instead of kept from forward, where recomputing costs next to nothing.

A LoRA layer keeps its input for backward (A's gradient needs it), and in a Llama-family block that
input is often a tensor computed by one cheap elementwise step from tensors autograd keeps anyway:
- RMSNorm's output, weight * (x * rsqrt(mean(x^2) + eps)): the norm keeps x and the rsqrt itself;
- the attention output copied into the layout o_proj reads: the attention kernel keeps each example's
  output itself (packed rows, training/packed_attention.py).
Keeping both is two copies of the same information for every token of every layer (three of the
seven hidden-size activations a LoRA step keeps per layer). Inside `recomputing()`, such a tensor,
once registered by the code that makes it, is saved as its recipe instead (the function and the
inputs it reads, which are kept anyway), and rebuilt with the same operations, so bit for bit the
same, when backward needs it.

Only what is registered inside `recomputing()` changes; anything else is saved as usual.
"""

from __future__ import annotations

import contextlib
import types
import weakref
from typing import Callable

import torch

# transformers' RMSNorm classes whose forward is exactly the one _norm_forward repeats (tests check each)
RMS_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm")

_registry: dict[int, tuple] | None = None  # storage address -> (weakref, version, fn, inputs), inside recomputing()


def register(tensor: torch.Tensor, fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> None:
    """Inside recomputing(): `tensor` (contiguous, its own storage) equals fn(*inputs) bit for bit, so
    autograd may keep the recipe instead of it (views of it too). Outside: nothing."""
    if _registry is None or not tensor.is_contiguous() or tensor.storage_offset() != 0:
        return
    storage = tensor.untyped_storage()
    if storage.nbytes() != tensor.numel() * tensor.element_size():
        return
    _registry[storage.data_ptr()] = (weakref.ref(tensor), tensor._version, fn, inputs)


class _Recipe:
    __slots__ = ("fn", "inputs", "size", "stride", "offset")

    def __init__(self, fn, inputs, tensor: torch.Tensor):
        self.fn, self.inputs = fn, inputs
        self.size, self.stride, self.offset = tensor.size(), tensor.stride(), tensor.storage_offset()


def _pack(tensor: torch.Tensor):
    if type(tensor) is not torch.Tensor or tensor.layout != torch.strided:  # parameters, DTensors: as usual
        return tensor
    entry = _registry.get(tensor.untyped_storage().data_ptr()) if _registry else None
    if entry is None:
        return tensor
    ref, version, fn, inputs = entry
    base = ref()
    # the registered tensor itself, alive (so its storage is not someone else's) and not changed since
    if base is None or base._version != version or base.untyped_storage().nbytes() != tensor.untyped_storage().nbytes():
        return tensor
    return _Recipe(fn, inputs, tensor)


def _unpack(packed):
    if not isinstance(packed, _Recipe):
        return packed
    with torch.no_grad():
        return packed.fn(*packed.inputs).as_strided(packed.size, packed.stride, packed.offset)


@contextlib.contextmanager
def recomputing(enabled: bool = True):
    """Forward passes inside save registered tensors as recipes (see the top). Not nested."""
    global _registry
    if not enabled or _registry is not None:
        yield
        return
    _registry = {}
    try:
        with torch.autograd.graph.saved_tensors_hooks(_pack, _unpack):
            yield
    finally:
        _registry = None


def _normalized(x: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    return x * rstd


def _scaled(weight: torch.Tensor, x: torch.Tensor, rstd: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return weight * (x * rstd).to(dtype)


def _norm_forward(norm, hidden_states: torch.Tensor) -> torch.Tensor:
    """transformers' Llama-family RMSNorm forward, the same operations in the same order, registering
    its two outputs of the input's size as recomputable from the input and the rsqrt (kept anyway)."""
    input_dtype = hidden_states.dtype
    x = hidden_states.to(torch.float32)
    rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    normalized = x * rstd
    register(normalized, _normalized, x, rstd)
    out = norm.weight * normalized.to(input_dtype)
    register(out, _scaled, norm.weight, x, rstd, input_dtype)
    return out


def use_recomputed_norms(model) -> int:
    """Route every RMSNorm of the RMS_NORMS classes in `model` through _norm_forward; how many."""
    switched = 0
    for module in model.modules():
        if type(module).__name__ in RMS_NORMS:
            module.forward = types.MethodType(_norm_forward, module)
            switched += 1
    return switched
