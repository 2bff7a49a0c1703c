"""`llmctl pretrain pairs`: the (input -> target) pairs pretraining makes from text, and each target's loss."""

from __future__ import annotations

import math

import pytest
import torch


TEXT = "Every effort moves you forward"
# The tiny test tokenizer splits this into 29 tokens (mostly characters: it learned few merges).
N_TOKENS = 29


def test_pairs_cover_every_target_once():
    from llmctl.inspect.pairs import make_pairs

    pairs = make_pairs(6, context=2)  # samples [0 1 2] [2 3 4] [4 5], as pretraining cuts a stream
    assert [(p.sample, p.start, p.target) for p in pairs] == [
        (0, 0, 1), (0, 0, 2), (1, 2, 3), (1, 2, 4), (2, 4, 5)]
    assert [p.target for p in make_pairs(10, context=3)] == list(range(1, 10))
    assert len(make_pairs(10, context=100)) == 9 and {p.start for p in make_pairs(10, context=100)} == {0}


def test_every_prefix_predicts_the_next_token_with_its_loss(cli, tiny_base_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    r = cli("pretrain", "pairs", "--tokenizer", str(tiny_base_model), "--json", TEXT)
    assert r.code == 0, r.err
    doc = r.json()
    ids = AutoTokenizer.from_pretrained(tiny_base_model)(TEXT)["input_ids"]
    assert len(ids) == N_TOKENS and doc["tokens"] == N_TOKENS
    assert doc["pair_count"] == N_TOKENS - 1 and doc["samples"] == 1 and doc["context"] == N_TOKENS - 1
    for i, pair in enumerate(doc["pairs"], 1):
        assert pair["input_ids"] == ids[:i] and pair["target_id"] == ids[i]
    assert "".join(doc["pairs"][-1]["input"]) + doc["pairs"][-1]["target"] == TEXT
    model = AutoModelForCausalLM.from_pretrained(tiny_base_model).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]])).logits[0]
    losses = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none")
    assert [p["loss"] for p in doc["pairs"]] == pytest.approx(losses.tolist(), abs=1e-5)
    assert [p["prob"] for p in doc["pairs"]] == pytest.approx(torch.exp(-losses).tolist(), abs=1e-6)
    assert doc["mean_loss"] == pytest.approx(losses.mean().item(), abs=1e-5)
    assert doc["perplexity"] == pytest.approx(math.exp(doc["mean_loss"]))


def test_context_cuts_the_text_into_samples(cli, tiny_base_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    doc = cli("pretrain", "pairs", "--tokenizer", str(tiny_base_model), "--context", "8", "--json", TEXT).json()
    assert doc["samples"] == math.ceil((N_TOKENS - 1) / 8) == 4 and doc["pair_count"] == N_TOKENS - 1
    assert max(len(p["input_ids"]) for p in doc["pairs"]) == 8
    ninth = doc["pairs"][8]  # the first pair of the second sample starts again from one token
    assert ninth["sample"] == 1 and len(ninth["input_ids"]) == 1
    ids = AutoTokenizer.from_pretrained(tiny_base_model)(TEXT)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(tiny_base_model).eval()
    with torch.no_grad():  # the second sample's loss sees only that sample's tokens
        logits = model(torch.tensor([ids[8:16]])).logits[0]
    losses = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[9:17]), reduction="none")
    assert [p["loss"] for p in doc["pairs"][8:16]] == pytest.approx(losses.tolist(), abs=1e-5)


def test_table_for_people(cli, tiny_base_model):
    r = cli("pretrain", "pairs", "--tokenizer", str(tiny_base_model), "--context", "4", "Every effort")
    assert r.code == 0, r.err
    assert "training pairs" in r.out and "→ target" in r.out and "loss" in r.out
    assert "11 pairs from 12 tokens in 3 samples of up to 5 tokens" in r.out and "mean loss" in r.out


def test_a_run_with_only_its_tokenizer(cli, tmp_path, tiny_base_model):
    from transformers import AutoTokenizer

    run = tmp_path / "run"
    AutoTokenizer.from_pretrained(tiny_base_model).save_pretrained(run / "data" / "tokenizer")
    doc = cli("pretrain", "pairs", "--tokenizer", str(run), "--json", TEXT).json()
    assert doc["pair_count"] == N_TOKENS - 1 and doc["loss_from"] is None
    assert all(p["loss"] is None for p in doc["pairs"]) and "no trained model yet" in doc["notes"][0]


def test_no_loss_reads_no_weights(cli, tiny_base_model, monkeypatch):
    import llmctl.inspect.pairs as pairs

    monkeypatch.setattr(pairs, "load_inspected", lambda *a, **k: pytest.fail("loaded weights"))
    doc = cli("pretrain", "pairs", "--tokenizer", str(tiny_base_model), "--no-loss", "--json", TEXT).json()
    assert doc["pair_count"] == N_TOKENS - 1 and doc["mean_loss"] is None


@pytest.mark.parametrize("args, message", [
    (("pretrain", "pairs", ""), "empty text"),
    (("pretrain", "pairs", "--context", "0", "hi"), "Invalid value for '--context'"),
    (("pretrain", "pairs", "--tokenizer", "openai:gpt-4o-mini", "hi"), "is a remote (openai) model"),
])
def test_bad_input(cli, args, message):
    r = cli(*args)
    assert r.code == 2 and message in r.err and r.out == ""


def test_too_short_or_too_long(cli, tiny_chat_model):
    short = cli("pretrain", "pairs", "--tokenizer", str(tiny_chat_model), "H")
    assert short.code == 2 and "the text is 1 token; a training pair needs two" in short.err
    long = cli("pretrain", "pairs", "--tokenizer", str(tiny_chat_model), "--context", "200", TEXT)
    assert long.code == 2 and "--context 200 is longer than" in long.err and "context of 128" in long.err


def test_pretrain_itself_still_needs_data(cli):
    r = cli("pretrain", "--max-steps", "1")
    assert r.code == 2 and "no training data" in r.err
