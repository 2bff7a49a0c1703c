"""`llmctl tokenize` on tiny models: exact ids, the chat prompt's special tokens, errors."""

from __future__ import annotations

import pytest


EIFFEL = "The Eiffel Tower is located in"
# The tiny test tokenizer (tests/tiny_models.py) is trained on a fixed corpus: its ids are stable.
EIFFEL_IDS = [279, 223, 305, 72, 72, 71, 78, 223, 310, 71, 84, 273, 272, 81, 315, 319, 223, 287]


def test_ids_count_and_characters_per_token(cli, tiny_chat_model):
    r = cli("tokenize", "-m", str(tiny_chat_model), "--json", EIFFEL)
    assert r.code == 0, r.err
    doc = r.json()
    assert doc["ids"] == EIFFEL_IDS
    assert doc["count"] == 18 and doc["characters"] == 30
    assert doc["chars_per_token"] == round(30 / 18, 4)
    assert "".join(t["text"] for t in doc["tokens"]) == EIFFEL
    assert doc["special"] == 0 and not doc["chat"]


def test_chat_shows_the_template_and_marks_special_tokens(cli, tiny_chat_model):
    doc = cli("tokenize", "-m", str(tiny_chat_model), "--chat", "--json", "Hi").json()
    assert doc["text"] == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    special = [(t["id"], t["text"]) for t in doc["tokens"] if t["special"]]
    assert special == [(1, "<|im_start|>"), (2, "<|im_end|>"), (1, "<|im_start|>")]
    assert doc["chat"] and doc["special"] == 3 and doc["count"] == len(doc["ids"])


def test_stdin_and_the_table_for_people(cli, tiny_base_model):
    r = cli("tokenize", "-m", str(tiny_base_model), stdin="Every effort\n")
    assert r.code == 0, r.err
    # Without colour, the boundaries are drawn: E│v│e│r│y│ │e│f│f│o│r│t
    assert r.out.splitlines()[0] == "│".join("Every effort")
    assert "ids: [39, 88, 71, 84, 91, 223, 71, 72, 72, 81, 84, 86]" in r.out
    assert "12 tokens · 12 characters · 1.00 characters per token" in r.out


@pytest.mark.parametrize("args, message", [
    (("tokenize", ""), "empty text"),
    (("tokenize", "-m", "openai:gpt-4o-mini", "hi"), "tokenizing: 'openai:gpt-4o-mini' is a remote (openai) model, whose logits, internals and tokenizer stay on its server"),
])
def test_errors_are_one_line_exit_2(cli, args, message):
    r = cli(*args)
    assert r.code == 2 and message in r.err
    assert len(r.err.strip().splitlines()) == 1 and r.out == ""


def test_chat_on_a_model_without_template(cli, tiny_base_model):
    r = cli("tokenize", "-m", str(tiny_base_model), "--chat", "hi")
    assert r.code == 2 and "has no chat template" in r.err
