"""LoRA's training forward and backward in one autograd function, for peft's plain `lora.Linear` layers.

peft computes base(x) + scaling * B(A(dropout(x))) op by op. Its dropout draws one random float per
element (torch's Bernoulli), which costs more than the base matmul beside it, and autograd then keeps,
for every adapted layer, a float copy of dropout(x) and a float mask, where q, k and v (and gate and up)
all read the same x. Here dropout draws only where the dropped elements are: the gaps between them are
geometric, so p = 0.05 takes one draw per 20 elements, and each element is still dropped independently
with probability p exactly. Backward keeps x itself (the tensor every layer reading it shares), the
positions of the dropped elements and the small rank-r product, nothing of x's size of its own. (On a
GPU dropout is a bool mask, one byte an element, drawn without stopping the GPU: draw_dropout.)

Anything else goes to peft's own forward, unchanged: eval mode or no gradient, several or no active
adapters, merged or disabled adapters, a mixed-adapter batch (`adapter_names`, as serving sends), DoRA
and the other variants, a LoRA bias, a base layer that is not a plain frozen nn.Linear (bitsandbytes,
GPT-2's Conv1D), dtypes other than float32 and bfloat16. The weights are peft's own parameters, so
saving, loading and merging the adapter do not change.
"""

from __future__ import annotations

import math
import types

import torch

DTYPES = (torch.float32, torch.bfloat16)


def dropped_positions(count: int, p: float, device: torch.device) -> torch.Tensor:
    """Flat indices (ascending, int64) of the elements dropout p drops among `count`, each dropped
    independently with probability p. The gap to the next drop is geometric: floor(log(v) / log(1 - p)) + 1
    trials for v uniform in (0, 1], from torch's default generator (which checkpoints save, so a resumed
    run draws the same). As many gaps are drawn as expected plus 8 standard deviations, more if short."""
    log_keep, found, start = math.log1p(-p), [], 0  # start: the first position not yet decided
    while start < count:
        left = count - start
        draws = math.ceil(left * p + 8 * math.sqrt(left * p) + 16)
        uniform = torch.rand(draws, dtype=torch.float64, device=device)
        gaps = torch.log1p(-uniform).div_(log_keep).floor_().add_(1).clamp_(max=left + 1)  # finite, exact
        ends = gaps.cumsum_(0).add_(start - 1)
        inside = int(torch.searchsorted(ends, float(count)))
        found.append(ends[:inside].to(torch.int64))
        if inside < draws:
            break
        start = int(ends[-1]) + 1
    if len(found) == 1:
        return found[0]
    return torch.cat(found) if found else torch.empty(0, dtype=torch.int64, device=device)


def draw_dropout(count: int, p: float, device: torch.device) -> torch.Tensor:
    """What dropout p drops among `count` elements. On the CPU, their flat positions (dropped_positions):
    one random number per element costs more there than the matmul beside it. Elsewhere a flat bool
    mask, one draw per element: GPUs draw those fast, and the positions' count would have to be read
    back to the host, stopping the GPU once per layer."""
    if device.type == "cpu":
        return dropped_positions(count, p, device)
    return torch.rand(count, device=device) < p


def _drop_(flat: torch.Tensor, drops: torch.Tensor) -> torch.Tensor:
    """Zero, in place, the elements of `flat` that `drops` (positions or a mask, from draw_dropout) names."""
    if drops.dtype == torch.bool:
        return flat.masked_fill_(drops.view(flat.shape), 0)
    return flat.view(-1).index_fill_(0, drops, 0).view(flat.shape)


def _zeroed(flat: torch.Tensor, dtype: torch.dtype, drops: torch.Tensor | None) -> torch.Tensor:
    """flat in `dtype`, with the dropped elements set to zero: dropout before scaling."""
    if drops is None:
        return flat.to(dtype)
    out = torch.empty(flat.shape, dtype=dtype, device=flat.device)
    out.copy_(flat)
    return _drop_(out, drops)


def lora_forward(flat, weight, bias, lora_a, lora_b, scaling: float, p: float):
    """flat W^T + bias + scaling * (dropout(flat) A^T) B^T for flat (tokens, in), with what backward keeps
    of its own: the rank-r product A(dropout(x)) and the dropped positions. The LoRA branch runs in the
    adapter's dtype (peft casts x to it), the base in x's own."""
    drops = draw_dropout(flat.numel(), p, flat.device) if p > 0 else None
    # dropout's 1 / (1 - p) is applied here, on rank-r columns, not on x
    low_rank = (_zeroed(flat, lora_a.dtype, drops) @ lora_a.t()).mul_(1 / (1 - p))
    return lora_output(flat, weight, bias, low_rank, lora_b, scaling), low_rank, drops


def lora_output(flat, weight, bias, low_rank, lora_b, scaling: float) -> torch.Tensor:
    """flat W^T + bias + scaling * low_rank B^T: the layer's output from its rank-r product (the same
    operations whether in forward or recomputed in backward, so the same bits)."""
    out = flat @ weight.t() if bias is None else torch.addmm(bias, flat, weight.t())
    if out.dtype == low_rank.dtype:
        return out.addmm_(low_rank, lora_b.t(), alpha=scaling)
    # as peft: the sum in the wider dtype, then back to the base's
    wide = torch.promote_types(out.dtype, low_rank.dtype)
    return (out.to(wide) + (low_rank @ lora_b.t()).mul_(scaling).to(wide)).to(out.dtype)


def lora_backward(flat, flat_grad, weight, lora_a, lora_b, low_rank, drops, scaling: float, p: float,
                  needs: tuple[bool, bool, bool]):
    """The gradients (for flat, A, B; None where `needs` says no) of lora_forward's output."""
    lora_grad = flat_grad.to(lora_a.dtype)
    grad_b = (lora_grad.t() @ low_rank).mul_(scaling) if needs[2] else None
    # the gradient reaching dropout(x) A^T, dropout's 1 / (1 - p) included
    grad_low_rank = (lora_grad @ lora_b).mul_(scaling / (1 - p))
    grad_a = grad_low_rank.t() @ _zeroed(flat, lora_a.dtype, drops) if needs[1] else None
    grad_x = None
    if needs[0]:
        lora_part = grad_low_rank @ lora_a
        if drops is not None:
            _drop_(lora_part, drops)
        grad_x = torch.addmm(lora_part.to(flat_grad.dtype), flat_grad, weight)
    return grad_x, grad_a, grad_b


class FusedLoraLinear(torch.autograd.Function):
    """y = x W^T + bias + scaling * (dropout(x) A^T) B^T, with W and bias frozen: gradients for x, A and B."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float, p: float):
        out, low_rank, drops = lora_forward(x.reshape(-1, x.shape[-1]), weight, bias, lora_a, lora_b, scaling, p)
        ctx.save_for_backward(x, weight, lora_a, lora_b, low_rank, drops)
        ctx.scaling, ctx.p = scaling, p
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, lora_a, lora_b, low_rank, drops = ctx.saved_tensors
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[3], ctx.needs_input_grad[4])
        grad_x, grad_a, grad_b = lora_backward(x.reshape(-1, x.shape[-1]), grad_out.reshape(-1, grad_out.shape[-1]),
                                               weight, lora_a, lora_b, low_rank, drops, ctx.scaling, ctx.p, needs)
        return grad_x.view(x.shape) if grad_x is not None else None, None, None, grad_a, grad_b, None, None


def fused_inputs(layer, x: torch.Tensor, args: tuple, kwargs: dict) -> tuple | None:
    """FusedLoraLinear's inputs for this call, or None where peft's own forward must run (see the top)."""
    if args or any(v is not None for v in kwargs.values()) or not (layer.training and torch.is_grad_enabled()):
        return None
    if layer.disable_adapters or layer.merged or len(layer.active_adapters) != 1:
        return None
    name = layer.active_adapters[0]
    if name not in layer.lora_A or name in layer.lora_variant or layer.lora_bias.get(name):
        return None
    base, lora_a, lora_b = layer.get_base_layer(), layer.lora_A[name], layer.lora_B[name]
    # forward not overridden: excludes bitsandbytes' Linear4bit, admits FSDP's re-classed nn.Linear
    if not isinstance(base, torch.nn.Linear) or type(base).forward is not torch.nn.Linear.forward:
        return None
    if base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad):
        return None
    dropout = layer.lora_dropout[name]
    p = dropout.p if isinstance(dropout, torch.nn.Dropout) else 0.0 if isinstance(dropout, torch.nn.Identity) else None
    if p is None or not 0 <= p < 1 or lora_b.bias is not None:
        return None
    weight, bias, a, b = base.weight, base.bias, lora_a.weight, lora_b.weight
    if torch.is_autocast_enabled(x.device.type):  # autocast would cast them in each op; cast them once, here
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight, a, b = x.to(dtype), weight.to(dtype), a.to(dtype), b.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    if x.dtype != weight.dtype or x.dtype not in DTYPES or a.dtype not in DTYPES or b.dtype != a.dtype:
        return None
    return x, weight, bias, a, b, float(layer.scaling[name]), float(p)


def fused_forward(layer, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """The forward of a peft lora.Linear switched by use_fast_lora: fused where it can, peft's otherwise."""
    from peft.tuners.lora.layer import Linear

    inputs = fused_inputs(layer, x, args, kwargs)
    if inputs is None:
        return Linear.forward(layer, x, *args, **kwargs)
    with torch.autocast(x.device.type, enabled=False):
        return FusedLoraLinear.apply(*inputs)


def use_fast_lora(model) -> int:
    """Route the training forward of every plain peft lora.Linear in `model` through FusedLoraLinear;
    how many layers were switched. Each call still checks that the layer is one it is made for."""
    from peft.tuners.lora.layer import Linear

    switched = 0
    for module in model.modules():
        if type(module) is Linear:
            module.forward = types.MethodType(fused_forward, module)
            switched += 1
    return switched
