"""Eval gates for CI: --fail-under/--fail-over/--baseline --max-drop with exit code 6, runs saved anyway,
JUnit XML parsed back, the GitHub step summary only when asked for, and bad gate input as usage errors."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from llmctl.errors import EXIT_GATE, EXIT_USAGE, UsageError
from llmctl.evaluate.gates import Gate, check_gate, compare_metrics, judge_metrics, parse_gate
from tests.cli_helpers import write_jsonl
from tests.fake_openai import fake_openai_fixture  # noqa: F401


def test_parse_gate_and_bad_input():
    assert parse_gate("fail-under", "exact_match=0.6") == Gate("fail-under", "exact_match", 0.6)
    assert parse_gate("fail-under", "win_rate:my=model=0.5") == Gate("fail-under", "win_rate:my=model", 0.5)
    with pytest.raises(UsageError, match="expected METRIC=VALUE"):
        parse_gate("fail-under", "exact_match")
    with pytest.raises(UsageError, match="'high' is not a number"):
        parse_gate("fail-over", "perplexity=high")
    with pytest.raises(UsageError, match="at least 0"):
        parse_gate("max-drop", "exact_match=-0.1")


def test_check_gate_directions():
    assert check_gate(Gate("fail-under", "acc", 0.5), 0.5, None, "").passed
    assert not check_gate(Gate("fail-under", "acc", 0.5), 0.49, None, "").passed
    assert not check_gate(Gate("fail-over", "perplexity", 25), 25.1, None, "").passed
    assert not check_gate(Gate("fail-under", "acc", 0.5), None, None, "").passed  # not measured: fails
    # a drop in accuracy is a fall; in perplexity a rise
    assert check_gate(Gate("max-drop", "exact_match", 0.1), 0.6, 0.7, "b").passed
    assert not check_gate(Gate("max-drop", "exact_match", 0.1), 0.55, 0.7, "b").passed
    failed = check_gate(Gate("max-drop", "perplexity", 1.0), 12.5, 11.0, "b")
    assert not failed.passed and failed.bound == 12.0 and "drop of 1.5" in failed.message
    assert check_gate(Gate("max-drop", "perplexity", 1.0), 9.0, 11.0, "b").passed


def test_metric_names_of_judge_and_compare_runs():
    assert judge_metrics({"scores": {"helpfulness": {"mean": 7.5}}}) == {"helpfulness": 7.5}
    summary = {"models": ["base", "tuned"], "results": {"models": {"base": {"win_rate": 0.25},
                                                                   "tuned": {"win_rate": 0.75}}}}
    assert compare_metrics(summary) == {"win_rate:base": 0.25, "win_rate:tuned": 0.75, "win_rate": 0.75}
    assert compare_metrics({"models": ["a", "b"]}) == {}  # no judge: nothing to gate on


@pytest.fixture
def echo_model(cli, fake_openai):
    """A registered remote model that answers "Echo: <question>"."""
    assert cli("models", "add", "echo", "openai:fake-model", "--base-url", fake_openai.url).code == 0
    return "echo"


def qa_file(tmp_path, right: int, wrong: int, name="qa.jsonl"):
    rows = [{"question": f"q{i}", "answer": f"echo q{i}"} for i in range(right)]
    rows += [{"question": f"w{i}", "answer": ["nope", "never"]} for i in range(wrong)]
    return write_jsonl(tmp_path / name, rows)


def test_exact_gates_pass_fail_and_the_run_is_saved(cli, tmp_path, echo_model):
    qa = qa_file(tmp_path, 2, 2)
    ok = cli("eval", "exact", "-m", echo_model, "-d", str(qa), "--fail-under", "exact_match=0.5",
             "--fail-over", "contains=0.5", "--json")
    assert ok.code == 0, ok.err
    doc = ok.json()
    assert doc["exact_match"] == 0.5 and doc["metrics"] == {"exact_match": 0.5, "contains": 0.5}
    assert [g["passed"] for g in doc["gates"]] == [True, True]
    bad = cli("eval", "exact", "-m", echo_model, "-d", str(qa), "--fail-under", "exact_match=0.6")
    assert bad.code == EXIT_GATE == 6
    assert "exact_match = 0.5, must be at least 0.6" in bad.err and len(bad.err.strip().splitlines()) == 1
    assert "FAIL" in bad.out
    runs = cli("eval", "list", "--json").json()
    assert [r["kind"] for r in runs] == ["exact", "exact"] and all(r["status"] == "complete" for r in runs)
    shown = cli("eval", "show", runs[0]["id"], "--json").json()
    assert shown["summary"]["gates"][0]["passed"] is False and len(shown["rows"]) == 4
    text = cli("eval", "show", runs[0]["id"])
    assert text.code == 0 and "exact_match" in text.out and "0.5" in text.out and "FAIL" in text.out
    human = cli("eval", "show", runs[0]["id"], "--human")
    assert human.code == EXIT_USAGE and "--human scores judge and compare runs" in human.err


def test_baseline_max_drop(cli, tmp_path, echo_model):
    base = cli("eval", "exact", "-m", echo_model, "-d", str(qa_file(tmp_path, 3, 1)), "--json").json()
    worse = qa_file(tmp_path, 1, 3, "worse.jsonl")
    same = cli("eval", "exact", "-m", echo_model, "-d", str(qa_file(tmp_path, 3, 1, "same.jsonl")),
               "--baseline", base["id"], "--max-drop", "exact_match=0")
    assert same.code == 0, same.err
    r = cli("eval", "exact", "-m", echo_model, "-d", str(worse), "--baseline", base["path"],
            "--max-drop", "exact_match=0.25")
    assert r.code == EXIT_GATE and "exact_match = 0.25, baseline 0.75" in r.err and "drop of 0.5" in r.err
    assert cli("eval", "exact", "-m", echo_model, "-d", str(worse), "--baseline", base["id"],
               "--max-drop", "exact_match=0.5").code == 0
    missing = cli("eval", "exact", "-m", echo_model, "-d", str(worse), "--baseline", "no-such-run",
                  "--max-drop", "exact_match=0.1")
    assert missing.code == EXIT_USAGE and "no eval run 'no-such-run'" in missing.err
    assert len(cli("eval", "list", "--json").json()) == 4  # the bad baseline failed before a run started


def test_baseline_that_measured_other_metrics(cli, tmp_path, echo_model, tiny_chat_model):
    text = tmp_path / "t.txt"
    text.write_text("The capital of France is Paris. " * 4)
    ppl = cli("eval", "perplexity", "-m", str(tiny_chat_model), "-d", str(text), "--json").json()
    r = cli("eval", "exact", "-m", echo_model, "-d", str(qa_file(tmp_path, 1, 1)), "--baseline", ppl["id"],
            "--max-drop", "exact_match=0.1")
    assert r.code == EXIT_USAGE and f"the baseline run {ppl['id']} did not measure exact_match" in r.err
    assert "perplexity" in r.err  # what it did measure


def test_bad_gate_input_is_a_usage_error(cli, tmp_path, echo_model):
    qa = str(qa_file(tmp_path, 1, 0))
    cases = [(["--fail-under", "exact_match"], "expected METRIC=VALUE"),
             (["--fail-under", "exact_match=x"], "is not a number"),
             (["--fail-under", "accuracy=0.5"], "unknown metric accuracy for eval exact; its metrics are: "
                                                "exact_match, contains"),
             (["--max-drop", "exact_match=0.1"], "--max-drop needs --baseline"),
             (["--junit", str(tmp_path / "nowhere" / "r.xml")], "does not exist")]
    for flags, message in cases:
        r = cli("eval", "exact", "-m", echo_model, "-d", qa, *flags)
        assert r.code == EXIT_USAGE and message in r.err, (flags, r.err)
    assert cli("eval", "list", "--json").json() == []  # each was refused before any work


def test_junit_report_parsed_back(cli, tmp_path, echo_model):
    report = tmp_path / "report.xml"
    r = cli("eval", "exact", "-m", echo_model, "-d", str(qa_file(tmp_path, 2, 1)), "--junit", str(report),
            "--fail-under", "exact_match=0.9", "--fail-over", "contains=1")
    assert r.code == EXIT_GATE
    suite = ET.parse(report).getroot().find("testsuite")
    assert suite.get("tests") == "5" and suite.get("failures") == "2"
    cases = suite.findall("testcase")
    assert [c.get("classname") for c in cases] == ["exact"] * 3 + ["gates"] * 2
    assert cases[0].get("name") == "1: q0" and cases[0].find("failure") is None
    failure = cases[2].find("failure")
    assert failure.get("message") == "answer: 'Echo: w0'; expected: 'nope' | 'never'"
    gate_failure = cases[3].find("failure")
    assert cases[3].get("name") == "--fail-under exact_match=0.9"
    assert "exact_match = 0.6667, must be at least 0.9" in gate_failure.get("message")
    assert cases[4].find("failure") is None


def test_step_summary_only_when_the_variable_is_set(cli, tmp_path, echo_model, monkeypatch):
    qa = str(qa_file(tmp_path, 1, 1))
    target = tmp_path / "summary.md"
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    assert cli("eval", "exact", "-m", echo_model, "-d", qa).code == 0
    assert not target.exists()
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(target))
    target.write_text("earlier step\n")
    assert cli("eval", "exact", "-m", echo_model, "-d", qa, "--fail-under", "exact_match=0.5").code == 0
    text = target.read_text()
    assert text.startswith("earlier step\n### llmctl eval exact: echo")
    assert "| exact_match | 0.5 |" in text and "| `--fail-under exact_match=0.5` | ✅ pass |" in text


def test_perplexity_gates_and_unknown_metric(cli, tmp_path, tiny_chat_model):
    text = tmp_path / "t.txt"
    text.write_text("The Eiffel Tower is located in Paris, France. " * 3)
    r = cli("eval", "perplexity", "-m", str(tiny_chat_model), "-d", str(text), "--fail-over", "perplexity=1",
            "--fail-under", "bits_per_byte=0", "--json")
    assert r.code == EXIT_GATE and "perplexity = " in r.err and "must be at most 1" in r.err
    doc = r.json()
    assert [g["passed"] for g in doc["gates"]] == [True, False] and doc["metrics"]["perplexity"] > 1
    bad = cli("eval", "perplexity", "-m", str(tiny_chat_model), "-d", str(text), "--fail-over", "ppl=3")
    assert bad.code == EXIT_USAGE and "its metrics are: loss, perplexity, bits_per_char, bits_per_byte" in bad.err


def test_judge_and_compare_gates(cli, tmp_path, fake_openai):
    for name in ("good", "judge"):
        assert cli("models", "add", name, "openai:fake-model", "--base-url", fake_openai.url).code == 0
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}, {"prompt": "there"}])
    fake_openai.responder = lambda body: (json.dumps({"helpfulness": {"score": 6, "reason": "ok"}})
                                          if "[Answer to judge]" in body["messages"][-1]["content"] else "an answer")
    args = ["eval", "judge", "-m", "good", "-j", "judge", "-p", str(prompts), "-r", "helpfulness"]
    assert cli(*args, "--fail-under", "helpfulness=6").code == 0
    r = cli(*args, "--fail-under", "helpfulness=7")
    assert r.code == EXIT_GATE and "helpfulness = 6, must be at least 7" in r.err
    r = cli(*args, "--fail-under", "grammar=7")
    assert r.code == EXIT_USAGE and "its metrics are: helpfulness" in r.err
    compare = ["eval", "compare", "-m", "good", "-m", "judge", "-p", str(prompts)]
    r = cli(*compare, "--fail-under", "win_rate=0.5")
    assert r.code == EXIT_USAGE and "eval compare without --judge" in r.err
    fake_openai.responder = lambda body: ('{"winner": "tie"}' if "[Answer 1]" in body["messages"][-1]["content"]
                                          else "same answer")
    r = cli(*compare, "--judge", "judge", "--fail-under", "win_rate:good=0", "--fail-over", "win_rate=0.5", "--json")
    assert r.code == 0, r.err
    assert r.json()["metrics"] == {"win_rate:good": 0.0, "win_rate:judge": 0.0, "win_rate": 0.0}


def test_runs_started_in_the_same_second_list_newest_first():
    from llmctl.evaluate.runs import Run, RunWriter, list_runs, save_summary

    writers = [RunWriter("exact") for _ in range(3)]
    for writer in writers:  # the same "created" second for all three, as when runs follow each other fast
        summary = {"kind": "exact", "status": "complete", "created": "2026-12-03T09:00:00+00:00"}
        writer.write_summary(summary)
        save_summary(Run(writer.directory, writer.full_summary({**summary, "gates": []}), []))  # as gates do
    assert [r["id"] for r in list_runs()] == [w.id for w in reversed(writers)]
    assert all(oct(w.directory.stat().st_mode & 0o777) == "0o700" for w in writers)
