"""Continuous batching: rows join a running batch and leave it when done, each with its solo text;
a row that fails while decoding fails alone."""

from __future__ import annotations

import time

import openai
import pytest

from llmctl.backends.base import GenerationRequest, Message, SamplingParams
from llmctl.backends.hf_decode import DecodeBatch
from tests.tiny_models import endless_chat_backend
from tests.serve_helpers import running_server

PROMPTS = ["Hello", "What is the capital of France?", "ROMEO: But soft", "x", "def add(a, b):"]


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    return endless_chat_backend(tmp_path_factory.mktemp("tiny-cont"), "cont")  # ends at the length limit or a stop string


def request(i: int) -> GenerationRequest:
    params = SamplingParams(temperature=0.9 if i % 2 else 0, top_k=20, seed=i, max_tokens=6 + 5 * i,
                            stop=["e"] if i == 3 else [])
    return GenerationRequest([Message("user", PROMPTS[i])], params, top_probs=2)


def new_batch(backend) -> DecodeBatch:
    return DecodeBatch(backend.model, backend.device, backend.pad_id, backend.eos_ids, backend._token_info)


def test_rows_that_join_mid_batch_get_their_solo_text(backend):
    solo = [backend.generate(request(i)) for i in range(len(PROMPTS))]
    expected = [r.text() for r in solo]
    batch, got, rows = new_batch(backend), {}, {}

    def take(events):
        for row, chunk in events:
            got.setdefault(id(row), []).append(chunk)

    for i in range(len(PROMPTS)):  # a new row joins every other step, while the earlier ones decode
        rows[i] = backend.prepare_row(request(i))
        take(batch.add([rows[i]]))
        for _ in range(2):
            take(batch.step())
    while len(batch):
        take(batch.step())
    texts = ["".join(c.text for c in got[id(rows[i])]) for i in range(len(PROMPTS))]
    assert texts == expected
    finishes = [(got[id(rows[i])][-1].finish_reason, got[id(rows[i])][-1].usage["completion_tokens"])
                for i in range(len(PROMPTS))]
    assert finishes == [(r.finish_reason, r.usage["completion_tokens"]) for r in solo]
    probs = [t.prob for i in range(len(PROMPTS)) for c in got[id(rows[i])] for t in c.tokens]
    assert probs == pytest.approx([t.prob for r in solo for t in r.tokens], abs=1e-4)


class BrokenGrammar:
    def constrain(self, logits):
        raise RuntimeError("grammar state lost")


def test_a_row_that_fails_while_decoding_fails_alone(backend):
    expected = backend.generate(request(0)).text()
    good, bad = backend.prepare_row(request(0)), backend.prepare_row(request(1))
    bad.grammar = BrokenGrammar()
    batch, chunks = new_batch(backend), {id(good): [], id(bad): []}
    for row, chunk in batch.add([good, bad]):
        chunks[id(row)].append(chunk)
    while len(batch):
        for row, chunk in batch.step():
            chunks[id(row)].append(chunk)
    assert [c.finish_reason for c in chunks[id(bad)]] == ["error"] and "grammar state lost" in chunks[id(bad)][0].error
    assert "".join(c.text for c in chunks[id(good)]) == expected
    assert all(c.error is None for c in chunks[id(good)])


def test_a_request_joins_a_running_batch_over_http(backend):
    with running_server({"cont": backend}, max_queue=4, max_batch=4, shutdown_timeout=0) as srv:
        client = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=30)
        stream = client.chat.completions.create(model="cont", messages=[{"role": "user", "content": "Hi"}],
                                                stream=True, max_tokens=3000, temperature=0)
        next(iter(stream))
        started = time.monotonic()
        short = client.chat.completions.create(model="cont", messages=[{"role": "user", "content": "x"}],
                                               max_tokens=3, temperature=0)
        assert short.choices[0].finish_reason == "length" and time.monotonic() - started < 10
        stats = srv.batchers["cont"].stats
        assert stats["batches"] == 1 and stats["largest_batch"] == 2  # it joined the running batch
        stream.close()
