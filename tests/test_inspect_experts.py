"""`llmctl inspect experts` on a tiny mixture-of-experts GPT: the table against the router's own top-k."""

from __future__ import annotations

import pytest
import torch

from tests.inspect_helpers import build_moe_model

TEXT = "def add(a, b):"


@pytest.fixture(scope="module")
def moe_model(tmp_path_factory):
    return build_moe_model(tmp_path_factory.mktemp("tiny-moe"), experts=4, per_token=2)


def routers_own_choice(model_dir, text: str) -> list[list[list[int]]]:
    """What each layer's router module itself picks ([layer][token] -> experts), caught by hooks."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = AutoTokenizer.from_pretrained(model_dir)(text)["input_ids"]
    caught: dict[int, list] = {}

    def catch(index):
        def hook(module, args, out):  # the router returns (logits, weights of the chosen, chosen indices)
            caught[index] = out[2].tolist()
        return hook

    for i, layer in enumerate(model.model.layers):
        layer.mlp.gate.register_forward_hook(catch(i))
    with torch.no_grad():
        model(torch.tensor([ids]))
    return [caught[i] for i in range(len(model.model.layers))], len(ids)


def test_routing_table_is_the_routers_own_top_k(cli, moe_model):
    r = cli("inspect", "experts", "-m", str(moe_model), "--json", TEXT)
    assert r.code == 0, r.err
    doc = r.json()
    expected, n_tokens = routers_own_choice(moe_model, TEXT)
    assert doc["experts"] == 4 and doc["top_k"] == 2 and len(doc["tokens"]) == n_tokens
    assert [[route["experts"] for route in layer["routes"]] for layer in doc["layers"]] == expected
    for layer in doc["layers"]:
        assert sum(layer["load"]) == n_tokens * 2  # every token goes to exactly two experts
        for route in layer["routes"]:
            assert sum(route["router_probs"]) == pytest.approx(1.0, abs=1e-5)
            assert route["probs"] == sorted(route["probs"], reverse=True)
            others = [p for e, p in enumerate(route["router_probs"]) if e not in route["experts"]]
            assert min(route["probs"]) >= max(others)


def test_table_and_heat_map(cli, moe_model, tmp_path):
    png = tmp_path / "experts.png"
    r = cli("inspect", "experts", "-m", str(moe_model), "--png", str(png), TEXT)
    assert r.code == 0, r.err
    assert "top 2 of 4" in r.out and "layer 0" in r.out and "layer 1" in r.out and "tokens per expert" in r.out
    import matplotlib.image

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(png).shape
    assert height > 200 and width > 300


def test_a_dense_model_has_no_experts(cli, tiny_chat_model):
    r = cli("inspect", "experts", "-m", str(tiny_chat_model), "hi")
    assert r.code == 2 and "is a dense model" in r.err and len(r.err.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (("inspect", "experts", ""), "empty text"),
    (("inspect", "experts", "-m", "openai:gpt-4o-mini", "hi"), "expert routing: 'openai:gpt-4o-mini' is a remote (openai) model"),
])
def test_bad_input(cli, args, message):
    r = cli(*args)
    assert r.code == 2 and message in r.err and r.out == ""
