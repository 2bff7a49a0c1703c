"""`llmctl inspect attention` on tiny models: weights against an eager forward pass, ranges, heat maps."""

from __future__ import annotations

import pytest
import torch


TEXT = "The capital of France"


def eager_attentions(model_dir, text: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    ids = AutoTokenizer.from_pretrained(model_dir)(text)["input_ids"]
    with torch.no_grad():
        return model(torch.tensor([ids]), output_attentions=True).attentions


@pytest.mark.parametrize("model_fixture", ["tiny_chat_model", "tiny_base_model"])
def test_weights_are_the_models_own(cli, request, model_fixture):
    model_dir = request.getfixturevalue(model_fixture)
    attentions = eager_attentions(model_dir, TEXT)
    one = cli("inspect", "attention", "-m", str(model_dir), "--layer", "0", "--head", "3", "--json", TEXT).json()
    assert one["layer"] == 0 and one["head"] == 3 and one["layers"] == 2 and one["heads"] == 4
    assert torch.allclose(torch.tensor(one["weights"]), attentions[0][0, 3], atol=1e-6)
    mean = cli("inspect", "attention", "-m", str(model_dir), "--json", TEXT).json()
    assert mean["layer"] == 1 and mean["head"] is None  # default: the last layer, all heads averaged
    weights = torch.tensor(mean["weights"])
    assert torch.allclose(weights, attentions[1][0].mean(dim=0), atol=1e-6)
    assert torch.allclose(weights.sum(dim=-1), torch.ones(len(weights)), atol=1e-5)
    assert torch.equal(weights.triu(1), torch.zeros_like(weights))  # no token sees the future


def test_grid_and_heat_map(cli, tiny_chat_model, tmp_path):
    png = tmp_path / "maps" / "attention.png"
    r = cli("inspect", "attention", "-m", str(tiny_chat_model), "--head", "0", "--png", str(png), TEXT)
    assert r.code == 0, r.err
    assert "layer 1 (of 0-1), head 0" in r.out and "most attended" in r.out
    import matplotlib.image

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(png).shape
    assert height > 300 and width > 300


@pytest.mark.parametrize("flags, message", [
    (("--layer", "2"), "--layer 2 is out of range: {m} has 2 layers (0 to 1)"),
    (("--layer", "-1"), "--layer -1 is out of range"),
    (("--head", "4"), "--head 4 is out of range: {m} has 4 heads per layer (0 to 3)"),
])
def test_layer_or_head_out_of_range(cli, tiny_chat_model, flags, message):
    r = cli("inspect", "attention", "-m", str(tiny_chat_model), *flags, TEXT)
    assert r.code == 2 and message.format(m=tiny_chat_model) in r.err
    assert len(r.err.strip().splitlines()) == 1 and r.out == ""


@pytest.mark.parametrize("args, message", [
    (("inspect", "attention", ""), "empty text"),
    (("inspect", "attention", "-m", "openai:gpt-4o-mini", "hi"), "attention maps: 'openai:gpt-4o-mini' is a remote (openai) model"),
    (("inspect", "attention", "--png", "/proc/no/such/dir/a.png", "hi"), "cannot write --png"),
])
def test_bad_input(cli, args, message):
    r = cli(*args)
    assert r.code == 2 and message in r.err and len(r.err.strip().splitlines()) == 1


def test_a_long_text_is_refused(cli, tiny_base_model):
    r = cli("inspect", "attention", "-m", str(tiny_base_model), "x " * 200)
    assert r.code == 2 and "attention maps are for short texts" in r.err
