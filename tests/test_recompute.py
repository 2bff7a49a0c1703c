"""Activations recomputed in backward (training/recompute.py): bit-for-bit the same gradients, less
kept between forward and backward, and nothing changed for what was not registered or was changed
after it was."""

from __future__ import annotations

import inspect

import pytest
import torch

from llmctl.finetune.fast_lora import use_fast_lora
from llmctl.finetune.fast_mlp import use_fast_mlp
from llmctl.training.packed_attention import use_packed_attention
from llmctl.training.recompute import RMS_NORMS, recomputing, register, use_recomputed_norms

HIDDEN = 64


def _lora_llama():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=HIDDEN, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         attn_implementation="sdpa")
    model = LlamaForCausalLM(config)
    use_packed_attention(model)
    torch.manual_seed(1)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear",
                                             init_lora_weights=False)).train()
    use_fast_lora(model)
    use_fast_mlp(model)
    return model


def _packed_batch():
    ids = torch.randint(0, 64, (1, 50), generator=torch.Generator().manual_seed(2))
    positions = torch.cat([torch.arange(20), torch.arange(30)]).unsqueeze(0)  # two examples in one row
    return ids, positions


def _saved_bytes_and_grads(model, recompute: bool, monkeypatch):
    """Bytes autograd keeps for one forward (each storage once, parameters left out), and the LoRA gradients.
    Counted inside recomputing()'s own saving hook (only the innermost hooks run); without `recompute`
    that hook keeps every tensor as it is."""
    from llmctl.training import recompute as module

    ids, positions = _packed_batch()
    storages, real_pack = {}, module._pack

    def pack(tensor):
        packed = real_pack(tensor) if recompute else tensor
        if type(packed) is torch.Tensor:
            storages[packed.untyped_storage().data_ptr()] = packed.untyped_storage().nbytes()
        return packed

    monkeypatch.setattr(module, "_pack", pack)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(3)  # the same dropout draws both times
    with recomputing():
        logits = model(input_ids=ids, position_ids=positions).logits
    (logits * torch.linspace(-1, 1, logits.size(-1))).sum().backward()
    return sum(storages.values()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_recomputed_activations_give_the_same_gradients_bit_for_bit_and_keep_less(monkeypatch):
    model = _lora_llama()
    assert use_recomputed_norms(model) == 5  # two per block and the final one
    kept_before, grads_before = _saved_bytes_and_grads(model, False, monkeypatch)
    kept_after, grads_after = _saved_bytes_and_grads(model, True, monkeypatch)
def test_only_tensors_registered_inside_and_unchanged_since_are_recomputed():
    calls = []

    def doubled(x):
        calls.append(1)
        return x * 2

    x = torch.randn(5, requires_grad=True)
    y = x * 2
    register(y, doubled, x)  # outside recomputing(): nothing
    with recomputing():
        changed = x * 2
        register(changed, doubled, x)
        with torch.no_grad():
            changed.add_(1)  # changed after it was registered: the recipe would be wrong, keep the tensor
        kept = (changed * changed).sum()
        same = x * 2
        register(same, doubled, x)
        recomputed = (same * same).sum()
    kept.backward()
    assert calls == [] and torch.equal(x.grad, 4 * (2 * x.detach() + 1))
    x.grad = None
    recomputed.backward()
    assert calls and torch.equal(x.grad, 8 * x.detach())


@pytest.mark.parametrize("name", RMS_NORMS)
def test_each_listed_norm_computes_what_the_recomputed_forward_repeats(name):
    import transformers

    module = name[: -len("RMSNorm")].lower()
    cls = getattr(getattr(transformers.models, module), f"modeling_{module}").__dict__[name]
    body = inspect.getsource(cls.forward).replace(" ", "")
    assert ("variance=hidden_states.pow(2).mean(-1,keepdim=True)\n"
            "hidden_states=hidden_states*torch.rsqrt(variance+self.variance_epsilon)\n"
            "returnself.weight*hidden_states.to(input_dtype)") in body
