"""The fused gated MLP (finetune/fast_mlp.py): the same outputs and gradients as peft's layers and as
three fused layers with the same dropout draws, less kept for backward, and the MLP's own forward
wherever it is not made for."""

from __future__ import annotations

import inspect

import pytest
import torch

from llmctl.finetune.fast_lora import use_fast_lora
from llmctl.finetune.fast_mlp import GATED_MLPS, FusedLoraSwiGLU, use_fast_mlp

FUSED_MLP = FusedLoraSwiGLU.__name__ + "Backward"


def _llama(**extra):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    settings = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=64)
    config = LlamaConfig(**{**settings, **extra})
    return LlamaForCausalLM(config)


def _lora(model, dropout: float, targets="all-linear"):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)  # init_lora_weights=False: B is not zero, so A has a gradient from the start
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=targets,
                                            init_lora_weights=False))


def _mlp_paths(model) -> list[str]:
    """After a forward: which function made each MLP's output (grad_fn names, in call order)."""
    seen = []
    for module in model.modules():
        if type(module).__name__ == "LlamaMLP":
            module.register_forward_hook(lambda m, args, out: seen.append(type(out.grad_fn).__name__))
    return seen


def _step(model, embeds: torch.Tensor, seed: int = 5):
    """Logits, and the gradients of the LoRA weights and of the input embeddings, for a fixed loss."""
    model.zero_grad(set_to_none=True)
    embeds = embeds.detach().requires_grad_()
    torch.manual_seed(seed)
    logits = model(inputs_embeds=embeds).logits
    (logits * torch.linspace(-1, 1, logits.size(-1))).sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if "lora_" in n}, embeds.grad


def _assert_same(ours, theirs):
    torch.testing.assert_close(ours[0], theirs[0], atol=1e-6, rtol=1e-6)
    assert ours[1].keys() == theirs[1].keys() and len(ours[1]) == 28
    for name in ours[1]:
        torch.testing.assert_close(ours[1][name], theirs[1][name], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours[2], theirs[2], atol=1e-6, rtol=1e-5)


def test_without_dropout_outputs_and_gradients_equal_peft():
    model = _lora(_llama(), dropout=0.0).train()
    embeds = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(2))
    theirs = _step(model, embeds)
    use_fast_lora(model)
    assert use_fast_mlp(model) == 2
    paths = _mlp_paths(model)
    ours = _step(model, embeds)
    assert paths == [FUSED_MLP] * 2
    _assert_same(ours, theirs)


@pytest.mark.parametrize("recompute", [True, False])
def test_with_dropout_it_trains_exactly_as_three_fused_layers(recompute):
    # the same draws in the same order (gate, up, down): the same dropped elements, so the same numbers
    model = _lora(_llama(), dropout=0.3).train()
    use_fast_lora(model)
    embeds = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(3))
    layers_only = _step(model, embeds)
    use_fast_mlp(model, recompute=recompute)
    paths = _mlp_paths(model)
    ours = _step(model, embeds)
    assert paths == [FUSED_MLP] * 2
    _assert_same(ours, layers_only)
    assert not torch.equal(_step(model, embeds, seed=6)[0], ours[0])  # dropout is on: other draws, other logits


def _saved_bytes(model, ids) -> int:
    """Bytes of the activations autograd keeps for one forward (each storage once, parameters left out)."""
    storages = {}

    def pack(tensor):
        if not isinstance(tensor, torch.nn.Parameter):
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(ids).logits.sum()
    return sum(storages.values())


@pytest.mark.parametrize("recompute, fewer", [(False, 2), (True, 4)])
def test_the_mlp_keeps_half_as_much_for_backward_or_nothing_of_its_width(recompute, fewer):
    model = _lora(_llama(intermediate_size=256), dropout=0.0).train()
    use_fast_lora(model)
    ids = torch.randint(0, 64, (1, 60), generator=torch.Generator().manual_seed(4))
    before = _saved_bytes(model, ids)
    use_fast_mlp(model, recompute=recompute)
    after = _saved_bytes(model, ids)
    # per token and layer the MLP kept 4 x 256 floats (gate, silu, up, product); now 2 x 256 (gate, up) or none
    assert before - after == pytest.approx(fewer * 256 * 4 * 60 * 2, rel=0.05)


def test_what_it_is_not_made_for_runs_the_mlp_s_own_forward():
    ids = torch.tensor([[1, 2, 3, 4]])
    partial = _lora(_llama(), dropout=0.0, targets=["q_proj", "gate_proj", "up_proj"]).train()  # down has no LoRA
    use_fast_lora(partial)
    assert use_fast_mlp(partial) == 0
    model = _lora(_llama(), dropout=0.1).train()
    use_fast_lora(model)
    use_fast_mlp(model)
    paths = _mlp_paths(model)
    model.eval()
    model(ids)
    model.train()
    with model.disable_adapter():
        model(ids)
    assert len(paths) == 4 and FUSED_MLP not in paths
    gelu = _lora(_llama(hidden_act="gelu"), dropout=0.0).train()  # not SiLU: not a SwiGLU
    use_fast_lora(gelu)
    use_fast_mlp(gelu)
    paths = _mlp_paths(gelu)
    gelu(ids)
    assert len(paths) == 2 and FUSED_MLP not in paths


@pytest.mark.parametrize("name", GATED_MLPS)
def test_each_listed_mlp_computes_down_of_act_gate_times_up(name):
    import transformers

    module = name[: -len("MLP")].lower()
    cls = getattr(getattr(transformers.models, module), f"modeling_{module}").__dict__[name]
    body = inspect.getsource(cls.forward)
    assert "self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))" in body
