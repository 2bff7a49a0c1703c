"""`llmctl eval compare`: side-by-side answers, pairwise verdicts asked in both orders (a judge biased to one
position yields ties, not wins), win rates, and a person choosing with `--human`."""

from __future__ import annotations

import json

import pytest

from llmctl.evaluate.compare import PAIRWISE_PROMPT_VERSION, PAIRWISE_SYSTEM, pair_winner, parse_verdict, tally
from llmctl.evaluate.judge import JudgmentError
from tests.cli_helpers import llmctl
from tests.fake_openai import FakeOpenAI


def test_parse_verdict_styles():
    assert parse_verdict('{"winner": "2", "reason": "clearer"}') == {"winner": "2", "reason": "clearer"}
    assert parse_verdict('```json\n{"winner": "Answer 1"}\n```')["winner"] == "1"
    assert parse_verdict("Both are fine. [[tie]]")["winner"] == "tie"
    assert parse_verdict("Reasoning...\n**Winner**: 2")["winner"] == "2"
    with pytest.raises(JudgmentError, match="must be 1, 2 or tie"):
        parse_verdict('{"winner": "3"}')
    with pytest.raises(JudgmentError, match="no verdict"):
        parse_verdict("I cannot decide.")


def test_swap_logic_and_tally():
    assert pair_winner("a", "b", "1", "2") == "a"  # a shown first and second: chosen both times
    assert pair_winner("a", "b", "2", "1") == "b"
    assert pair_winner("a", "b", "1", "1") == "tie"  # always the first position: order bias, not a preference
    assert pair_winner("a", "b", "tie", "2") == "tie"
    rows = [{"verdicts": [{"a": "a", "b": "b", "winner": w}]} for w in ("a", "a", "tie", "b", None)]
    figures = tally(rows, ["a", "b"])
    assert figures["models"]["a"] == {"wins": 2, "losses": 1, "ties": 1, "failed": 1, "win_rate": 0.5}
    assert figures["models"]["b"] == {"wins": 1, "losses": 2, "ties": 1, "failed": 1, "win_rate": 0.25}
    assert figures["pairs"] == [{"a": "a", "b": "b", "a_wins": 2, "b_wins": 1, "ties": 1, "failed": 1}]


@pytest.fixture
def servers(capsys, monkeypatch):
    """Two answering servers (one good, one bad writer) and a judge, registered as good, bad and judge."""
    with FakeOpenAI() as good, FakeOpenAI() as bad, FakeOpenAI() as judge:
        good.responder = lambda body: "a good answer"
        bad.responder = lambda body: "a bad answer"
        for name, server in (("good", good), ("bad", bad), ("judge", judge)):
            r = llmctl(capsys, monkeypatch, "models", "add", name, "openai:fake-model", "--base-url", server.url)
            assert r.code == 0, r.err
        yield judge


def prompts_file(tmp_path, n=3):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(n)))
    return path


def answer_in(body, position):
    text = body["messages"][-1]["content"]
    return text.split(f"[Answer {position}]\n", 1)[1].split("\n\n", 1)[0]


def test_position_biased_judge_gives_ties(capsys, monkeypatch, tmp_path, servers):
    servers.responder = lambda body: '{"winner": "1", "reason": "the first one"}'
    r = llmctl(capsys, monkeypatch, "eval", "compare", "-m", "good", "-m", "bad", "-p", str(prompts_file(tmp_path)),
               "--judge", "judge", "--json")
    assert r.code == 0, r.err
    doc = r.json()
    assert doc["results"]["models"]["good"] == {"wins": 0, "losses": 0, "ties": 3, "failed": 0, "win_rate": 0.0}
    assert doc["judge_prompt_version"] == PAIRWISE_PROMPT_VERSION
    firsts = [answer_in(b, 1) for b in servers.requests]  # each pair asked twice, positions swapped
    assert sorted(firsts) == ["a bad answer"] * 3 + ["a good answer"] * 3
    assert all(b["messages"][0]["content"] == PAIRWISE_SYSTEM and b["temperature"] == 0 for b in servers.requests)


def test_consistent_judge_gives_wins_and_table(capsys, monkeypatch, tmp_path, servers):
    servers.responder = lambda body: json.dumps({"winner": "1" if answer_in(body, 1) == "a good answer" else "2"})
    r = llmctl(capsys, monkeypatch, "eval", "compare", "-m", "good", "-m", "bad", "-p", str(prompts_file(tmp_path)),
               "--judge", "judge", "--save", str(tmp_path / "run"))
    assert r.code == 0, r.err
    assert "a good answer" in r.out and "a bad answer" in r.out and "100.0%" in r.out
    doc = llmctl(capsys, monkeypatch, "eval", "show", str(tmp_path / "run"), "--json").json()
    assert doc["summary"]["results"]["models"]["good"]["win_rate"] == 1.0
    assert doc["summary"]["results"]["models"]["bad"]["win_rate"] == 0.0
    verdict = doc["rows"][0]["verdicts"][0]
    assert verdict["winner"] == "good" and [o["verdict"] for o in verdict["orders"]] == ["1", "2"]


def test_unparsable_verdicts_are_retried_then_failed(capsys, monkeypatch, tmp_path, servers):
    servers.responder = lambda body: "hmm, hard to say"
    r = llmctl(capsys, monkeypatch, "eval", "compare", "-m", "good", "-m", "bad", "-p",
               str(prompts_file(tmp_path, 2)), "--judge", "judge", "--retries", "1", "--json")
    assert r.code == 0, r.err
    assert r.json()["results"]["models"]["good"] == {"wins": 0, "losses": 0, "ties": 0, "failed": 2, "win_rate": None}
    assert len(servers.requests) == 8  # 2 prompts x 2 orders x 2 attempts


def test_without_judge_and_bad_flags(capsys, monkeypatch, tmp_path, servers):
    r = llmctl(capsys, monkeypatch, "eval", "compare", "-m", "good", "-m", "bad", "-p", str(prompts_file(tmp_path, 1)))
    assert r.code == 0 and "a good answer" in r.out and not servers.requests
    r = llmctl(capsys, monkeypatch, "eval", "compare", "-m", "good", "-m", "good", "-p", str(prompts_file(tmp_path)))
    assert r.code == 2 and "two different models" in r.err
    r = llmctl(capsys, monkeypatch, "eval", "compare", "-m", "good", "-m", "nope", "-p", str(prompts_file(tmp_path)))
    assert r.code == 3 and "unknown model 'nope'" in r.err


def test_human_choices_in_seeded_order(capsys, monkeypatch, tmp_path, servers):
    r = llmctl(capsys, monkeypatch, "eval", "compare", "-m", "good", "-m", "bad", "-p", str(prompts_file(tmp_path, 4)),
               "--save", str(tmp_path / "run"), "--human", "--json", stdin="1\nt\ns\nq\n")
    assert r.code == 0, r.err
    rows = llmctl(capsys, monkeypatch, "eval", "show", str(tmp_path / "run"), "--json").json()["rows"]
    picked = rows[0]["human_verdicts"][0]
    assert picked["winner"] == picked["shown_first"]  # "1" chose the answer shown first
    assert rows[1]["human_verdicts"][0]["winner"] == "tie" and "human_verdicts" not in rows[2]
    assert len({row_first(capsys, monkeypatch, tmp_path, seed) for seed in range(6)}) == 2  # the order varies
    r = llmctl(capsys, monkeypatch, "eval", "show", str(tmp_path / "run"), "--human", "--json", stdin="2\n2\n")
    summary = r.json()["summary"]["human"]["models"]
    assert summary["good"]["wins"] + summary["bad"]["wins"] == 3 and summary["good"]["ties"] == 1


def row_first(capsys, monkeypatch, tmp_path, seed):
    """Which model a fresh walk-through with this seed shows first on the first prompt."""
    save = tmp_path / f"seed{seed}"
    llmctl(capsys, monkeypatch, "eval", "compare", "-m", "good", "-m", "bad", "-p", str(prompts_file(tmp_path, 1)),
           "--save", str(save), "--human", "--seed", str(seed), "--json", stdin="1\n")
    rows = llmctl(capsys, monkeypatch, "eval", "show", str(save), "--json").json()["rows"]
    return rows[0]["human_verdicts"][0]["shown_first"]
