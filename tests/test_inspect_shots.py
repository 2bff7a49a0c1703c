"""`llmctl prompt --shots FILE --compare`: zero-shot and few-shot answers and the probability each
prompt gives the expected first token, checked against a direct forward pass."""

from __future__ import annotations

import pytest
import torch

from tests.cli_helpers import write_jsonl
from tests.fake_openai import fake_openai_fixture  # noqa: F401 (the fake_openai fixture)

SHOTS = [{"input": "big", "output": "small"}, {"input": "fast", "output": "slow"}]


def next_token_probs(model_dir, prompt: str, special: bool) -> torch.Tensor:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        ids = tokenizer(prompt, add_special_tokens=special)["input_ids"]
        return torch.softmax(model(torch.tensor([ids])).logits[0, -1], dim=-1)


@pytest.mark.parametrize("model_fixture, mode", [("tiny_chat_model", "chat"), ("tiny_base_model", "completion")])
def test_both_answers_and_the_expected_tokens_probability(cli, tmp_path, request, model_fixture, mode):
    from transformers import AutoTokenizer

    from llmctl.inspect.distribution import token_text

    model_dir = request.getfixturevalue(model_fixture)
    shots = write_jsonl(tmp_path / "shots.jsonl", SHOTS)
    r = cli("prompt", "-m", str(model_dir), "-t", "0", "--max-tokens", "3", "--shots", str(shots), "--compare",
            "--json", "tall")
    assert r.code == 0, r.err
    doc = r.json()
    zero, few = doc["zero_shot"], doc["few_shot"]
    assert doc["shots"] == 2 and zero["rendered_prompt"]["mode"] == few["rendered_prompt"]["mode"] == mode
    assert "small" not in zero["rendered_prompt"]["text"] and "small" in few["rendered_prompt"]["text"]
    # Each answer is what `prompt` alone gives for that prompt.
    alone = cli("prompt", "-m", str(model_dir), "-t", "0", "--max-tokens", "3", "--shots", str(shots), "--json",
                "--no-log", "tall").json()
    assert few["text"] == alone["text"]
    expected = doc["expected_first_token"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert expected["token"] == token_text(tokenizer, expected["id"])
    special = mode == "completion"
    p_few = next_token_probs(model_dir, few["rendered_prompt"]["text"], special)
    p_zero = next_token_probs(model_dir, zero["rendered_prompt"]["text"], special)
    # Greedy: the few-shot answer's first token is the likeliest one after the few-shot prompt.
    assert expected["id"] == int(p_few.argmax()) and few["expected_first_token_rank"] == 1
    assert few["expected_first_token_prob"] == pytest.approx(float(p_few[expected["id"]]), abs=1e-6)
    assert zero["expected_first_token_prob"] == pytest.approx(float(p_zero[expected["id"]]), abs=1e-6)
    assert zero["expected_first_token_rank"] == int((p_zero > p_zero[expected["id"]]).sum()) + 1
    assert cli("logs", "--json").json() == []  # a comparison is an inspection: nothing logged


def test_for_people(cli, tmp_path, tiny_chat_model):
    shots = write_jsonl(tmp_path / "shots.jsonl", SHOTS)
    r = cli("prompt", "-m", str(tiny_chat_model), "-t", "0", "--max-tokens", "3", "--shots", str(shots), "--compare",
            "tall")
    assert r.code == 0, r.err
    assert r.out.startswith("zero-shot: ") and "few-shot (2 examples): " in r.out
    assert "expected first token" in r.out and "rank" in r.out


def test_compare_needs_shots(cli, tiny_chat_model):
    r = cli("prompt", "-m", str(tiny_chat_model), "--compare", "tall")
    assert r.code == 2 and "--compare needs few-shot examples" in r.err and r.out == ""


def test_a_remote_model_gives_answers_without_probabilities(cli, tmp_path, fake_openai):
    shots = write_jsonl(tmp_path / "shots.jsonl", SHOTS)
    assert cli("models", "add", "echo", "openai:fake-model", "--base-url", fake_openai.url).code == 0
    doc = cli("prompt", "-m", "echo", "--shots", str(shots), "--compare", "--json", "tall").json()
    assert doc["zero_shot"]["text"] == doc["few_shot"]["text"] == "Echo: tall"
    assert doc["expected_first_token"] is None and doc["few_shot"]["expected_first_token_prob"] is None
    assert "need a local model" in doc["note"]
