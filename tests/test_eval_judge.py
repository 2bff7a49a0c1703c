"""`llmctl eval judge`, `eval show`/`list` and `--human`: reply parsing, retries, exact figures with a scripted
judge on the fake OpenAI server, and a real `llmctl serve` tiny model as a judge whose replies are noise."""

from __future__ import annotations

import json
import socket

import pytest

from llmctl.errors import UsageError
from llmctl.evaluate.judge import JUDGE_PROMPT_VERSION, JUDGE_SYSTEM, JudgmentError, parse_judgment
from llmctl.evaluate.rubrics import select_criteria
from tests.cli_helpers import llmctl, write_jsonl
from tests.fake_openai import fake_openai_fixture  # noqa: F401
from tests.serve_helpers import running_server

GRAMMAR_CREATIVITY = select_criteria("grammar,creativity")



def register(capsys, monkeypatch, name, url):
    r = llmctl(capsys, monkeypatch, "models", "add", name, "openai:fake-model", "--base-url", url)
    assert r.code == 0, r.err


def judged_answer(body) -> str:
    """The answer a judge request is about (the text between its [Answer to judge] and [Criteria] headings)."""
    text = body["messages"][1]["content"]
    return text.split("[Answer to judge]\n", 1)[1].split("\n\n[Criteria]", 1)[0]


def test_parse_each_reply_style():
    as_json = parse_judgment('Here you go: {"grammar": {"score": 7, "reason": "fine"}, "creativity": 4} done',
                             GRAMMAR_CREATIVITY)
    assert as_json == {"grammar": {"score": 7, "reason": "fine"}, "creativity": {"score": 4, "reason": ""}}
    fenced = parse_judgment('```json\n{"scores": {"Grammar": "8/10", "creativity": 0}, '
                            '"reasons": {"grammar": "ok"}}\n```', GRAMMAR_CREATIVITY)
    assert fenced == {"grammar": {"score": 8, "reason": "ok"}, "creativity": {"score": 1, "reason": ""}}  # 0 → 1
    lines = parse_judgment("**Grammar**: 9/10 - clean prose\n2. Creativity: 3.5, a generic plot", GRAMMAR_CREATIVITY)
    assert lines == {"grammar": {"score": 9, "reason": "clean prose"},
                     "creativity": {"score": 3.5, "reason": "a generic plot"}}
    lone = parse_judgment('```json\n{"score": 6, "reason": "fine"}\n```', select_criteria("grammar"))
    assert lone == {"grammar": {"score": 6, "reason": "fine"}}  # one criterion: a bare score is unambiguous
    for reply, problem in [('{"score": 6}', "no scores found"), ("grammar: 7 - good", "no score for creativity"), ("lovely story!", "no scores found"),
                           ('{"grammar": 11, "creativity": 2}', "not between 1 and 10"),
                           ('{"grammar": "great", "creativity": 2}', "not a number")]:
        with pytest.raises(JudgmentError, match=problem):
            parse_judgment(reply, GRAMMAR_CREATIVITY)


def test_rubrics_builtin_custom_and_unknown(tmp_path):
    assert [c.name for c in select_criteria(None)] == ["helpfulness"]
    assert select_criteria("correctness")[0].uses_reference
    toml = tmp_path / "r.toml"
    toml.write_text('rhyme = "Does it rhyme?"\n[humour]\ndescription = "Is it funny?"\nscale = "1 = dull"\n')
    custom = select_criteria(None, toml)
    assert [(c.name, c.scale) for c in custom] == [("rhyme", ""), ("humour", "1 = dull")]
    assert [c.name for c in select_criteria("grammar,humour", toml)] == ["grammar", "humour"]
    as_json = tmp_path / "r.json"
    as_json.write_text('{"rhyme": {"description": "Does it rhyme?"}}')
    assert select_criteria("rhyme", as_json)[0].description == "Does it rhyme?"
    with pytest.raises(UsageError, match="unknown rubric criterion 'style'.*known: age-appropriateness, grammar"):
        select_criteria("grammar,style")
    as_json.write_text('{"rhyme": 3}')
    with pytest.raises(UsageError, match="criterion 'rhyme' needs a description"):
        select_criteria(None, as_json)


def test_exact_figures_and_saved_run(capsys, monkeypatch, tmp_path, fake_openai):
    """Scores scripted per answer: grammar 2, 4, 9 and creativity 5, 5, 5 give exact means and spreads."""
    grammar = {"one": 2, "two": 4, "three": 9}
    fake_openai.responder = lambda body: json.dumps(
        {"grammar": {"score": grammar[judged_answer(body)], "reason": "r"}, "creativity": {"score": 5, "reason": "s"}})
    register(capsys, monkeypatch, "judge", fake_openai.url)
    answers = write_jsonl(tmp_path / "a.jsonl", [{"prompt": f"p{i}", "response": w, "model": "writer"}
                                                for i, w in enumerate(grammar)])
    r = llmctl(capsys, monkeypatch, "eval", "judge", "--judge", "judge", "--answers", str(answers),
               "--rubric", "grammar,creativity", "--save", str(tmp_path / "run"), "--json")
    assert r.code == 0, r.err
    doc = r.json()
    assert doc["scores"]["grammar"] == {"mean": 5.0, "std": 2.9439, "min": 2, "max": 9, "judged": 3, "failed": 0}
    assert doc["scores"]["creativity"] == {"mean": 5.0, "std": 0.0, "min": 5, "max": 5, "judged": 3, "failed": 0}
    assert doc["judge_prompt_version"] == JUDGE_PROMPT_VERSION and doc["models"] == ["writer"]
    assert all(b["temperature"] == 0 and b["messages"][0]["content"] == JUDGE_SYSTEM for b in fake_openai.requests)
    rows = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert sorted(r["scores"]["grammar"] for r in rows) == [2, 4, 9] and all(r["reasons"]["grammar"] == "r" for r in rows)
    shown = llmctl(capsys, monkeypatch, "eval", "show", str(tmp_path / "run"))
    assert shown.code == 0 and "2.94" in shown.out and "three" in shown.out
    assert llmctl(capsys, monkeypatch, "eval", "show", str(tmp_path / "run"), "--json").json()["rows"][0]["prompt"] == "p0"
    with open(tmp_path / "run" / "results.jsonl", "a") as f:
        f.write('{"index": 3, "prompt": "cut sho')  # a run killed while writing a row
    assert len(llmctl(capsys, monkeypatch, "eval", "show", str(tmp_path / "run"), "--json").json()["rows"]) == 3


def test_malformed_then_good_is_retried_with_the_error(capsys, monkeypatch, tmp_path, fake_openai):
    seen: dict[str, int] = {}

    def responder(body):
        answer = judged_answer(body)
        seen[answer] = seen.get(answer, 0) + 1
        return "I liked it a lot!" if seen[answer] == 1 else '{"helpfulness": {"score": 6, "reason": "ok"}}'

    fake_openai.responder = responder
    register(capsys, monkeypatch, "judge", fake_openai.url)
    answers = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "p", "response": "an answer"}])
    r = llmctl(capsys, monkeypatch, "eval", "judge", "--judge", "judge", "--answers", str(answers), "--json")
    assert r.code == 0, r.err
    assert r.json()["scores"]["helpfulness"] == {"mean": 6.0, "std": 0.0, "min": 6, "max": 6, "judged": 1, "failed": 0}
    first, retry = fake_openai.requests
    assert retry["seed"] == first["seed"] + 1
    assert [m["role"] for m in retry["messages"]] == ["system", "user", "assistant", "user"]
    assert retry["messages"][2]["content"] == "I liked it a lot!" and "no scores found" in retry["messages"][3]["content"]
    row = json.loads(next((tmp_path / "home" / "evals").glob("*/results.jsonl")).read_text())
    assert row["attempts"] == 2 and row["raw"] == ["I liked it a lot!", '{"helpfulness": {"score": 6, "reason": "ok"}}']


def test_always_malformed_is_counted_failed(capsys, monkeypatch, tmp_path, fake_openai):
    fake_openai.responder = lambda body: "Great story, ten out of ten"
    register(capsys, monkeypatch, "judge", fake_openai.url)
    answers = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "p1", "response": "x"}, {"prompt": "p2", "response": "y"}])
    r = llmctl(capsys, monkeypatch, "eval", "judge", "--judge", "judge", "--answers", str(answers), "--retries", "1",
               "--json")
    assert r.code == 0, r.err
    assert r.json()["scores"]["helpfulness"] == {"mean": None, "std": None, "min": None, "max": None, "judged": 0,
                                                 "failed": 2}
    assert len(fake_openai.requests) == 4  # one retry each


@pytest.fixture
def served_tiny_judge(tiny_chat_model):
    """A real `llmctl serve` over the tiny chat model (context raised so the judge prompt fits)."""
    from llmctl.backends.hf import HFBackend
    from llmctl.config import Config
    from llmctl.registry import ModelEntry

    backend = HFBackend.load(ModelEntry("tiny", "hf", str(tiny_chat_model), context_length=4096), Config())
    with running_server({"tiny": backend}, default_max_tokens=16) as server:
        yield server


def test_served_tiny_model_as_judge_fails_cleanly(capsys, monkeypatch, tmp_path, tiny_chat_model, served_tiny_judge):
    """Its replies are random text: every judgment is retried, then counted as failed; the run still completes."""
    r = llmctl(capsys, monkeypatch, "models", "add", "served", "openai:tiny", "--base-url", served_tiny_judge.url)
    assert r.code == 0, r.err
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "What is the capital of France?", "answer": "Paris"},
                                                 {"prompt": "Tell a story."}])
    r = llmctl(capsys, monkeypatch, "eval", "judge", "-m", str(tiny_chat_model), "--judge", "served", "-p",
               str(prompts), "--rubric", "correctness,grammar", "--max-tokens", "8", "--judge-max-tokens", "24",
               "--retries", "1", "--json")
    assert r.code == 0, r.err
    doc = r.json()
    assert doc["status"] == "complete" and doc["answers"] == 2
    assert doc["scores"]["grammar"]["judged"] + doc["scores"]["grammar"]["failed"] == 2
    assert doc["scores"]["grammar"]["failed"] == 2  # greedy noise from a tiny model is never a judgment
    rows = [json.loads(line) for line in open(doc_path(doc, tmp_path))]
    assert all(r["attempts"] == 2 and len(r["raw"]) == 2 and r["error"].startswith("unusable reply") for r in rows)
    assert {r["reference"] for r in rows} == {"Paris", None}


def doc_path(doc, tmp_path):
    return tmp_path / "home" / "evals" / doc["id"] / "results.jsonl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_judge_fails_fast_with_exit_4(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("LLMCTL_OPENAI_RETRIES", "0")
    register(capsys, monkeypatch, "gone", f"http://127.0.0.1:{free_port()}/v1")
    answers = write_jsonl(tmp_path / "a.jsonl", [{"prompt": f"p{i}", "response": "x"} for i in range(5)])
    r = llmctl(capsys, monkeypatch, "eval", "judge", "--judge", "gone", "--answers", str(answers))
    assert r.code == 4 and "cannot connect" in r.err and "Traceback" not in r.err
    summary = json.loads(next((tmp_path / "home" / "evals").glob("*/summary.json")).read_text())
    assert summary["status"] == "failed" and "cannot connect" in summary["error"]


def test_bad_inputs_are_one_line_errors(capsys, monkeypatch, tmp_path, fake_openai):
    register(capsys, monkeypatch, "judge", fake_openai.url)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "p"}])
    cases = [
        (("--judge", "judge", "-p", str(prompts), "-m", "judge", "--rubric", "wit"), 2, "known: age-appropriateness"),
        (("--judge", "judge", "-p", str(tmp_path / "none.jsonl"), "-m", "judge"), 2, "no such prompts file"),
        (("--judge", "nope", "-p", str(prompts), "-m", "judge"), 3, "unknown model 'nope'"),
        (("-p", str(prompts), "-m", "judge"), 2, "--judge MODEL, or --human"),
        (("--judge", "judge", "-p", str(prompts)), 2, "no answers to judge"),
        (("--judge", "judge", "-p", str(prompts), "-m", "judge", "--samples", "2"), 2, "needs --temperature"),
        (("--judge", "openai:gpt-4o-mini", "-p", str(prompts), "-m", "judge"), 4, "no OpenAI API key"),
    ]
    for args, code, message in cases:
        r = llmctl(capsys, monkeypatch, "eval", "judge", *args)
        assert (r.code, message in r.err, r.err.count("\n")) == (code, True, 1), (args, r.err)
    assert not fake_openai.requests  # every problem, a judge without a key included, was found before answering
    r = llmctl(capsys, monkeypatch, "eval", "show", "no-such-run")
    assert r.code == 2 and "llmctl eval list" in r.err


def test_human_scores_then_resume(capsys, monkeypatch, tmp_path):
    answers = write_jsonl(tmp_path / "a.jsonl", [{"prompt": f"p{i}", "response": f"answer {i}\u2028more"} for i in range(3)])
    r = llmctl(capsys, monkeypatch, "eval", "judge", "--human", "--answers", str(answers), "--rubric",
               "grammar,creativity", "--save", str(tmp_path / "run"), "--json", stdin="7\n8\n11\n\nq\n")
    assert r.code == 0, r.err
    doc = r.json()
    assert doc["judge"] == "human" and "not one of the choices" in r.err  # 11 is asked again
    assert doc["human"]["grammar"]["judged"] == 1 and doc["human"]["creativity"]["judged"] == 1
    r = llmctl(capsys, monkeypatch, "eval", "show", str(tmp_path / "run"), "--human", "--json", stdin="3\n\n5\n9\n")
    rows = r.json()["rows"]
    assert [row.get("human_scores") for row in rows] == [{"grammar": 7, "creativity": 8}, {"grammar": 3},
                                                         {"grammar": 5, "creativity": 9}]
    assert r.json()["summary"]["human"]["grammar"] == {"mean": 5.0, "std": 1.633, "min": 3, "max": 7, "judged": 3,
                                                      "failed": 0}
    listed = llmctl(capsys, monkeypatch, "eval", "list", "--json").json()
    assert listed == []  # --save put the run outside LLMCTL_HOME/evals
    assert llmctl(capsys, monkeypatch, "eval", "show").code == 0
