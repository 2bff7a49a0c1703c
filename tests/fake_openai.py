"""A real HTTP server on 127.0.0.1 that speaks the OpenAI wire format, with injectable faults.

Replies are deterministic ("Echo: " + the last user message, one word a token) so tests can check
streaming, logprobs, stop and max_tokens exactly. Set `server.responder` to a function of the request
body to script the reply text instead (a teacher's or a judge's answer), still one word a token. Every request body is recorded. Faults are queued
on `server.faults` and consumed one per POST:

    ("status", 429)             answer with that status and an OpenAI error body
    ("sleep", 2.0)              wait before answering (then answer normally)
    ("token_delay", 0.1)        stream normally, but wait this long before every token
    ("reject_param", "top_k")   400 "Unrecognized request argument supplied: top_k" (param null, as OpenAI does)
    ("max_tokens_unsupported",) 400 telling to use max_completion_tokens, if the body has max_tokens
    ("stream_error", 2)         stream 2 tokens, then an error event in the stream
    ("no_usage",)               no usage in the stream even when stream_options.include_usage asks
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import pytest

MODELS = ("fake-model",)


class FakeOpenAI(ThreadingHTTPServer):
    daemon_threads = True  # a handler still sleeping on a fault must not hold up the test's end

    def __init__(self, api_key: str | None = None):
        super().__init__(("127.0.0.1", 0), Handler)
        self.api_key = api_key  # None: any Authorization (or none) is accepted
        self.faults: deque[tuple] = deque()
        self.requests: list[dict] = []  # every POST body, in order
        self.paths: list[str] = []  # the path of each of those requests
        self.responder: Callable[[dict], str] | None = None  # scripted reply text, or None to echo

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def __enter__(self) -> "FakeOpenAI":
        # A short poll interval makes shutdown() quick: tests start and stop many servers.
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that gave up (timeout, cancel) is normal
            super().handle_error(request, client_address)

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


@pytest.fixture(name="fake_openai")
def fake_openai_fixture() -> Iterator[FakeOpenAI]:
    """A running fake server that needs no key; set `.api_key` to require one."""
    with FakeOpenAI() as server:
        yield server


def reply_tokens(body: dict, responder: Callable[[dict], str] | None = None) -> list[str]:
    if responder is not None:
        return [w if i == 0 else " " + w for i, w in enumerate(responder(body).split(" "))]
    if "messages" in body:
        last = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
    else:
        last = body.get("prompt", "")
    words = ("Echo: " + last).split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def limit_tokens(tokens: list[str], body: dict) -> tuple[list[str], str]:
    """Cut the reply where max_tokens or the first stop string ends it, as a real server would."""
    limit = body.get("max_completion_tokens") or body.get("max_tokens") or 10**9
    text = "".join(tokens)
    cut = min((text.find(s) for s in body.get("stop") or [] if s and s in text), default=None)
    kept: list[str] = []
    used = 0
    for token in tokens:
        if len(kept) == limit:
            return kept, "length"
        if cut is not None and used + len(token) > cut:  # the stop string starts inside this token
            return kept + ([token[: cut - used]] if cut > used else []), "stop"
        kept.append(token)
        used += len(token)
    return kept, "stop"


def logprob_entry(token: str, k: int) -> dict:
    """The generated token has probability 0.5 and leads its top k; the others get 0.25, 0.125, ..."""
    ranked = [(token, 0.5)] + [(f"alt{i}", 0.5 / 2 ** (i + 1)) for i in range(k - 1)]
    top = [{"token": t, "logprob": math.log(p), "bytes": list(t.encode())} for t, p in ranked[:k]]
    return {"token": token, "logprob": math.log(0.5), "bytes": list(token.encode()), "top_logprobs": top}


class Handler(BaseHTTPRequestHandler):
    server: FakeOpenAI

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def _json(self, status: int, doc: dict) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, *, kind: str = "invalid_request_error",
               param: str | None = None, code: str | None = None) -> None:
        self._json(status, {"error": {"message": message, "type": kind, "param": param, "code": code}})

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "test"}
                                                        for m in MODELS]})
        else:
            self._error(404, f"Invalid URL (GET {self.path})")

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        self.server.requests.append(body)
        self.server.paths.append(self.path)
        given = self.headers.get("Authorization", "").removeprefix("Bearer ")
        if self.server.api_key and given != self.server.api_key:
            # A careless server that echoes the whole key: the client must not repeat it.
            return self._error(401, f"Incorrect API key provided: {given}", code="invalid_api_key")
        fault = self.server.faults.popleft() if self.server.faults else ("none",)
        if fault[0] == "status":
            kind = "rate_limit_error" if fault[1] == 429 else "server_error"
            return self._error(fault[1], f"injected {fault[1]}", kind=kind)
        if fault[0] == "sleep":
            time.sleep(fault[1])
        if fault[0] == "reject_param":
            return self._error(400, f"Unrecognized request argument supplied: {fault[1]}")
        if fault[0] == "max_tokens_unsupported" and "max_tokens" in body:
            return self._error(400, "Unsupported parameter: 'max_tokens' is not supported with this model. "
                                    "Use 'max_completion_tokens' instead.", param="max_tokens", code="unsupported_parameter")
        if body.get("model") not in MODELS:
            return self._error(404, f"The model `{body.get('model')}` does not exist or you do not have access to it.",
                               code="model_not_found")
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/v1/completions"):
            return self._error(404, f"Invalid URL (POST {self.path})")
        chat = self.path.rstrip("/").endswith("/chat/completions")
        tokens, finish = limit_tokens(reply_tokens(body, self.server.responder), body)
        if body.get("stream"):
            self._stream(chat, body, tokens, finish, fault)
        else:
            doc = self._envelope(chat, body, [self._choice(chat, body, tokens, finish, "message")], stream=False)
            doc["usage"] = self._usage(body, tokens)
            self._json(200, doc)

    def _usage(self, body: dict, tokens: list[str]) -> dict:
        texts = [m["content"] for m in body["messages"]] if "messages" in body else [body.get("prompt", "")]
        prompt = sum(len(t.split()) for t in texts)
        return {"prompt_tokens": prompt, "completion_tokens": len(tokens), "total_tokens": prompt + len(tokens)}

    def _envelope(self, chat: bool, body: dict, choices: list, *, stream: bool) -> dict:
        kind = ("chat.completion.chunk" if stream else "chat.completion") if chat else "text_completion"
        doc = {"id": "cmpl-fake", "object": kind, "created": 0, "model": body["model"], "choices": choices}
        if stream and (body.get("stream_options") or {}).get("include_usage"):
            doc["usage"] = None  # OpenAI sends null on every chunk but the last
        return doc

    def _choice(self, chat: bool, body: dict, tokens: list[str], finish: str | None, field: str) -> dict:
        """One choice; `field` is "message" (whole chat reply), "delta" (chat chunk) or "text" (completions)."""
        text = "".join(tokens)
        choice: dict = {"index": 0, "logprobs": None, "finish_reason": finish}
        if chat:
            choice[field] = {"content": text} if field == "delta" else {"role": "assistant", "content": text, "refusal": None}
            if body.get("logprobs") and tokens:
                k = body.get("top_logprobs") or 0  # not asked: OpenAI sends an empty top list
                choice["logprobs"] = {"content": [logprob_entry(t, k) for t in tokens], "refusal": None}
        else:
            choice["text"] = text
            k = body.get("logprobs")
            if k and tokens:
                entries = [logprob_entry(t, k) for t in tokens]
                choice["logprobs"] = {"tokens": tokens, "token_logprobs": [e["logprob"] for e in entries],
                                      "top_logprobs": [{c["token"]: c["logprob"] for c in e["top_logprobs"]} for e in entries],
                                      "text_offset": []}
        return choice

    def _stream(self, chat: bool, body: dict, tokens: list[str], finish: str, fault: tuple) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()

        def send(doc: dict | str) -> None:
            self.wfile.write(f"data: {json.dumps(doc) if isinstance(doc, dict) else doc}\n\n".encode())
            self.wfile.flush()

        field = "delta" if chat else "text"
        if chat:  # OpenAI opens with a chunk that carries only the role
            first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
            send(self._envelope(chat, body, [first], stream=True))
        for i, token in enumerate(tokens):
            if fault[0] == "stream_error" and i == fault[1]:
                send({"error": {"message": "injected failure mid-stream", "type": "server_error", "param": None, "code": None}})
                return
            if fault[0] == "token_delay":
                time.sleep(fault[1])
            send(self._envelope(chat, body, [self._choice(chat, body, [token], None, field)], stream=True))
        last = self._choice(chat, body, [], finish, field)
        if chat:
            last["delta"] = {}
        send(self._envelope(chat, body, [last], stream=True))
        if (body.get("stream_options") or {}).get("include_usage") and fault[0] != "no_usage":
            send(self._envelope(chat, body, [], stream=True) | {"usage": self._usage(body, tokens)})
        send("[DONE]")
