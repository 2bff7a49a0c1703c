"""`llmctl data prefs`: DPO preference pairs from saved judge runs (higher mean score chosen), compare runs (the
judged winner) and a person's choices, with ties, margins and failures skipped and counted."""

from __future__ import annotations

import json

import pytest

from tests.cli_helpers import llmctl
from tests.fake_openai import FakeOpenAI, fake_openai_fixture  # noqa: F401

# answer text → (grammar, helpfulness) the scripted judge gives it; "broken" gets an unusable reply
SCORES = {"b0": (3, 3), "t0": (8, 8), "b1": (5, 6), "t1": (6, 5), "b2": (6, 6), "t2": (7, 7), "t3": (9, 9)}
PROMPTS = [{"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "q0"}]},
           {"prompt": "q1"}, {"prompt": "q2"}, {"prompt": "q3"}]


def judge_reply(body) -> str:
    answer = body["messages"][1]["content"].split("[Answer to judge]\n", 1)[1].split("\n\n[Criteria]", 1)[0]
    if answer not in SCORES:
        return "no idea"
    grammar, helpfulness = SCORES[answer]
    return json.dumps({"grammar": grammar, "helpfulness": helpfulness})


def judge_answers(capsys, monkeypatch, tmp_path, name, answers, *extra):
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps({**p, "response": a, "model": name}) + "\n" for p, a in zip(PROMPTS, answers)))
    r = llmctl(capsys, monkeypatch, "eval", "judge", "--judge", "judge", "--answers", str(path), "--rubric",
               "grammar,helpfulness", "--retries", "0", "--json", *extra)
    assert r.code == 0, r.err
    return r.json()["id"]


@pytest.fixture
def judge_server(capsys, monkeypatch, fake_openai):
    fake_openai.responder = judge_reply
    r = llmctl(capsys, monkeypatch, "models", "add", "judge", "openai:fake-model", "--base-url", fake_openai.url)
    assert r.code == 0, r.err
    return fake_openai


def read_pairs(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pairs_across_judge_runs(capsys, monkeypatch, tmp_path, judge_server):
    base = judge_answers(capsys, monkeypatch, tmp_path, "base", ["b0", "b1", "b2", "broken"])
    tuned = judge_answers(capsys, monkeypatch, tmp_path, "tuned", ["t0", "t1", "t2", "t3"])
    out = tmp_path / "prefs.jsonl"
    r = llmctl(capsys, monkeypatch, "data", "prefs", base, tuned, "--out", str(out), "--min-margin", "2", "--json")
    assert r.code == 0, r.err
    assert r.json() | {"out": None, "runs": None} == {
        "out": None, "runs": None, "pairs": 1, "ties_skipped": 1, "below_margin_skipped": 1, "failures_skipped": 1,
        "unpaired_prompts": 1, "duplicates_skipped": 0}
    [pair] = read_pairs(out)
    assert (pair["prompt"], pair["system"], pair["chosen"], pair["rejected"]) == ("q0", "Be kind.", "t0", "b0")
    assert pair["source"]["chosen_model"] == "tuned" and pair["source"]["judge"] == "judge"
    assert pair["source"]["scores"] == {"chosen": 8.0, "rejected": 3.0}
    assert sorted(pair["source"]["runs"]) == sorted([base, tuned])
    from llmctl.finetune.dpo import load_pairs  # what `finetune --method dpo --data` reads

    [(messages, chosen, rejected, _)], _ = load_pairs([out])
    assert (messages, chosen, rejected) == ([{"role": "system", "content": "Be kind."},
                                             {"role": "user", "content": "q0"}], "t0", "b0")
    r = llmctl(capsys, monkeypatch, "data", "prefs", base, tuned, base, "--out", str(out))
    assert r.code == 0 and "wrote 2 preference pairs" in r.out  # q2 counts without a margin; base once
    assert [p["prompt"] for p in read_pairs(out)] == ["q0", "q2"] and "system" not in read_pairs(out)[1]


def test_pairs_from_compare_runs(capsys, monkeypatch, tmp_path):
    with FakeOpenAI() as good, FakeOpenAI() as bad, FakeOpenAI() as judge:
        good.responder, bad.responder = (lambda body: "a good answer"), (lambda body: "a bad answer")
        judge.responder = lambda body: json.dumps({"winner": "1" if "[Answer 1]\na good" in body["messages"][-1]["content"] else "2"})
        for name, server in (("good", good), ("bad", bad), ("judge", judge)):
            llmctl(capsys, monkeypatch, "models", "add", name, "openai:fake-model", "--base-url", server.url)
        prompts = tmp_path / "p.txt"
        prompts.write_text("first question\nsecond question\n")
        r = llmctl(capsys, monkeypatch, "eval", "compare", "-m", "bad", "-m", "good", "-p", str(prompts), "--judge",
                   "judge", "--json")
        consistent = r.json()["id"]
        judge.responder = lambda body: '{"winner": "2"}'  # always the second position: only ties
        biased = llmctl(capsys, monkeypatch, "eval", "compare", "-m", "bad", "-m", "good", "-p", str(prompts),
                        "--judge", "judge", "--json").json()["id"]
    out = tmp_path / "prefs.jsonl"
    r = llmctl(capsys, monkeypatch, "data", "prefs", consistent, biased, "--out", str(out), "--json")
    assert (r.json()["pairs"], r.json()["ties_skipped"]) == (2, 2)
    assert [(p["prompt"], p["chosen"], p["rejected"], p["source"]["kind"]) for p in read_pairs(out)] == [
        ("first question", "a good answer", "a bad answer", "compare"),
        ("second question", "a good answer", "a bad answer", "compare")]


def test_pairs_from_human_scores(capsys, monkeypatch, tmp_path):
    answers = tmp_path / "a.jsonl"
    answers.write_text(json.dumps({"prompt": "q", "response": "meh"}) + "\n" + json.dumps({"prompt": "q", "response": "great"}) + "\n")
    r = llmctl(capsys, monkeypatch, "eval", "judge", "--human", "--answers", str(answers), "--rubric", "grammar",
               "--json", stdin="3\n9\n")
    run_id = r.json()["id"]
    out = tmp_path / "prefs.jsonl"
    r = llmctl(capsys, monkeypatch, "data", "prefs", run_id, "--out", str(out), "--source", "human", "--json")
    assert r.json()["pairs"] == 1
    [pair] = read_pairs(out)
    assert (pair["chosen"], pair["rejected"], pair["source"]["judge"]) == ("great", "meh", "human")
    r = llmctl(capsys, monkeypatch, "data", "prefs", run_id, "--out", str(out), "--source", "judge", "--json")
    assert (r.json()["pairs"], r.json()["failures_skipped"]) == (0, 2)  # no judge model scored this run


def test_bad_arguments(capsys, monkeypatch, tmp_path):
    r = llmctl(capsys, monkeypatch, "data", "prefs", "no-such-run", "--out", str(tmp_path / "p.jsonl"))
    assert r.code == 2 and "no eval run 'no-such-run'" in r.err and not (tmp_path / "p.jsonl").exists()
    r = llmctl(capsys, monkeypatch, "data", "prefs", "x", "--out", str(tmp_path / "p.jsonl"), "--source", "vote")
    assert r.code == 2 and "--source must be one of auto, judge, human" in r.err
