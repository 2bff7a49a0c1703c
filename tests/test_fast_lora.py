"""LoRA's fused training function (finetune/fast_lora.py): the same outputs and gradients as peft's own
forward, dropout that drops each element with probability p and scales the rest by 1 / (1 - p), peft's
own forward wherever the fused one is not made for, and adapters peft loads as its own."""

from __future__ import annotations

import math

import pytest
import torch

from llmctl.finetune.fast_lora import FusedLoraLinear, dropped_positions, use_fast_lora

FUSED = FusedLoraLinear.__name__ + "Backward"


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config)


def _lora(model, dropout: float, **extra):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)  # init_lora_weights=False: B is not zero, so A has a gradient from the start
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear",
                        init_lora_weights=False, **extra)
    return get_peft_model(model, config)


def _paths(model) -> list[str]:
    """After a forward: which function made each lora.Linear's output (grad_fn names, in call order)."""
    from peft.tuners.lora.layer import Linear

    seen = []
    for module in model.modules():
        if isinstance(module, Linear):
            module.register_forward_hook(lambda m, args, out: seen.append(type(out.grad_fn).__name__
                                                                          if out.grad_fn else "no grad"))
    return seen


def _step(model, embeds: torch.Tensor):
    """Logits, and the gradients of the LoRA weights and of the input embeddings, for a fixed loss."""
    model.zero_grad(set_to_none=True)
    embeds = embeds.detach().requires_grad_()
    logits = model(inputs_embeds=embeds).logits
    (logits * torch.linspace(-1, 1, logits.size(-1))).sum().backward()
    lora = {n: p.grad.clone() for n, p in model.named_parameters() if "lora_" in n}
    return logits.detach(), lora, embeds.grad


def test_without_dropout_outputs_and_gradients_equal_peft():
    model = _lora(_llama(), dropout=0.0).train()
    embeds = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(2))
    theirs = _step(model, embeds)
    assert use_fast_lora(model) == 14  # 7 linear layers in each of 2 blocks
    paths = _paths(model)
    ours = _step(model, embeds)
    assert paths == [FUSED] * 14
    torch.testing.assert_close(ours[0], theirs[0], atol=1e-6, rtol=1e-6)
    assert ours[1].keys() == theirs[1].keys() and len(ours[1]) == 28
    for name in ours[1]:
        torch.testing.assert_close(ours[1][name], theirs[1][name], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours[2], theirs[2], atol=1e-6, rtol=1e-5)


def _one_layer(p: float, features: int = 24, out: int = 40, rank: int = 4):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    holder = torch.nn.Sequential(torch.nn.Linear(features, out))
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=p, target_modules=["0"], init_lora_weights=False)
    model = get_peft_model(holder, config).train()
    use_fast_lora(model)
    return model, model.base_model.model[0]


def test_with_dropout_gradients_equal_a_reference_with_the_same_mask():
    p = 0.3
    model, layer = _one_layer(p)
    x = torch.randn(3, 11, 24, generator=torch.Generator().manual_seed(4), requires_grad=True)
    grad_out = torch.randn(3, 11, 40, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(7)
    y = model(x)
    assert type(y.grad_fn).__name__ == FUSED
    y.backward(grad_out)
    ours = y.detach(), x.grad.clone(), layer.lora_A["default"].weight.grad, layer.lora_B["default"].weight.grad

    torch.manual_seed(7)  # the same draw: the same dropped elements
    drops = dropped_positions(x.numel(), p, x.device)
    keep = torch.ones(x.numel()).index_fill_(0, drops, 0).view(x.shape)
    x_ref = x.detach().clone().requires_grad_()
    a = layer.lora_A["default"].weight.detach().clone().requires_grad_()
    b = layer.lora_B["default"].weight.detach().clone().requires_grad_()
    base = layer.base_layer
    y_ref = base(x_ref) + layer.scaling["default"] * (x_ref * keep / (1 - p)) @ a.t() @ b.t()
    y_ref.backward(grad_out)
    torch.testing.assert_close(ours[0], y_ref.detach(), atol=1e-6, rtol=1e-6)
    for got, want in zip(ours[1:], (x_ref.grad, a.grad, b.grad)):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert 0 < len(drops) < x.numel()


def test_a_dropout_mask_as_gpus_draw_it_trains_exactly_as_the_same_positions(monkeypatch):
    import llmctl.finetune.fast_lora as fast

    p = 0.3
    model, layer = _one_layer(p)
    x = torch.randn(3, 11, 24, generator=torch.Generator().manual_seed(4))
    grad_out = torch.randn(3, 11, 40, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(7)
    positions = dropped_positions(x.numel(), p, x.device)
    mask = torch.zeros(x.numel(), dtype=torch.bool)
    mask[positions] = True
    results = []
    for drops in (positions, mask):
        monkeypatch.setattr(fast, "draw_dropout", lambda count, p, device, drops=drops: drops)
        model.zero_grad(set_to_none=True)
        x_in = x.clone().requires_grad_()
        y = model(x_in)
        y.backward(grad_out)
        results.append((y.detach(), x_in.grad, layer.lora_A["default"].weight.grad, layer.lora_B["default"].weight.grad))
    for ours, theirs in zip(*results):
        assert torch.equal(ours, theirs)


def test_dropout_is_drawn_as_positions_on_the_cpu_and_as_a_mask_elsewhere():
    from llmctl.finetune.fast_lora import draw_dropout

    assert draw_dropout(100, 0.5, torch.device("cpu")).dtype == torch.int64
    mask = draw_dropout(10_000, 0.25, torch.device("meta"))  # any other device: one draw per element
    assert mask.dtype == torch.bool and mask.shape == (10_000,)


@pytest.mark.parametrize("p", [0.05, 0.5])
def test_dropout_drops_a_share_p_and_scales_the_rest(p):
    # identity A and B, a zero base, scaling 1: the layer's output is dropout(x) itself
    model, layer = _one_layer(p, features=16, out=16, rank=16)
    with torch.no_grad():
        layer.base_layer.weight.zero_()
        layer.base_layer.bias.zero_()
        layer.lora_A["default"].weight.copy_(torch.eye(16))
        layer.lora_B["default"].weight.copy_(torch.eye(16))
    layer.scaling["default"] = 1.0
    x = torch.rand(40_000, 16, generator=torch.Generator().manual_seed(6)) + 0.5  # never zero
    torch.manual_seed(8)
    y = model(x).detach()
    dropped = y == 0
    n = x.numel()
    assert abs(float(dropped.float().mean()) - p) < 5 * math.sqrt(p * (1 - p) / n)  # 5 standard deviations
    torch.testing.assert_close(y[~dropped], x[~dropped] / (1 - p), atol=0, rtol=1e-6)
    # rows and columns drop alike: every column's share is near p too (no position is favoured)
    per_column = dropped.float().mean(0)
    assert float((per_column - p).abs().max()) < 5 * math.sqrt(p * (1 - p) / x.size(0))


def test_dropped_positions_are_sorted_distinct_and_inside():
    torch.manual_seed(9)
    for count, p in ((0, 0.5), (1, 0.5), (7, 0.05), (100_000, 0.01), (3, 0.999)):
        drops = dropped_positions(count, p, torch.device("cpu"))
        assert drops.dtype == torch.int64
        assert bool((drops[1:] > drops[:-1]).all()) and (len(drops) == 0 or 0 <= int(drops[0]) <= int(drops[-1]) < count)


def test_what_it_is_not_made_for_runs_peft_s_own_forward(tiny_base_model):
    from transformers import AutoModelForCausalLM

    model = _lora(_llama(), dropout=0.1)
    use_fast_lora(model)
    paths = _paths(model)
    ids = torch.tensor([[1, 2, 3, 4]])
    model.eval()  # eval mode: peft (dropout is off there anyway)
    model(ids)
    assert set(paths) == {"AddBackward0"} and len(paths) == 14
    paths.clear()
    model.train()
    with torch.no_grad():  # no gradient: nothing to fuse for
        model(ids)
    assert set(paths) == {"no grad"}
    paths.clear()
    layer = model.base_model.model.model.layers[0].self_attn.q_proj  # peft's model refuses it in training
    layer(torch.randn(1, 4, 32, requires_grad=True), adapter_names=["default"])  # a mixed-adapter batch
    assert paths and FUSED not in paths
    paths.clear()
    with model.disable_adapter():
        model(ids)
    assert FUSED not in paths
    paths.clear()
    model.merge_adapter()
    model(ids)
    assert FUSED not in paths and len(paths) == 14

    dora = _lora(_llama(), dropout=0.0, use_dora=True).train()  # a LoRA variant
    use_fast_lora(dora)
    paths = _paths(dora)
    dora(ids)
    assert FUSED not in paths and len(paths) == 14

    gpt2 = _lora(AutoModelForCausalLM.from_pretrained(tiny_base_model), dropout=0.0).train()  # Conv1D bases
    switched = use_fast_lora(gpt2)
    paths = _paths(gpt2)
    gpt2(ids)
    assert switched > 0 and paths and FUSED not in paths


def test_an_adapter_trained_fused_loads_in_plain_peft_with_the_same_logits(tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file

    model = _lora(_llama(), dropout=0.1).train()
    use_fast_lora(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(10))
    for _ in range(3):
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(tmp_path / "ours")
    plain = _lora(_llama(), dropout=0.1)  # never switched: peft's own layers and files
    plain.save_pretrained(tmp_path / "plain")
    ours_file, plain_file = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("ours", "plain"))
    assert {k: v.shape for k, v in ours_file.items()} == {k: v.shape for k, v in plain_file.items()}
    assert (tmp_path / "ours" / "adapter_config.json").read_text() == (tmp_path / "plain" / "adapter_config.json").read_text()
    loaded = PeftModel.from_pretrained(_llama(), tmp_path / "ours").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model.eval()(ids).logits, atol=0, rtol=0)
        assert not torch.allclose(loaded(ids).logits, _llama()(ids).logits, atol=1e-4)
