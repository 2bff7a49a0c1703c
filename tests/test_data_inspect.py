"""`llmctl data inspect`: formats detected, length statistics, duplicates, and every planted problem
reported with its line."""

from __future__ import annotations

import json

import pytest

from llmctl.data.inspect import inspect_file
from tests.cli_helpers import llmctl

GOOD = {"instruction": "Name three primary colours.", "input": "", "output": "Red, yellow and blue."}
PLANTED = [  # (line content, the problem expected on that line or None)
    (json.dumps(GOOD), None),
    ('{"instruction": "Broken JSON", "output": ', "not valid JSON"),
    (json.dumps({"instruction": "Say hi.", "input": ""}), "missing field 'output'"),
    (json.dumps({"instruction": "  ", "output": "x"}), "field 'instruction' is empty"),
    (json.dumps({"instruction": "Count to three.", "output": 123}), "field 'output' is int, not a string"),
    (json.dumps(["a", "list"]), "expected a JSON object, got list"),
    ("", None),  # a blank line is not a row
    (json.dumps({"instruction": "NAME three primary   colours.", "input": "", "output": "Red, yellow and blue."}), None),
    (json.dumps({"instruction": "Name three primary colours, please.", "output": "Blue, red, yellow."}), None),
    (json.dumps({"instruction": "Translate 'cat' into French.", "input": 5, "output": "chat"}), "field 'input' is int"),
]


def planted_file(tmp_path):
    path = tmp_path / "planted.jsonl"
    path.write_text("\n".join(line for line, _ in PLANTED) + "\n")
    return path


def test_every_planted_problem_is_reported_with_its_line(tmp_path):
    doc = inspect_file(planted_file(tmp_path))
    assert doc["format"] == "alpaca" and doc["rows"] == 9
    expected = [(number, problem) for number, (_, problem) in enumerate(PLANTED, 1) if problem]
    assert [p["line"] for p in doc["problems"]] == [line for line, _ in expected]
    for (line, wanted), got in zip(expected, doc["problems"]):
        assert wanted in got["problem"], (line, got)
    assert "looks like prompts" in doc["problems"][1]["problem"]  # an instruction without output: a prompt row
    dup = doc["duplicates"]
    assert dup["exact"] == 1 and dup["exact_groups"] == [[1, 8]]  # same texts apart from case and spacing
    assert {"lines": [1, 9], "similarity": 0.889} in dup["near_pairs"]  # LCS 4 of 4 and 5 words: F = 8/9
    stats = doc["fields"]["instruction"]
    assert stats["count"] == 7 and stats["words"]["min"] == 0 and stats["words"]["max"] == 5
    assert doc["examples"][0] == {"line": 1, "fields": GOOD}
    assert [e["line"] for e in doc["examples"]] == [1, 8, 9]  # rows without problems


def test_cli_table_json_and_strict(capsys, monkeypatch, tmp_path):
    path = planted_file(tmp_path)
    shown = llmctl(capsys, monkeypatch, "data", "inspect", str(path))
    assert shown.code == 0
    assert "alpaca, 9 rows" in shown.out and "6 problems" in shown.out and "same row on lines 1, 8" in shown.out
    assert "not valid JSON" in shown.out and "lines 1 and 9" in shown.out
    strict = llmctl(capsys, monkeypatch, "data", "inspect", str(path), "--strict", "--json")
    assert strict.code == 2 and "6 problems" in strict.err and len(strict.json()["problems"]) == 6
    clean = tmp_path / "clean.jsonl"
    clean.write_text(json.dumps(GOOD) + "\n")
    assert llmctl(capsys, monkeypatch, "data", "inspect", str(clean), "--strict").code == 0
    missing = llmctl(capsys, monkeypatch, "data", "inspect", "nope.jsonl")
    assert missing.code == 2 and "nope.jsonl: no such file" in missing.err


@pytest.mark.parametrize("rows, fmt, problem", [
    ([{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
      {"messages": [{"role": "user", "content": "Hi"}]}], "chat", "must be the assistant's"),
    ([{"prompt": "2+2=", "completion": "4"}, {"prompt": "3+3=", "completion": ""}], "prompt-completion",
     "field 'completion' is empty"),
    ([{"text": "Once upon a time."}, {"text": None}], "text", "field 'text' is NoneType"),
    ([{"prompt": "Pick one.", "chosen": "A, because...", "rejected": "B"},
      {"prompt": "Again.", "chosen": "Same answer.", "rejected": "Same  answer. "}], "preference", "'chosen' and 'rejected' are the same"),
    ([{"prompt": "Tell me a joke."}, {"question": ""}], "prompts", "no prompt found"),
    ([{"instruction": "Add.", "instances": [{"input": "1 2", "output": "3"}]},
      {"instruction": "Sub.", "instances": []}], "alpaca-seed", "'instances' must be a non-empty list"),
])
def test_formats_and_their_problems(tmp_path, rows, fmt, problem):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    doc = inspect_file(path)
    assert doc["format"] == fmt
    assert [p["line"] for p in doc["problems"]] == [2] and problem in doc["problems"][0]["problem"]


def test_token_lengths_with_a_model_tokenizer(tmp_path, tiny_chat_model):
    from transformers import AutoTokenizer

    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "The capital of France?"},
                                             {"role": "assistant", "content": "Paris, France."}]}) + "\n")
    doc = inspect_file(path, model_ref=str(tiny_chat_model))
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model)
    expected = len(tokenizer("Paris, France.", add_special_tokens=False)["input_ids"])
    assert doc["fields"]["assistant"]["tokens"]["max"] == expected and doc["fields"]["user"]["words"]["max"] == 4
