"""`llmctl serve` end to end: the real openai client against a real server on 127.0.0.1."""

from __future__ import annotations

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from llmctl.backends.hf import HFBackend
from llmctl.config import Config
from llmctl.registry import ModelEntry
from tests.cli_helpers import llmctl
from tests.serve_helpers import running_server

KEY = "sk-serve-test"


@pytest.fixture(scope="module")
def backend(tiny_chat_model):
    return HFBackend.load(ModelEntry("tiny", "hf", str(tiny_chat_model)), Config())


@pytest.fixture
def server(backend):
    with running_server({"tiny": backend}, api_key=KEY, max_queue=4, default_max_tokens=16) as srv:
        yield srv


def client(srv, key=KEY):
    return openai.OpenAI(base_url=srv.url, api_key=key, max_retries=0, timeout=30)


def test_models_health_and_chat(server, backend):
    c = client(server)
    assert [m.id for m in c.models.list()] == ["tiny"]
    with urllib.request.urlopen(server.url.replace("/v1", "/health")) as r:
        assert json.load(r)["status"] == "ok"
    reply = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello"}], temperature=0,
                                      max_tokens=8)
    from llmctl.backends.base import GenerationRequest, Message, SamplingParams

    local = backend.generate(GenerationRequest([Message("user", "Hello")], SamplingParams(temperature=0, max_tokens=8)))
    assert reply.choices[0].message.content == local.text()
    assert reply.usage.completion_tokens == 8 and reply.choices[0].finish_reason == "length"


def test_streaming_equals_whole_and_logprobs(server):
    c = client(server)
    args = dict(model="tiny", messages=[{"role": "user", "content": "Hi"}], temperature=0.8, seed=3, max_tokens=10)
    whole = c.chat.completions.create(**args).choices[0].message.content
    chunks = list(c.chat.completions.create(stream=True, stream_options={"include_usage": True}, **args))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == whole
    assert chunks[-1].usage.completion_tokens == 10
    lp = c.chat.completions.create(logprobs=True, top_logprobs=3, **args).choices[0].logprobs.content
    assert len(lp) == 10 and all(len(t.top_logprobs) == 3 for t in lp)
    text = c.completions.create(model="tiny", prompt="ROMEO:", max_tokens=5, temperature=0, logprobs=2)
    assert text.choices[0].logprobs.top_logprobs and text.usage.completion_tokens == 5


def test_n_choices_and_extra_fields(server):
    c = client(server)
    reply = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], n=2, seed=1,
                                      max_tokens=6, extra_body={"top_k": 5, "repetition_penalty": 1.3})
    assert [ch.index for ch in reply.choices] == [0, 1]


def test_errors_are_openai_shaped(server):
    with pytest.raises(openai.AuthenticationError):
        client(server, key="wrong").chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client(server).chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client(server).chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], temperature=5)
    with pytest.raises(openai.BadRequestError, match="context"):
        client(server).chat.completions.create(model="tiny", messages=[{"role": "user", "content": "word " * 300}])


def test_llmctl_prompt_against_the_server(server, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    r = llmctl(capsys, monkeypatch, "prompt", "--base-url", server.url, "-m", "tiny", "-t", "0", "--max-tokens", "5",
               "--json", "Hello")
    assert r.code == 0, r.err and r.json()["usage"]["completion_tokens"] == 5


def test_fifty_concurrent_clients_succeed_or_get_503(server):
    def one(i):
        try:
            client(server).chat.completions.create(model="tiny", messages=[{"role": "user", "content": str(i)}],
                                                   max_tokens=4)
            return 200
        except openai.APIStatusError as e:
            return e.status_code

    with ThreadPoolExecutor(max_workers=50) as pool:
        codes = list(pool.map(one, range(50)))
    assert set(codes) <= {200, 503} and codes.count(200) >= 4


def test_serve_command_binds_loopback_and_stops_on_sigterm(tmp_path, tiny_chat_model):
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "LLMCTL_HOME": str(tmp_path / "h")}
    proc = subprocess.Popen([sys.executable, "-m", "llmctl", "serve", "-m", str(tiny_chat_model), "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health") as r:
                    assert json.load(r)["models"] == [str(tiny_chat_model)]
                break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail("the server did not come up")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    assert f"http://127.0.0.1:{port}/v1" in proc.stderr.read()
