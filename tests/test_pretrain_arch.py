"""Architecture options stay plain transformers models (QK-norm as Qwen3, tied or untied embeddings), and a
mixture of experts reports its router's balance."""

from __future__ import annotations

import json

import pytest
import torch

from llmctl.pretrain.experts import starved_warning

TINY = ["--tokenizer", "char", "--layers", "2", "--heads", "2", "--width", "32", "--context", "32",
        "--batch-size", "4", "--eval-batches", "1", "--warmup-steps", "2", "--lr", "1e-3", "--optimizer", "adamw"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("arch") / "verses.txt"
    path.write_text("".join(f"ROMEO: line {i} of the play.\nJULIET: answer {i * 7 % 13}.\n" for i in range(600)))
    return path


@pytest.mark.parametrize("flags, architecture, tied", [(["--qk-norm"], "Qwen3ForCausalLM", True),
                                                      (["--qk-norm", "--untied"], "Qwen3ForCausalLM", False),
                                                      (["--untied"], "LlamaForCausalLM", False)])
def test_loads_with_plain_transformers(cli, corpus, tmp_path, flags, architecture, tied):
    out = tmp_path / "gpt"
    r = cli("pretrain", "--data", str(corpus), "--out", str(out), *TINY, *flags, "--max-steps", "2",
            "--no-register", "--json")
    assert r.code == 0, r.err
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == architecture
    same = model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    assert same == tied
    if "--qk-norm" in flags:
        assert model.model.layers[0].self_attn.q_norm.weight.shape == (16,)


@pytest.mark.parametrize("shape", [{}, {"qk_norm": True}, {"experts": 2}])
def test_dropout_drops_while_training_and_is_not_saved(tmp_path, shape):
    """--dropout on a Llama, Qwen3 or Mixtral model drops the embeddings and each block's attention and MLP
    output while training, as GPT-2's dropouts do; in eval mode and once saved, the model is the plain one."""
    from dataclasses import replace

    from transformers import AutoModelForCausalLM

    from llmctl.pretrain.model import GPTConfig, build_model

    config = GPTConfig(layers=2, heads=2, width=32, context=16, dropout=0.3, **shape)
    model, plain = build_model(config, 40, 0, 0), build_model(replace(config, dropout=0.0), 40, 0, 0)
    ids = torch.randint(0, 40, (2, 16), generator=torch.Generator().manual_seed(0))
    inner = model.model
    sites = [inner.embed_tokens] + [m for layer in inner.layers for m in (layer.self_attn.o_proj, layer.mlp)]
    zeros = []
    for site in sites:  # registered after the dropout's hook: sees what the residual stream gets
        site.register_forward_hook(lambda module, args, out: zeros.append(float((out == 0).float().mean())))
    model.train()
    first = model(input_ids=ids).logits
    assert len(zeros) == 5 and all(0.2 < z < 0.4 for z in zeros), zeros
    assert not torch.equal(first, model(input_ids=ids).logits)
    model.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, plain(input_ids=ids).logits)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).train()
    assert loaded.config.attention_dropout == 0.0
    with torch.no_grad():  # nothing of the dropout came along: training mode is deterministic
        assert torch.equal(loaded(input_ids=ids).logits, plain.train()(input_ids=ids).logits)


@pytest.mark.parametrize("value, says", [("1.5", "Invalid value for '--dropout'"), ("1", "--dropout must be in [0, 1)")])
def test_a_dropout_out_of_range_is_a_usage_error(cli, corpus, tmp_path, value, says):
    r = cli("pretrain", "--data", str(corpus), "--out", str(tmp_path / "o"), *TINY, "--dropout", value, "--max-steps", "1")
    assert r.code == 2 and says in r.err and "Traceback" not in r.err


def test_qk_norm_with_experts_is_a_usage_error(cli, corpus, tmp_path):
    r = cli("pretrain", "--data", str(corpus), "--out", str(tmp_path / "o"), *TINY, "--qk-norm", "--experts", "2",
            "--max-steps", "1")
    assert r.code == 2 and "--qk-norm builds a Qwen3 model" in r.err


def test_experts_report_balance_and_share(cli, corpus, tmp_path):
    out = tmp_path / "moe"
    r = cli("pretrain", "--data", str(corpus), "--out", str(out), *TINY, "--experts", "4", "--max-steps", "4",
            "--log-every", "2", "--no-register", "--json")
    assert r.code == 0, r.err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [row for row in rows if "loss" in row]
    for row in train_rows:
        shares = [row[f"expert_share/{e}"] for e in range(4)]
        assert sum(shares) == pytest.approx(1, abs=1e-3) and row["router_aux_loss"] > 0.5
        assert 0 <= row["expert_min_fair"] <= 1 and row["expert_min_at"].startswith("layer ")


def test_a_starved_expert_is_warned_about():
    row = {"step": 40, "expert_min_fair": 0.1, "expert_min_at": "layer 1 expert 3", "router_aux_loss": 1.7}
    assert "layer 1 expert 3 got 10% of its fair share" in starved_warning(row)
    assert starved_warning(dict(row, expert_min_fair=0.5)) is None and starved_warning({"step": 1}) is None
