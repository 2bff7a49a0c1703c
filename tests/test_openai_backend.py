"""The OpenAI backend with the real `openai` client against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import socket
import time

import pytest

from llmctl.backends.base import GenerationRequest, Message, SamplingParams
from llmctl.backends.openai_backend import OpenAIBackend
from llmctl.config import Config
from llmctl.errors import ModelError, RemoteError, UsageError
from llmctl.registry import ModelEntry
from tests.fake_openai import FakeOpenAI

KEY = "sk-test-do-not-leak-4242"


@pytest.fixture
def server():
    with FakeOpenAI(api_key=KEY) as fake:
        yield fake


def backend_for(server_url, model="fake-model", retries=2, timeout=5.0, key=KEY):
    config = Config()
    config.openai.api_key, config.openai.retries, config.openai.timeout = key, retries, timeout
    return OpenAIBackend(ModelEntry(name=model, provider="openai", source=model, base_url=server_url), config)


def ask(text="hello there world", raw=False, top_probs=0, **params):
    return GenerationRequest([Message("user", text)], SamplingParams(**params), raw=raw, top_probs=top_probs)


def test_chat_streams_token_by_token(server):
    response = backend_for(server.url).generate(ask())
    deltas = list(response)
    assert deltas == ["Echo:", " hello", " there", " world"]
    assert response.text() == "Echo: hello there world"
    assert response.finish_reason == "stop"
    assert response.usage["completion_tokens"] == 4
    assert "first_token_s" in response.timings


def test_raw_mode_uses_the_completions_endpoint(server):
    response = backend_for(server.url).generate(ask("Once upon", raw=True, max_tokens=2))
    assert response.text() == "Echo: Once"
    assert response.finish_reason == "length"
    assert server.requests[-1]["prompt"] == "Once upon"


def test_every_sampling_knob_reaches_the_wire(server):
    backend_for(server.url).generate(ask(temperature=0.3, top_p=0.9, top_k=40, seed=0, max_tokens=7,
                                         repetition_penalty=1.2, stop=["world"])).text()
    body = server.requests[-1]
    assert (body["temperature"], body["top_p"], body["seed"], body["max_tokens"]) == (0.3, 0.9, 0, 7)
    assert (body["top_k"], body["repetition_penalty"], body["stop"]) == (40, 1.2, ["world"])
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_defaults_send_no_extra_fields(server):
    backend_for(server.url).generate(ask()).text()
    body = server.requests[-1]
    assert "top_k" not in body and "repetition_penalty" not in body and "seed" not in body


def test_stop_is_honoured(server):
    response = backend_for(server.url).generate(ask(stop=[" there"]))
    assert response.text() == "Echo: hello" and response.finish_reason == "stop"


def test_top_probs_from_logprobs(server):
    response = backend_for(server.url).generate(ask(top_probs=3))
    response.text()
    first = response.tokens[0]
    assert first.token == "Echo:" and first.prob == pytest.approx(0.5)
    assert [round(c.prob, 4) for c in first.top] == [0.5, 0.25, 0.125]
    assert server.requests[-1]["top_logprobs"] == 3 and server.requests[-1]["logprobs"] is True
    raw = backend_for(server.url).generate(ask(raw=True, top_probs=2))
    raw.text()
    assert [c.token for c in raw.tokens[0].top] == ["Echo:", "alt0"]


def test_too_many_top_probs_or_stops_is_a_usage_error(server):
    with pytest.raises(UsageError, match="at most 20"):
        backend_for(server.url).generate(ask(top_probs=21)).text()
    with pytest.raises(UsageError, match="at most 4 --stop"):
        backend_for(server.url).generate(ask(stop=list("abcde"))).text()


def test_429_then_success_is_retried(server):
    server.faults.extend([("status", 429)])
    assert backend_for(server.url).generate(ask()).text().startswith("Echo:")
    assert len(server.requests) == 2


def test_429_without_retries_fails_clearly(server):
    server.faults.extend([("status", 429)])
    with pytest.raises(RemoteError, match=r"rate limited by .* \(429\) after 0 retries"):
        backend_for(server.url, retries=0).generate(ask()).text()


def test_500_after_retries(server):
    server.faults.extend([("status", 500)] * 2)
    with pytest.raises(RemoteError, match="server error 500"):
        backend_for(server.url, retries=1).generate(ask()).text()
    assert len(server.requests) == 2


def test_slow_response_times_out(server):
    server.faults.append(("sleep", 2.0))
    start = time.monotonic()
    with pytest.raises(RemoteError, match="within 0.5 s"):
        backend_for(server.url, retries=0, timeout=0.5).generate(ask()).text()
    assert time.monotonic() - start < 2.0


def test_wrong_key_unknown_model_rejected_param(server):
    with pytest.raises(RemoteError, match=r"API key rejected .* \(401\)") as info:
        backend_for(server.url, key="sk-wrong-key").generate(ask()).text()
    assert "sk-wrong-key" not in str(info.value)
    with pytest.raises(ModelError, match="model 'nope' not found"):
        backend_for(server.url, model="nope").generate(ask()).text()
    server.faults.append(("reject_param", "top_k"))
    with pytest.raises(UsageError, match=r"server rejected parameter 'top_k' \(--top-k\)"):
        backend_for(server.url).generate(ask(top_k=5)).text()


def test_max_completion_tokens_fallback(server):
    server.faults.append(("max_tokens_unsupported",))
    assert backend_for(server.url).generate(ask(max_tokens=2)).text() == "Echo: hello"
    assert server.requests[-1]["max_completion_tokens"] == 2 and "max_tokens" not in server.requests[-1]


def test_connection_refused():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the request: nothing listens there
    with pytest.raises(RemoteError, match="cannot connect to http://127.0.0.1"):
        backend_for(f"http://127.0.0.1:{port}/v1", retries=0).generate(ask()).text()


def test_official_endpoint_needs_a_key_and_refuses_extensions():
    config = Config()
    entry = ModelEntry(name="gpt", provider="openai", source="gpt-4o-mini")
    with pytest.raises(RemoteError, match="no OpenAI API key"):
        OpenAIBackend(entry, config)
    config.openai.api_key = KEY
    with pytest.raises(UsageError, match="api.openai.com does not support --top-k"):
        OpenAIBackend(entry, config).generate(ask(top_k=3)).text()


def test_api_key_env_of_an_entry(server, monkeypatch):
    entry = ModelEntry(name="m", provider="openai", source="fake-model", base_url=server.url, api_key_env="MY_KEY")
    with pytest.raises(RemoteError, match=r"\$MY_KEY, which is not set"):
        OpenAIBackend(entry, Config())
    monkeypatch.setenv("MY_KEY", KEY)
    assert OpenAIBackend(entry, Config()).generate(ask()).text().startswith("Echo:")


def test_key_never_in_errors_or_repr(server):
    backend = backend_for(server.url, model="nope")
    with pytest.raises(ModelError) as info:
        backend.generate(ask()).text()
    assert KEY not in str(info.value) and KEY not in repr(vars(backend))
