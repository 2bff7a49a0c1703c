"""Batched decoding: the same text as one request at a time; a client that leaves frees its row and slot."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from llmctl.backends.base import GenerationRequest, Message, SamplingParams
from llmctl.serve.server import ModelServer
from tests.tiny_models import endless_chat_backend
from tests.serve_helpers import running_server

PROMPTS = ["Hello", "What is the capital of France?", "ROMEO: But soft", "x"]


@pytest.fixture(scope="module")
def long_backend(tmp_path_factory):
    """A tiny chat model with a 4096-token context: long generations for the disconnect test."""
    return endless_chat_backend(tmp_path_factory.mktemp("tiny-long"), "long")


def requests(params_for) -> list[GenerationRequest]:
    return [GenerationRequest([Message("user", p)], params_for(i), top_probs=2) for i, p in enumerate(PROMPTS)]


@pytest.mark.parametrize("sampling", [
    lambda i: SamplingParams(temperature=0, max_tokens=12),
    lambda i: SamplingParams(temperature=0.9, top_k=20, seed=i, max_tokens=3 + 4 * i, stop=["e"]),
], ids=["greedy", "seeded-with-stops-and-lengths"])
def test_a_batch_gives_each_request_its_own_text(long_backend, sampling):
    alone = [long_backend.generate(r) for r in requests(sampling)]
    texts = [r.text() for r in alone]
    rows = [long_backend.prepare_row(r) for r in requests(sampling)]
    got = {i: [] for i in range(len(rows))}
    finish = {}
    for i, chunk in long_backend.decode_batch(rows):
        got[i].append(chunk)
        if chunk.finish_reason:
            finish[i] = (chunk.finish_reason, chunk.usage["completion_tokens"])
    assert ["".join(c.text for c in got[i]) for i in range(len(rows))] == texts
    assert finish == {i: (r.finish_reason, r.usage["completion_tokens"]) for i, r in enumerate(alone)}
    probs = [t.prob for i in range(len(rows)) for c in got[i] for t in c.tokens]
    assert probs == pytest.approx([t.prob for r in alone for t in r.tokens], abs=1e-4)


def health(srv) -> dict:
    with urllib.request.urlopen(srv.url.replace("/v1", "/health")) as r:
        return json.load(r)


@pytest.fixture
def served(long_backend):
    with running_server({"long": long_backend}, max_queue=1, default_max_tokens=16, max_batch=8) as srv:
        yield srv


def test_concurrent_requests_are_batched(long_backend):
    with running_server({"long": long_backend}, max_queue=16, max_batch=8) as srv:
        client = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0)
        expected = long_backend.generate(GenerationRequest([Message("user", "Hi")],
                                                           SamplingParams(temperature=0, max_tokens=40))).text()

        def ask(_):
            return client.chat.completions.create(model="long", messages=[{"role": "user", "content": "Hi"}],
                                                  temperature=0, max_tokens=40).choices[0].message.content

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, range(8)))
        assert answers == [expected] * 8
        stats = health(srv)["batching"]["long"]
        assert stats["largest_batch"] > 1 and stats["batches"] < 8
        # the passes' cost as fitted when asked: None until passes of different sizes tell its terms apart
        assert stats["pass_cost"] is None or set(stats["pass_cost"]) == {"fixed_ms", "per_position_ms"}


def test_a_client_that_leaves_mid_stream_frees_its_slot(served):
    client = openai.OpenAI(base_url=served.url, api_key="x", max_retries=0)
    stream = client.chat.completions.create(model="long", messages=[{"role": "user", "content": "Hi"}], stream=True,
                                            max_tokens=3000, temperature=0.8, seed=1)
    next(iter(stream))
    stream.close()  # the client hangs up after the first chunk
    deadline = time.monotonic() + 20
    while health(served)["batching"]["long"]["finished"].get("interrupted", 0) < 1:
        assert time.monotonic() < deadline, "the abandoned generation kept running"
        time.sleep(0.05)
    # max_queue is 1: this is admitted only because the abandoned request gave its slot back.
    reply = client.chat.completions.create(model="long", messages=[{"role": "user", "content": "x"}], max_tokens=3)
    assert reply.choices[0].finish_reason == "length"
    assert health(served)["batching"]["long"]["finished"] == {"interrupted": 1, "length": 1}


def test_shutdown_ends_running_generations(long_backend):
    srv = ModelServer({"long": long_backend}, "127.0.0.1", 0, max_queue=4, shutdown_timeout=0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    client = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0)
    stream = client.chat.completions.create(model="long", messages=[{"role": "user", "content": "Hi"}], stream=True,
                                            max_tokens=3000, temperature=0.8, seed=2)
    next(iter(stream))
    srv.shutdown()
    started = time.monotonic()
    srv.server_close()  # must not wait for 3,000 tokens
    assert time.monotonic() - started < 10
    assert not srv.batchers["long"].worker.is_alive()
    chunks = list(stream)
    assert chunks and chunks[-1].choices[0].finish_reason == "interrupted"
