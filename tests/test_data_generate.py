"""`llmctl data generate`: ROUGE-L, reply parsing, filters, resume, Ctrl-C, and real teachers on 127.0.0.1
(a scripted OpenAI-compatible server, a served tiny model, a local tiny model)."""

from __future__ import annotations

import json
import random
import threading

import pytest

from llmctl.data.generate import PROMPT_VERSION, Events, GenerateOptions, generate, parse_tasks
from llmctl.data.similarity import NearDuplicateIndex, lcs_length, rouge_l
from llmctl.finetune.data import load_examples
from tests.cli_helpers import llmctl
from tests.fake_openai import fake_openai_fixture  # noqa: F401
from tests.serve_helpers import running_server

SEEDS = [
    {"id": "s1", "name": "capital", "instruction": "What is the capital city of the given country?",
     "instances": [{"input": "Japan", "output": "Tokyo"}], "is_classification": False},
    {"id": "s2", "name": "poem", "instruction": "Write a short poem about autumn leaves.",
     "instances": [{"input": "", "output": "Red and gold they fall."}], "is_classification": False},
    {"id": "s3", "name": "sort", "instruction": "Sort these numbers from smallest to largest.",
     "instances": [{"input": "5, 2, 9", "output": "2, 5, 9"}], "is_classification": False},
]
# Distinct tasks (pairwise ROUGE-L well under 0.7, and against the seeds): one new one per reply.
UNIQUE = ["Explain how a rainbow forms after rain.", "List three household uses of baking soda.",
          "Translate good morning into Spanish and Italian.", "Give a synonym for the adjective rapid.",
          "Describe the rules of tic-tac-toe in two sentences.", "Suggest a title for a mystery novel set in Venice.",
          "Write a limerick about a forgetful robot.", "Why do cats purr when they are content?",
          "Name the planets of the solar system in order.", "Convert ninety minutes into hours."]


def scripted_reply(i: int) -> str:
    """Reply number i: one new task, one duplicate, one unsuitable, one too short, one with an output too
    long, one unparsable, and a last one that --max-tokens cuts off."""
    duplicate = UNIQUE[i - 1] if i else SEEDS[0]["instruction"]
    return "\n".join([
        "Here are the new tasks:", "",
        f"4. Instruction: {UNIQUE[i]}", "Input: <noinput>", f"Output: Answer number {i}.", "",
        f"5. INSTRUCTION: {duplicate}", "5. Input:", "", "5. Output:", "A duplicate.", "###",
        "**6. Instruction:** Describe the image below in one sentence.", "**Input:** <noinput>", "**Output:** A cat.",
        "7. Instruction: Sum.", "Input: 2 3", "Output: 5",
        "8. Instruction: Write a story about a lighthouse keeper.", "Input: <noinput>", "Output: " + "wave " * 30,
        "9. Output: an output with no instruction",
        "10. Instruction: Write an essay about the tides.", "Input: <noinput>", "Output: " + "tide " * 300])


def write_seeds(path):
    path.write_text("".join(json.dumps(s) + "\n" for s in SEEDS))
    return path


def register_teacher(capsys, monkeypatch, url, name="teacher", model="openai:fake-model"):
    assert llmctl(capsys, monkeypatch, "models", "add", name, model, "--base-url", url).code == 0


def test_lcs_and_rouge_l_known_values():
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # the textbook pair
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    assert rouge_l("police killed the gunman", "the gunman police killed") == pytest.approx(0.5)  # LCS 2 of 4
    assert rouge_l("Same words, other CASE!", "same words other case") == 1.0
    assert rouge_l("nothing shared", "entirely different") == 0.0 and rouge_l("", "x") == 0.0


def test_bit_parallel_lcs_equals_dynamic_programming():
    def reference(a, b):
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
        return table[-1][-1]

    rng = random.Random(0)
    for _ in range(500):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]  # past 64 tokens: more than one machine word
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]
        assert lcs_length(a, b) == reference(a, b)


def test_near_duplicate_index_matches_brute_force():
    rng = random.Random(1)
    vocab = "the a cat dog sat ran on under mat table quickly slowly red blue".split()
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(3, 9))) for _ in range(150)]
    index = NearDuplicateIndex()
    for text in texts:
        scores = [rouge_l(text, other) for other in index.texts]
        best = max(scores, default=0.0)
        score, match = index.most_similar(text, 0.6)
        if best > 0.6:
            assert score == pytest.approx(best) and scores[match] == pytest.approx(best)
        else:
            assert (score, match) == (0.0, None)
        index.add(text)


def test_parse_tasks_labels_json_and_truncation():
    tasks, rejected = parse_tasks(scripted_reply(0), truncated=True)
    assert [t.instruction for t in tasks] == [UNIQUE[0], SEEDS[0]["instruction"], "Describe the image below in one sentence.",
                                              "Sum.", "Write a story about a lighthouse keeper."]
    assert tasks[0].input == "" and tasks[0].output == "Answer number 0." and tasks[1].output == "A duplicate."
    assert tasks[3].input == "2 3" and tasks[2].output == "A cat."
    assert rejected == {"unparsable": 1, "truncated": 1}
    assert parse_tasks(scripted_reply(0))[1] == {"unparsable": 1}  # not cut off: the essay is a task
    lines = '{"instruction": "Name a colour.", "input": "", "output": "Blue"}\nstray text\n{"instruction": "cut'
    tasks, rejected = parse_tasks(lines, truncated=True)
    assert [(t.instruction, t.output) for t in tasks] == [("Name a colour.", "Blue")] and rejected == {"truncated": 1}
    assert parse_tasks("random words and no structure at all") == ([], {"unparsable": 1})


def test_appended_rows_survive_line_separators_inside_strings(tmp_path):
    from llmctl.data.generate import JsonlAppender, read_resumable

    row = {"instruction": "Keep\u2028these\u2029apart\x85please.", "input": "", "output": "ok"}
    appender = JsonlAppender(tmp_path / "rows.jsonl")
    appender.write(row)
    appender.close()
    assert read_resumable(tmp_path / "rows.jsonl", print, {"instruction": str}) == [row]
    assert load_examples([tmp_path / "rows.jsonl"])[0][0].messages[0]["content"] == row["instruction"]


def test_generate_filters_resumes_and_repairs_a_torn_line(capsys, monkeypatch, fake_openai, tmp_path):
    fake_openai.responder = lambda body: scripted_reply(len(fake_openai.requests) - 1)
    register_teacher(capsys, monkeypatch, fake_openai.url)
    seeds, out = write_seeds(tmp_path / "seeds.jsonl"), tmp_path / "gen.jsonl"
    args = ["data", "generate", "--teacher", "teacher", "--seeds", str(seeds), "--out", str(out), "--workers", "1",
            "--max-output-words", "20", "--max-tokens", "150", "--json"]
    first = llmctl(capsys, monkeypatch, *args, "-n", "3")
    assert first.code == 0, first.err
    report = first.json()
    assert (report["kept"], report["new"], report["requests"], report["complete"]) == (3, 3, 3, True)
    # The third reply's first task meets the target: the tasks after it are not needed, not judged.
    assert report["filtered"] == {"duplicate": 2, "unsuitable": 2, "instruction_too_short": 2, "output_too_long": 2,
                                  "not_needed": 4, "unparsable": 3, "truncated": 3}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["instruction"] for r in rows] == UNIQUE[:3]
    meta = rows[0]["meta"]
    assert meta["teacher"] == "teacher" and meta["prompt_version"] == PROMPT_VERSION and meta["request"] == 1
    assert len(meta["seed_ids"]) == 3 and set(meta["seed_ids"]) == {"s1", "s2", "s3"} and meta["created"]
    prompts = [body["messages"][-1]["content"] for body in fake_openai.requests]
    assert all(s["instruction"] in prompts[0] for s in SEEDS) and UNIQUE[0] not in prompts[0]
    assert UNIQUE[0] in prompts[1]  # once a task is kept, requests show one generated task too
    assert fake_openai.requests[0]["temperature"] == 1.0

    first_bytes = out.read_bytes()
    with open(out, "a") as f:
        f.write('{"instruction": "a row cut off by a cra')  # a crash mid-write
    second = llmctl(capsys, monkeypatch, *args, "-n", "6")
    assert second.code == 0, second.err
    assert "incomplete" in second.err and "removed it" in second.err
    assert (second.json()["resumed"], second.json()["new"], second.json()["kept"]) == (3, 3, 6)
    assert out.read_bytes().startswith(first_bytes)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["instruction"] for r in rows] == UNIQUE[:6]  # reply 3 repeats UNIQUE[2] from the first run: dropped
    assert [r["meta"]["request"] for r in rows] == [1, 2, 3, 4, 5, 6]  # the resumed run asks new questions
    examples, data_report = load_examples([out])
    assert data_report.format == "alpaca" and len(examples) == 6
    assert examples[0].messages == [{"role": "user", "content": UNIQUE[0]}, {"role": "assistant", "content": "Answer number 0."}]

    again = llmctl(capsys, monkeypatch, *args, "-n", "6")  # nothing left to do: no request at all
    assert again.code == 0 and again.json()["requests"] == 0 and len(fake_openai.requests) == 6


def test_concurrent_requests_keep_exactly_n_unique_rows(capsys, monkeypatch, fake_openai, tmp_path):
    lock, served = threading.Lock(), []

    def reply(body):
        with lock:
            served.append(1)
            i = len(served) - 1
        return scripted_reply(i % len(UNIQUE))

    fake_openai.responder = reply
    out = tmp_path / "gen.jsonl"
    register_teacher(capsys, monkeypatch, fake_openai.url)
    result = llmctl(capsys, monkeypatch, "data", "generate", "--teacher", "teacher", "--seeds",
                    str(write_seeds(tmp_path / "s.jsonl")), "-n", "5", "--out", str(out), "--workers", "4",
                    "--max-output-words", "20", "--max-tokens", "150")
    assert result.code == 0, result.err
    instructions = [json.loads(line)["instruction"] for line in out.read_text().splitlines()]
    assert len(instructions) == 5 and len(set(instructions)) == 5 and set(instructions) <= set(UNIQUE)
    assert "5 of 5 rows" in result.out and "filtered: duplicate" in result.out


def test_a_served_tiny_model_never_parses_and_the_run_stops(capsys, monkeypatch, tmp_path, tiny_chat_model):
    from llmctl.backends.hf import HFBackend
    from llmctl.config import Config
    from llmctl.registry import ModelEntry

    # The self-instruct prompt is over 1,000 tokens of this tiny vocabulary: more than the 128 positions the
    # model was built with, which its rotary embeddings extend past without complaint.
    backend = HFBackend.load(ModelEntry("tiny", "hf", str(tiny_chat_model), context_length=4096), Config())
    with running_server({"tiny": backend}) as server:
        register_teacher(capsys, monkeypatch, server.url, model="openai:tiny")
        out = tmp_path / "gen.jsonl"
        result = llmctl(capsys, monkeypatch, "data", "generate", "--teacher", "teacher", "--seeds",
                        str(write_seeds(tmp_path / "s.jsonl")), "-n", "4", "--out", str(out), "--max-requests", "3",
                        "--max-tokens", "24", "--workers", "2", "--json")
    assert result.code == 0, result.err
    report = result.json()
    assert report["requests"] == 3 and report["failed_requests"] == 0 and not report["complete"]
    assert report["kept"] == 0 and report["filtered"].get("unparsable", 0) >= 1
    assert "stopped after 3 requests (--max-requests 3)" in result.err
    assert not out.exists() or out.read_text() == ""


def test_a_local_teacher_and_ctrl_c_keeps_what_was_kept(tmp_path, tiny_chat_model, fake_openai):
    from llmctl.errors import ModelError
    from llmctl.registry import ModelEntry, Registry

    seeds = write_seeds(tmp_path / "s.jsonl")
    with pytest.raises(ModelError, match="failed on every request: .*the prompt is .* tokens"):
        generate(GenerateOptions(str(tiny_chat_model), seeds, 2, tmp_path / "local.jsonl", max_tokens=16))
    Registry().add(ModelEntry("tiny", "hf", str(tiny_chat_model), context_length=4096))
    local = generate(GenerateOptions("tiny", seeds, 2, tmp_path / "local.jsonl", max_requests=2, max_tokens=16))
    assert local.requests == 2 and sum(local.filtered.values()) >= 2 and not local.complete

    class CtrlC(Events):
        def update(self, done, total, requests):
            if done >= 2:
                raise KeyboardInterrupt

    fake_openai.responder = lambda body: scripted_reply(len(fake_openai.requests) - 1)
    Registry().add(ModelEntry("teacher", "openai", "fake-model", base_url=fake_openai.url))
    out = tmp_path / "gen.jsonl"
    with pytest.raises(KeyboardInterrupt):
        generate(GenerateOptions("teacher", seeds, 5, out, workers=1, max_output_words=20, max_tokens=150),
                 events=CtrlC())
    assert [json.loads(line)["instruction"] for line in out.read_text().splitlines()] == UNIQUE[:2]


def test_cli_ctrl_c_exits_130(capsys, monkeypatch, fake_openai, tmp_path):
    from llmctl.cli import data_cmd

    def interrupt(self, done, total, requests):
        raise KeyboardInterrupt

    monkeypatch.setattr(data_cmd.DataProgress, "update", interrupt)  # as if Ctrl-C came during the first request
    register_teacher(capsys, monkeypatch, fake_openai.url)
    result = llmctl(capsys, monkeypatch, "data", "generate", "--teacher", "teacher", "--seeds",
                    str(write_seeds(tmp_path / "s.jsonl")), "-n", "2", "--out", str(tmp_path / "g.jsonl"))
    assert result.code == 130 and "interrupted" in result.err and "run the same command again" in result.err


def test_bad_input_is_one_clear_line(capsys, monkeypatch, fake_openai, tmp_path):
    seeds = write_seeds(tmp_path / "s.jsonl")
    base = ["data", "generate", "--teacher", "teacher", "-n", "2"]
    missing = llmctl(capsys, monkeypatch, *base, "--seeds", "nope.jsonl", "--out", "o.jsonl")
    assert missing.code == 2 and "--seeds nope.jsonl: no such file" in missing.err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(SEEDS[0]) + '\n{"instruction": "no answer"}\n')
    result = llmctl(capsys, monkeypatch, *base, "--seeds", str(bad), "--out", "o.jsonl")
    assert result.code == 2 and "bad.jsonl:2: a seed task needs" in result.err
    corrupt = tmp_path / "corrupt.jsonl"
    corrupt.write_text('not json\n{"instruction": "a", "output": "b"}\n')
    result = llmctl(capsys, monkeypatch, *base, "--seeds", str(seeds), "--out", str(corrupt))
    assert result.code == 2 and "corrupt.jsonl:1: not valid JSON" in result.err
    register_teacher(capsys, monkeypatch, fake_openai.url, model="openai:no-such-model")
    result = llmctl(capsys, monkeypatch, *base, "--seeds", str(seeds), "--out", "o.jsonl")
    assert result.code == 4 and "failed on every request" in result.err and "no-such-model" in result.err
    assert "Traceback" not in missing.err + result.err
