"""A real HTTP server on 127.0.0.1 that speaks the OpenAI wire format, with injectable faults.

Replies are deterministic ("Echo: " + the last user message, one word a token) so tests can check
streaming, logprobs, stop and max_tokens exactly. Every request body is recorded.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODELS = ("fake-model",)


class FakeOpenAI(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, api_key: str | None = None):
        super().__init__(("127.0.0.1", 0), Handler)
        self.api_key = api_key
        self.faults: deque = deque()  # consumed one per request: ("status", 429), ("sleep", s), ...
        self.requests: list[dict] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def __enter__(self) -> "FakeOpenAI":
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()


def reply_tokens(body: dict) -> list[str]:
    if "messages" in body:
        last = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
    else:
        last = body.get("prompt", "")
    words = ("Echo: " + last).split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def logprob_entry(token: str, k: int) -> dict:
    # The generated token has probability 0.5; alternatives share what is left.
    top = [{"token": token, "logprob": math.log(0.5), "bytes": list(token.encode())}]
    top += [{"token": f"alt{i}", "logprob": math.log(0.5 / (2 ** (i + 1))), "bytes": None} for i in range(k - 1)]
    return {"token": token, "logprob": math.log(0.5), "bytes": list(token.encode()), "top_logprobs": top}


class Handler(BaseHTTPRequestHandler):
    server: FakeOpenAI

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _json(self, status: int, doc: dict) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        self._json(status, {"error": {"message": message, "type": kind, "param": param, "code": None}})

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "test"} for m in MODELS]})
        else:
            self._error(404, "not found")

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        self.server.requests.append(body)
        if self.server.api_key and self.headers.get("Authorization") != f"Bearer {self.server.api_key}":
            return self._error(401, "Incorrect API key provided", kind="invalid_api_key")
        fault = self.server.faults.popleft() if self.server.faults else None
        if fault and fault[0] == "status":
            return self._error(fault[1], f"injected {fault[1]}", kind="server_error")
        if fault and fault[0] == "sleep":
            time.sleep(fault[1])
        if fault and fault[0] == "reject_param":
            return self._error(400, f"Unrecognized request argument supplied: {fault[1]}", param=fault[1])
        if fault and fault[0] == "max_tokens_unsupported" and "max_tokens" in body:
            return self._error(400, "Unsupported parameter: 'max_tokens' is not supported with this model. "
                                    "Use 'max_completion_tokens' instead.", param="max_tokens")
        if body.get("model") not in MODELS:
            return self._error(404, f"The model `{body.get('model')}` does not exist", kind="model_not_found")
        chat = self.path.rstrip("/").endswith("/chat/completions")
        tokens, finish = self._limit(reply_tokens(body), body)
        (self._stream if body.get("stream") else self._whole)(chat, body, tokens, finish)

    def _limit(self, tokens: list[str], body: dict) -> tuple[list[str], str]:
        limit = body.get("max_completion_tokens") or body.get("max_tokens") or 1000
        text, kept = "", []
        for token in tokens:
            for stop in body.get("stop") or []:
                if stop in text + token:
                    return kept, "stop"
            if len(kept) == limit:
                return kept, "length"
            kept.append(token)
            text += token
        return kept, "stop"

    def _usage(self, body: dict, tokens: list[str]) -> dict:
        prompt = len(json.dumps(body.get("messages") or body.get("prompt")).split())
        return {"prompt_tokens": prompt, "completion_tokens": len(tokens), "total_tokens": prompt + len(tokens)}

    def _choice(self, chat: bool, body: dict, tokens: list[str], finish: str | None, delta: bool) -> dict:
        text = "".join(tokens)
        choice: dict = {"index": 0, "finish_reason": finish}
        k = body.get("top_logprobs") if chat else body.get("logprobs")
        if chat:
            choice["delta" if delta else "message"] = {"role": "assistant", "content": text}
            if body.get("logprobs"):
                choice["logprobs"] = {"content": [logprob_entry(t, k or 1) for t in tokens]}
        else:
            choice["text"] = text
            if k:
                entries = [logprob_entry(t, k) for t in tokens]
                choice["logprobs"] = {"tokens": tokens, "token_logprobs": [e["logprob"] for e in entries],
                                      "top_logprobs": [{c["token"]: c["logprob"] for c in e["top_logprobs"]} for e in entries],
                                      "text_offset": []}
        return choice

    def _envelope(self, chat: bool, choices: list, usage: dict | None = None) -> dict:
        doc = {"id": "cmpl-fake", "object": "chat.completion.chunk" if chat else "text_completion",
               "created": 0, "model": "fake-model", "choices": choices}
        if usage is not None:
            doc["usage"] = usage
        return doc

    def _whole(self, chat: bool, body: dict, tokens: list[str], finish: str) -> None:
        doc = self._envelope(chat, [self._choice(chat, body, tokens, finish, delta=False)], self._usage(body, tokens))
        doc["object"] = "chat.completion" if chat else "text_completion"
        self._json(200, doc)

    def _stream(self, chat: bool, body: dict, tokens: list[str], finish: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()

        def send(doc) -> None:
            self.wfile.write(f"data: {json.dumps(doc) if isinstance(doc, dict) else doc}\n\n".encode())
            self.wfile.flush()

        for token in tokens:
            send(self._envelope(chat, [self._choice(chat, body, [token], None, delta=True)]))
        send(self._envelope(chat, [self._choice(chat, {}, [], finish, delta=True)]))
        if (body.get("stream_options") or {}).get("include_usage"):
            send(self._envelope(chat, [], self._usage(body, tokens)))
        send("[DONE]")
