"""A gated MLP whose three projections all carry LoRA, trained through one autograd function.

transformers' Llama-family MLP is down(silu(gate(x)) * up(x)). Run op by op, autograd keeps four
activations of the intermediate width for every token of every layer: gate's output (for silu), silu's
output and up's output (for the product) and the product itself (for down's LoRA A gradient). That is
most of what a LoRA step holds in memory. Here backward recomputes silu and the product from gate's and
up's outputs (two elementwise operations), and by default those two as well, from the MLP's input and
the rank-r products (two matmuls of the frozen weights, ~10% of a step's time on CPUs): the MLP then
keeps nothing of the intermediate width (with `keep_mlp_activations`, gate's and up's outputs, half of
what peft keeps). The matmuls and dropout are those of finetune/fast_lora.py, with the same draws in the
same order (gate, up, down), so a run trains exactly as with three fused layers.

Only where all three layers take fast_lora's fused path and the activation is SiLU; anything else runs
the MLP's own forward.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

from llmctl.finetune.fast_lora import fused_inputs, lora_backward, lora_forward, lora_output

# transformers' MLP classes computing exactly down(act(gate(x)) * up(x)) (tests/test_fast_mlp.py checks each)
GATED_MLPS = ("LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP")


class FusedLoraSwiGLU(torch.autograd.Function):
    """down(silu(gate(x)) * up(x)), each projection frozen weight + LoRA: gradients for x and the six
    LoRA matrices. `layers` holds (weight, bias, A, B, scaling, p) for gate, up and down, flattened.
    With `recompute`, backward recomputes gate's and up's outputs too (two matmuls of the frozen
    weights, from x and the rank-r products it keeps anyway), so the MLP keeps nothing of the
    intermediate width at all."""

    @staticmethod
    def forward(ctx, x, recompute: bool, *layers):
        gate_in, up_in, down_in = layers[0:6], layers[6:12], layers[12:18]
        flat = x.reshape(-1, x.shape[-1])
        gate, gate_low, gate_drops = lora_forward(flat, *gate_in)
        up, up_low, up_drops = lora_forward(flat, *up_in)
        out, down_low, down_drops = lora_forward(F.silu(gate) * up, *down_in)
        ctx.recompute = recompute
        kept = (None, None) if recompute else (gate, up)
        ctx.save_for_backward(x, *kept, gate_low, up_low, down_low, gate_drops, up_drops, down_drops,
                              *(layer[i] for layer in (gate_in, up_in, down_in) for i in (0, 1, 2, 3)))
        ctx.settings = [(layer[4], layer[5]) for layer in (gate_in, up_in, down_in)]  # (scaling, p)
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        x, gate, up, gate_low, up_low, down_low, gate_drops, up_drops, down_drops, *weights = ctx.saved_tensors
        (gate_w, gate_bias, gate_a, gate_b), (up_w, up_bias, up_a, up_b), (down_w, _, down_a, down_b) = (
            weights[0:4], weights[4:8], weights[8:12])
        (gate_s, gate_p), (up_s, up_p), (down_s, down_p) = ctx.settings
        needs = ctx.needs_input_grad
        flat, flat_grad = x.reshape(-1, x.shape[-1]), grad_out.reshape(-1, grad_out.shape[-1])
        if ctx.recompute:  # the same operations as forward's, on what forward kept: the same bits
            gate = lora_output(flat, gate_w, gate_bias, gate_low, gate_b, gate_s)
            up = lora_output(flat, up_w, up_bias, up_low, up_b, up_s)
        sig = torch.sigmoid(gate)
        activated = gate * sig  # silu(gate), recomputed
        grad_h, down_a_grad, down_b_grad = lora_backward(activated * up, flat_grad, down_w, down_a, down_b,
                                                         down_low, down_drops, down_s, down_p,
                                                         (True, needs[16], needs[17]))
        grad_up = grad_h * activated
        del activated
        # silu'(g) = sigmoid(g) * (1 + g * (1 - sigmoid(g)))
        grad_gate = grad_h.mul_(up).mul_(sig.mul_(gate.neg().mul_(sig).add_(gate).add_(1)))
        del sig
        grad_x_gate, gate_a_grad, gate_b_grad = lora_backward(flat, grad_gate, gate_w, gate_a, gate_b, gate_low,
                                                              gate_drops, gate_s, gate_p,
                                                              (needs[0], needs[4], needs[5]))
        grad_x_up, up_a_grad, up_b_grad = lora_backward(flat, grad_up, up_w, up_a, up_b, up_low, up_drops, up_s,
                                                        up_p, (needs[0], needs[10], needs[11]))
        grad_x = grad_x_gate.add_(grad_x_up).view(x.shape) if needs[0] else None
        return (grad_x, None, None, None, gate_a_grad, gate_b_grad, None, None, None, None, up_a_grad, up_b_grad,
                None, None, None, None, down_a_grad, down_b_grad, None, None)


def _is_silu(act) -> bool:
    """torch's SiLU or transformers' (ACT2FN["silu"]), its forward not replaced (by a hub kernel, say)."""
    plain = type(act) is torch.nn.SiLU or (type(act).__name__, type(act).__module__) == (
        "SiLUActivation", "transformers.activations")
    return plain and "forward" not in vars(act)


def fused_mlp_forward(mlp, x: torch.Tensor) -> torch.Tensor:
    """The forward of an MLP switched by use_fast_mlp: fused where all three layers can be, its own otherwise."""
    layers = [fused_inputs(getattr(mlp, name), x, (), {}) for name in ("gate_proj", "up_proj", "down_proj")]
    if any(inputs is None for inputs in layers) or not _is_silu(mlp.act_fn):
        return type(mlp).forward(mlp, x)
    with torch.autocast(x.device.type, enabled=False):
        return FusedLoraSwiGLU.apply(layers[0][0], mlp.llmctl_recompute,
                                     *(value for inputs in layers for value in inputs[1:]))


def use_fast_mlp(model, recompute: bool = True) -> int:
    """Route the forward of every gated MLP (GATED_MLPS) whose projections are all peft lora.Linear layers
    through FusedLoraSwiGLU (`recompute`: gate's and up's outputs too); how many were switched. Each
    call still checks the layers (fused_mlp_forward)."""
    from peft.tuners.lora.layer import Linear

    switched = 0
    for module in model.modules():
        parts = [getattr(module, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
        if type(module).__name__ in GATED_MLPS and all(type(part) is Linear for part in parts):
            module.forward = types.MethodType(fused_mlp_forward, module)
            module.llmctl_recompute = recompute
            switched += 1
    return switched
