"""Prompt files in every accepted shape, and answering many prompts (concurrently for remote models)."""

from __future__ import annotations

import json

import pytest

from llmctl.answering import answer_all, greedy, load_prompts
from llmctl.backends.base import GenerationRequest
from llmctl.backends.openai_backend import OpenAIBackend
from llmctl.config import Config
from llmctl.errors import UsageError
from llmctl.registry import ModelEntry
from tests.fake_openai import fake_openai_fixture  # noqa: F401


def test_prompt_shapes(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"prompt": "a", "reference": "A"}, {"question": "b"}, {"instruction": "Sum", "input": "1 2", "id": "x"},
            {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "c"},
                          {"role": "assistant", "content": "old"}]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    items = load_prompts(path)
    assert [i.text for i in items] == ["a", "b", "Sum\n\n1 2", "c"]
    assert items[0].extra == {"reference": "A"} and items[2].id == "x"
    assert [m.role for m in items[3].messages] == ["system", "user"]
    text = tmp_path / "p.txt"
    text.write_text("first\n\nsecond\n")
    assert [i.text for i in load_prompts(text)] == ["first", "second"]
    path.write_text('{"answer": "no prompt"}\n')
    with pytest.raises(UsageError, match="p.jsonl:1: no prompt found"):
        load_prompts(path)
    with pytest.raises(UsageError, match="no such prompts file"):
        load_prompts(tmp_path / "missing.jsonl")


def test_answer_all_keeps_order_and_records_failures(fake_openai):
    backend = OpenAIBackend(ModelEntry("fake", "openai", "fake-model", base_url=fake_openai.url), Config())
    from llmctl.backends.base import Message

    requests = [GenerationRequest([Message("user", f"q{i}")], greedy(8)) for i in range(6)]
    fake_openai.faults.append(("status", 400))  # one request fails for good (400 is not retried)
    seen = []
    answers = answer_all(backend, requests, workers=3, on_answer=lambda i, a: seen.append(i))
    assert sorted(seen) == list(range(6)) and len(answers) == 6
    failed = [a for a in answers if a.text is None]
    assert len(failed) == 1 and "400" in failed[0].error
    assert all(a.text == f"Echo: q{i}" for i, a in enumerate(answers) if a.text is not None)


def test_jsonl_rows_may_hold_unicode_line_separators(tmp_path):
    from llmctl.jsonl import parse_jsonl

    text = '{"prompt": "a\u2028b"}\r\n{"prompt": "c\u0085d"}\n'
    assert [row["prompt"] for _, row in parse_jsonl(tmp_path / "x.jsonl", text)] == ["a\u2028b", "c\u0085d"]


def test_an_interrupt_does_not_wait_for_queued_requests(fake_openai):
    import time

    from llmctl.backends.base import Message

    backend = OpenAIBackend(ModelEntry("fake", "openai", "fake-model", base_url=fake_openai.url), Config())
    fake_openai.faults.extend([("sleep", 0.3)] * 20)
    requests = [GenerationRequest([Message("user", f"q{i}")], greedy(4)) for i in range(20)]

    def interrupt(index, answer):
        raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        answer_all(backend, requests, workers=2, on_answer=interrupt)
    assert time.monotonic() - started < 2  # 20 requests of 0.3 s on 2 workers would take 3 s


def test_local_batches_give_the_same_answers_as_one_at_a_time(tiny_chat_model):
    from llmctl.backends.base import Message, SamplingParams
    from llmctl.backends.hf import HFBackend

    backend = HFBackend.load(ModelEntry("tiny", "hf", str(tiny_chat_model)), Config())
    prompts = ["Hello", "What is the capital of France?", "ROMEO: But soft", "x", "def add", "Paris"]
    requests = [GenerationRequest([Message("user", p)], greedy(6 + 3 * i)) for i, p in enumerate(prompts)]
    requests.append(GenerationRequest([Message("user", "y" * 400)], greedy(4)))  # longer than the context
    requests.append(GenerationRequest([Message("user", "seeded")], SamplingParams(temperature=0.9, seed=3,
                                                                                max_tokens=8)))
    alone = answer_all(backend, requests, batch_size=1)
    calls = []
    real = backend.decode_batch
    backend.decode_batch = lambda rows: (calls.append(len(rows)), real(rows))[1]
    order = []
    batched = answer_all(backend, requests, batch_size=4, fail_fast=True, on_answer=lambda i, a: order.append(i))
    assert calls == [4, 2]  # the first request alone (fail_fast), then batches of 4; the too-long one never decodes
    assert sorted(order) == list(range(len(requests)))
    assert [a.text for a in batched] == [a.text for a in alone] and alone[0].text
    assert [(a.finish_reason, a.usage) for a in batched] == [(a.finish_reason, a.usage) for a in alone]
    assert batched[6].text is None and "context" in batched[6].error and alone[6].error == batched[6].error


def test_distill_and_compare_with_a_local_model_batch(cli, tmp_path, tiny_chat_model, monkeypatch):
    """`data distill` and `eval compare` on a local model: the same answers with --batch-size 4 as with 1,
    and the batched decoder is what answered."""
    from llmctl.backends.hf import HFBackend

    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"question number {i}?\n" for i in range(6)))
    batches = []
    real = HFBackend.decode_batch
    monkeypatch.setattr(HFBackend, "decode_batch", lambda self, rows: (batches.append(len(rows)), real(self, rows))[1])
    texts = {}
    for size in ("1", "4"):
        out = tmp_path / f"sft-{size}.jsonl"
        r = cli("data", "distill", "--teacher", str(tiny_chat_model), "--prompts", str(prompts), "--out", str(out),
                "-t", "0", "--max-tokens", "6", "--keep-truncated", "--batch-size", size)
        assert r.code == 0, r.err
        texts[size] = [json.loads(line)["messages"][-1]["content"] for line in out.read_text().splitlines()]
    assert texts["1"] == texts["4"] and len(texts["1"]) == 6
    assert 4 in batches  # the batched run decoded four prompts at once
    runs = {}
    for size in ("1", "3"):
        r = cli("eval", "compare", "-m", str(tiny_chat_model), "-m", str(tmp_path / "nowhere"), "-p", str(prompts))
        assert r.code != 0  # an unknown second model fails before any work
        r = cli("eval", "compare", "-m", str(tiny_chat_model), "-m", f"hf:{tiny_chat_model}", "-p", str(prompts),
                "--max-tokens", "6", "--batch-size", size, "--json")
        assert r.code == 0, r.err
        runs[size] = cli("eval", "show", r.json()["id"], "--json").json()["rows"]
    assert [row["answers"] for row in runs["1"]] == [row["answers"] for row in runs["3"]]
    assert 3 in batches
