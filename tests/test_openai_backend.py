"""The OpenAI backend with the real `openai` client against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import socket
import time

import openai
import pytest

from llmctl.backends.base import GenerationRequest, Message, SamplingParams
from llmctl.backends.openai_backend import OpenAIBackend
from llmctl.config import Config
from llmctl.errors import LlmctlError, ModelError, RemoteError, UsageError
from llmctl.registry import ModelEntry
from tests.fake_openai import fake_openai_fixture  # noqa: F401 (the fake_openai fixture)

KEY = "sk-test-do-not-leak-4242"


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """No proxy may stand between the SDK and 127.0.0.1 (conftest already clears OPENAI_*)."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def server(fake_openai):
    fake_openai.api_key = KEY
    return fake_openai


def backend_for(url, model="fake-model", retries=2, timeout=5.0, key=KEY):
    config = Config()
    config.openai.api_key, config.openai.retries, config.openai.timeout = key, retries, timeout
    return OpenAIBackend(ModelEntry(name=model, provider="openai", source=model, base_url=url), config)


def ask(text="hello there world", raw=False, top_probs=0, **params):
    return GenerationRequest([Message("user", text)], SamplingParams(**params), raw=raw, top_probs=top_probs)


def failure(fn) -> LlmctlError:
    with pytest.raises(LlmctlError) as info:
        fn()
    return info.value


# -- generation ---------------------------------------------------------------------------------------
def test_chat_streams_token_by_token(server):
    response = backend_for(server.url).generate(ask())
    assert list(response) == ["Echo:", " hello", " there", " world"]
    assert response.text() == "Echo: hello there world"
    assert response.finish_reason == "stop"
    assert response.usage == {"prompt_tokens": 3, "completion_tokens": 4}
    assert server.paths == ["/v1/chat/completions"]
    assert server.requests[0]["messages"] == [{"role": "user", "content": "hello there world"}]


def test_chunks_arrive_as_they_are_generated(server):
    server.faults.append(("token_delay", 0.15))
    response = backend_for(server.url).generate(ask())
    start = time.monotonic()
    deltas = iter(response)  # held: dropping a Response's iterator finishes the response
    first = next(deltas)
    first_at = time.monotonic() - start
    assert first == "Echo:" and response.text() == "Echo: hello there world"
    assert first_at < 0.4 and time.monotonic() - start >= 0.55  # 4 tokens, 0.15 s apart


def test_cancel_closes_the_stream(server):
    server.faults.append(("token_delay", 0.05))
    backend = backend_for(server.url)
    response = backend.generate(ask())
    deltas = iter(response)
    assert next(deltas) == "Echo:"
    response.cancel()
    assert response.finish_reason == "interrupted"
    assert backend.generate(ask("again")).text() == "Echo: again"  # the client is still usable


def test_raw_mode_uses_the_completions_endpoint(server):
    request = GenerationRequest([Message("system", "Once "), Message("user", "upon a time")],
                                SamplingParams(max_tokens=2), raw=True)
    backend = backend_for(server.url)
    response = backend.generate(request)
    assert response.text() == "Echo: Once"
    assert response.finish_reason == "length" and response.usage["completion_tokens"] == 2
    assert server.paths == ["/v1/completions"] and server.requests[0]["prompt"] == "Once upon a time"
    assert backend.render(request).text == "Once upon a time" and backend.render(request).mode == "completion"


def test_render_shows_the_chat_turns(server):
    request = GenerationRequest([Message("system", "Be brief."), Message("user", "hi")])
    rendered = backend_for(server.url).render(request)
    assert (rendered.text, rendered.tokens, rendered.mode) == ("<|system|>\nBe brief.\n<|user|>\nhi", None, "chat")


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
    assert not {"top_k", "repetition_penalty", "seed", "stop", "logprobs"} & set(body)


def test_stop_is_honoured(server):
    response = backend_for(server.url).generate(ask(stop=["llo", "zzz"]))
    assert response.text() == "Echo: he" and response.finish_reason == "stop"


def test_top_probs_from_logprobs(server):
    response = backend_for(server.url).generate(ask(top_probs=3))
    response.text()
    assert [t.token for t in response.tokens] == ["Echo:", " hello", " there", " world"]
    first = response.tokens[0]
    assert first.prob == pytest.approx(0.5)
    assert [(c.token, round(c.prob, 6)) for c in first.top] == [("Echo:", 0.5), ("alt0", 0.25), ("alt1", 0.125)]
    assert all(sum(c.prob for c in t.top) <= 1.0 for t in response.tokens)
    assert server.requests[-1]["top_logprobs"] == 3 and server.requests[-1]["logprobs"] is True
    raw = backend_for(server.url).generate(ask(raw=True, top_probs=2))
    raw.text()
    assert server.requests[-1]["logprobs"] == 2 and "top_logprobs" not in server.requests[-1]
    assert [(c.token, round(c.prob, 6)) for c in raw.tokens[0].top] == [("Echo:", 0.5), ("alt0", 0.25)]


def test_usage_counted_when_the_server_sends_none(server):
    server.faults.append(("no_usage",))
    response = backend_for(server.url).generate(ask())
    response.text()
    assert response.usage == {"completion_tokens": 4}


def test_too_many_top_probs_or_stops_is_a_usage_error_before_sending(server):
    with pytest.raises(UsageError, match="at most 20"):
        backend_for(server.url).generate(ask(top_probs=21))
    with pytest.raises(UsageError, match="at most 4 --stop"):
        backend_for(server.url).generate(ask(stop=list("abcde")))
    assert server.requests == []


def test_max_completion_tokens_fallback(server):
    server.faults.append(("max_tokens_unsupported",))
    backend = backend_for(server.url)
    assert backend.generate(ask(max_tokens=2)).text() == "Echo: hello"
    assert server.requests[-1]["max_completion_tokens"] == 2 and "max_tokens" not in server.requests[-1]
    backend.generate(ask(max_tokens=3)).text()  # remembered: no second failed request
    assert len(server.requests) == 3 and server.requests[-1]["max_completion_tokens"] == 3


# -- failures -----------------------------------------------------------------------------------------
def test_429_then_success_is_retried(server):
    server.faults.append(("status", 429))
    assert backend_for(server.url).generate(ask()).text().startswith("Echo:")
    assert len(server.requests) == 2


def test_429_without_retries_fails_clearly(server):
    server.faults.append(("status", 429))
    with pytest.raises(RemoteError, match=r"rate limited by .* \(429\) after 0 retries"):
        backend_for(server.url, retries=0).generate(ask()).text()


def test_500_after_retries(server):
    server.faults.extend([("status", 500)] * 2)
    error = failure(lambda: backend_for(server.url, retries=1).generate(ask()).text())
    assert isinstance(error, RemoteError) and "server error 500 from http://127.0.0.1" in str(error)
    assert len(server.requests) == 2


def test_slow_response_times_out(server):
    server.faults.append(("sleep", 1.5))
    start = time.monotonic()
    with pytest.raises(RemoteError, match=r"within 0\.3 s \(raise --timeout"):
        backend_for(server.url, retries=0, timeout=0.3).generate(ask()).text()
    assert time.monotonic() - start < 1.0


def test_error_in_the_middle_of_a_stream(server):
    server.faults.append(("stream_error", 2))
    response = backend_for(server.url).generate(ask())
    with pytest.raises(RemoteError, match="while streaming from .*: injected failure mid-stream"):
        response.text()
    assert response._parts == ["Echo:", " hello"]  # what arrived before the failure was passed on


def test_wrong_key_unknown_model_rejected_param(server):
    with pytest.raises(RemoteError, match=r"API key rejected by http://127.0.0.1:\d+/v1 \(401\)"):
        backend_for(server.url, key="sk-wrong-key").generate(ask()).text()
    with pytest.raises(ModelError, match="model 'nope' not found on http://127.0.0.1"):
        backend_for(server.url, model="nope").generate(ask()).text()
    server.faults.append(("reject_param", "top_k"))
    with pytest.raises(UsageError, match=r"server rejected parameter 'top_k' \(--top-k\)") as info:
        backend_for(server.url).generate(ask(top_k=5)).text()
    assert "drop --top-k" in str(info.value)


def test_connection_refused():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the request: nothing listens there
    error = failure(lambda: backend_for(f"http://127.0.0.1:{port}/v1", retries=0).generate(ask()).text())
    assert isinstance(error, RemoteError) and error.message == f"cannot connect to http://127.0.0.1:{port}/v1"
    assert "check --base-url" in error.hint


def test_official_endpoint_needs_a_key_and_refuses_extensions():
    config = Config()
    entry = ModelEntry(name="gpt", provider="openai", source="gpt-4o-mini")
    with pytest.raises(RemoteError, match="no OpenAI API key") as info:
        OpenAIBackend(entry, config)
    assert "export OPENAI_API_KEY" in str(info.value)
    config.openai.api_key = KEY
    backend = OpenAIBackend(entry, config)  # raises below before any request leaves the machine
    with pytest.raises(UsageError, match="api.openai.com does not support --top-k"):
        backend.generate(ask(top_k=3))
    with pytest.raises(UsageError, match="does not support --repetition-penalty"):
        backend.generate(ask(repetition_penalty=1.1))


def test_custom_server_needs_no_key(fake_openai):
    assert backend_for(fake_openai.url, key=None).generate(ask("hi")).text() == "Echo: hi"


def test_api_key_env_of_an_entry(server, monkeypatch):
    entry = ModelEntry(name="m", provider="openai", source="fake-model", base_url=server.url, api_key_env="MY_KEY")
    with pytest.raises(RemoteError, match=r"\$MY_KEY, which is not set"):
        OpenAIBackend(entry, Config())
    monkeypatch.setenv("MY_KEY", KEY)
    assert OpenAIBackend(entry, Config()).generate(ask()).text().startswith("Echo:")


def test_key_never_in_errors_or_repr(server):
    """The fake echoes a refused key in its 401 body, as careless servers do."""
    wrong = "sk-wrong-but-still-secret-99"
    errors = [failure(lambda: backend_for(server.url, key=wrong).generate(ask()).text())]
    errors.append(failure(lambda: backend_for(server.url, model="nope").generate(ask()).text()))
    server.faults.extend([("status", 500), ("reject_param", "seed"), ("stream_error", 1)])
    for _ in range(3):
        errors.append(failure(lambda: backend_for(server.url, retries=0).generate(ask(seed=1)).text()))
    assert len({type(e) for e in errors}) == 3
    for error in errors:
        for secret in (KEY, wrong):
            assert secret not in str(error) and secret not in repr(error) and secret not in (error.hint or "")
    backend = backend_for(server.url)
    assert KEY not in repr(backend) and KEY not in repr(vars(backend))


def test_the_fake_speaks_openai_without_streaming(fake_openai):
    """The backend always streams; other tools may not, so the plain shapes are checked too."""
    client = openai.OpenAI(api_key="x", base_url=fake_openai.url, max_retries=0)
    assert [m.id for m in client.models.list()] == ["fake-model"]
    chat = client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "a b"}],
                                          max_tokens=2, logprobs=True, top_logprobs=2)
    assert chat.choices[0].message.content == "Echo: a" and chat.choices[0].finish_reason == "length"
    assert len(chat.choices[0].logprobs.content[0].top_logprobs) == 2 and chat.usage.completion_tokens == 2
    text = client.completions.create(model="fake-model", prompt="x y", stop=[" y"])
    assert text.choices[0].text == "Echo: x" and text.choices[0].finish_reason == "stop"
    client.close()
