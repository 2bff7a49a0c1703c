"""`llmctl eval perplexity` and `llmctl eval exact` on tiny local models."""

from __future__ import annotations

import json
import math

import torch

from llmctl.evaluate.exact import normalise
from llmctl.evaluate.perplexity import document_nll
from tests.cli_helpers import llmctl


def test_sliding_window_scores_every_token_once(tiny_base_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base_model).eval()
    ids = list(range(5, 105))
    with torch.no_grad():
        direct = torch.nn.functional.cross_entropy(model(torch.tensor([ids])).logits[0, :-1], torch.tensor(ids[1:]),
                                                   reduction="sum")
    whole, n = document_nll(model, ids, 512, "cpu")
    assert n == 99 and abs(whole - float(direct)) < 1e-3
    windowed, n = document_nll(model, ids, 40, "cpu")
    assert n == 99 and windowed != whole  # less left context, every token still scored exactly once


def test_perplexity_command(capsys, monkeypatch, tmp_path, tiny_chat_model):
    text = tmp_path / "t.txt"
    text.write_text("The Eiffel Tower is located in Paris, France.\n" * 20)
    r = llmctl(capsys, monkeypatch, "eval", "perplexity", "-m", str(tiny_chat_model), "--data", str(text),
               "--window", "64", "--json")
    assert r.code == 0, r.err
    doc = r.json()
    assert doc["window"] == 64 and doc["tokens"] > 100
    assert math.isclose(doc["perplexity"], math.exp(doc["loss"]), rel_tol=1e-3)
    assert doc["bits_per_char"] == doc["bits_per_byte"]  # ASCII text: one byte per character
    human = llmctl(capsys, monkeypatch, "eval", "perplexity", "-m", str(tiny_chat_model), "--data", str(text))
    assert "bits/char" in human.out
    remote = llmctl(capsys, monkeypatch, "eval", "perplexity", "-m", "openai:gpt-4o", "--data", str(text))
    assert remote.code == 2 and "needs a local model" in remote.err


def test_exact_match_command(capsys, monkeypatch, tmp_path, tiny_chat_model):
    assert normalise("The  Paris!") == "paris"
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "Capital of France?", "answer": ["Paris", "paris, france"]}) + "\n")
    saved = tmp_path / "answers.jsonl"
    r = llmctl(capsys, monkeypatch, "eval", "exact", "-m", str(tiny_chat_model), "--data", str(qa), "--max-tokens", "3",
               "--save", str(saved), "--json")
    assert r.code == 0, r.err
    doc = r.json()
    assert doc["questions"] == 1 and doc["exact_match"] in (0.0, 1.0)
    assert json.loads(saved.read_text())["question"] == "Capital of France?"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "no answer"}\n')
    r = llmctl(capsys, monkeypatch, "eval", "exact", "-m", str(tiny_chat_model), "--data", str(bad))
    assert r.code == 2 and "bad.jsonl:1: needs 'question'" in r.err
