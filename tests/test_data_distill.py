"""`llmctl data distill`: a teacher on 127.0.0.1 answers a prompts file; chat and Alpaca output, resume,
failures counted and retried, answers cut off by --max-tokens."""

from __future__ import annotations

import json

from llmctl.finetune.data import load_examples
from tests.cli_helpers import llmctl
from tests.fake_openai import fake_openai_fixture  # noqa: F401

PROMPTS = [{"prompt": "What is two plus two?", "id": "p1"},
           {"question": "Name a primary colour."},
           {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]},
           {"instruction": "Reverse the word.", "input": "stressed", "id": "alp"}]
ALPACA = [{"instruction": "Reverse the word.", "input": "stressed"}, {"instruction": "Spell the number four."},
          {"instruction": "Name the opposite of cold.", "input": ""}]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def distill(capsys, monkeypatch, url, *args):
    assert llmctl(capsys, monkeypatch, "models", "add", "teacher", "openai:fake-model", "--base-url", url,
                  "--replace").code == 0
    return llmctl(capsys, monkeypatch, "data", "distill", "--teacher", "teacher", *args)


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_chat_rows_with_provenance_and_a_retried_failure(capsys, monkeypatch, fake_openai, tmp_path):
    prompts, out = write(tmp_path / "prompts.jsonl", PROMPTS), tmp_path / "sft.jsonl"
    fake_openai.faults.append(("status", 400))  # the first request fails for good (400 is not retried)
    args = ["--prompts", str(prompts), "--out", str(out), "--workers", "1", "--system", "You answer well.",
            "--temperature", "0.2", "--json"]
    first = distill(capsys, monkeypatch, fake_openai.url, *args)
    assert first.code == 0, first.err
    report = first.json()
    assert (report["written"], report["failed"], report["complete"]) == (3, 1, False)
    assert "prompt p1" in report["errors"][0] and "400" in report["errors"][0]
    rows = read(out)
    assert [r["meta"]["prompt_id"] for r in rows] == ["2", "3", "alp"]
    assert rows[0]["messages"] == [{"role": "system", "content": "You answer well."},
                                   {"role": "user", "content": "Name a primary colour."},
                                   {"role": "assistant", "content": "Echo: Name a primary colour."}]
    assert rows[1]["messages"][0] == {"role": "system", "content": "Be brief."}  # its own system turn is kept
    assert rows[2]["messages"][1]["content"] == "Reverse the word.\n\nstressed"
    meta = rows[0]["meta"]
    assert meta["teacher"] == "teacher" and meta["params"]["temperature"] == 0.2 and meta["finish_reason"] == "stop"

    sent = len(fake_openai.requests)
    second = distill(capsys, monkeypatch, fake_openai.url, *args)
    assert second.code == 0 and (second.json()["resumed"], second.json()["written"]) == (3, 1)
    assert len(fake_openai.requests) == sent + 1  # only the prompt that failed is asked again
    assert read(out)[3]["messages"][-1]["content"] == "Echo: What is two plus two?"
    examples, data_report = load_examples([out])
    assert data_report.format == "chat" and len(examples) == 4

    table = distill(capsys, monkeypatch, fake_openai.url, "--prompts", str(prompts), "--out", str(out))
    assert table.code == 0 and "4 of 4 prompts answered" in table.out and len(fake_openai.requests) == sent + 1


def test_alpaca_output_and_answers_cut_off(capsys, monkeypatch, fake_openai, tmp_path):
    prompts, out = write(tmp_path / "alpaca.jsonl", ALPACA), tmp_path / "out.jsonl"
    fake_openai.responder = lambda body: "one two three four five"
    cut = distill(capsys, monkeypatch, fake_openai.url, "--prompts", str(prompts), "--out", str(out), "--format",
                  "alpaca", "--max-tokens", "3", "--json")
    assert cut.code == 0 and (cut.json()["truncated"], cut.json()["written"]) == (3, 0)
    assert not read(out)  # an answer cut off is not written unless asked
    kept = distill(capsys, monkeypatch, fake_openai.url, "--prompts", str(prompts), "--out", str(out), "--format",
                   "alpaca", "--max-tokens", "3", "--keep-truncated", "--json")
    assert kept.code == 0 and kept.json()["written"] == 3
    # Concurrent requests: rows are appended in the order the answers arrive, not the prompts' order.
    rows = {row["instruction"]: row for row in read(out)}
    reverse = rows["Reverse the word."]
    assert reverse == {"instruction": "Reverse the word.", "input": "stressed", "output": "one two three",
                       "meta": reverse["meta"]} and rows["Spell the number four."]["input"] == ""
    assert reverse["meta"]["finish_reason"] == "length" and reverse["meta"]["params"]["max_tokens"] == 3
    examples, data_report = load_examples([out])
    assert data_report.format == "alpaca" and len(examples) == 3


def test_bad_input_and_a_teacher_that_always_fails(capsys, monkeypatch, fake_openai, tmp_path):
    prompts = write(tmp_path / "p.jsonl", PROMPTS)
    result = distill(capsys, monkeypatch, fake_openai.url, "--prompts", str(prompts), "--out", "o.jsonl",
                     "--format", "alpaca")
    assert result.code == 2 and "prompt p1 is not an Alpaca row" in result.err
    result = distill(capsys, monkeypatch, fake_openai.url, "--prompts", "missing.jsonl", "--out", "o.jsonl")
    assert result.code == 2 and "no such prompts file" in result.err
    other = write(tmp_path / "other.jsonl", [{"text": "not a distill row"}])
    result = distill(capsys, monkeypatch, fake_openai.url, "--prompts", str(prompts), "--out", str(other))
    assert result.code == 2 and "other.jsonl:1: not a row this command writes" in result.err
    fake_openai.faults.extend([("status", 404)] * 16)
    result = distill(capsys, monkeypatch, fake_openai.url, "--prompts", str(prompts), "--out", "o.jsonl")
    assert result.code == 4 and "failed on every request" in result.err and "Traceback" not in result.err
