"""An OpenAI-compatible HTTP server over any `Backend` (stdlib only: no web framework to install).

Concurrent requests to a local model are decoded together in batches (batcher.py); remote models
take them as they come. Up to `max_queue` requests are admitted at once, more get a clean 503. A
client that disconnects mid-stream stops its generation and frees its slot.
"""

from __future__ import annotations

import hmac
import json
import socket
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from llmctl.backends.base import Backend, GenerationRequest, Response
from llmctl.errors import LlmctlError, UsageError
from llmctl.serve.batcher import Batcher, ServerStopping
from llmctl.serve.openai_api import APIError, choice, envelope, parse_request

MAX_BODY = 1 << 20  # 1 MiB of JSON is far more than any prompt this server can take


class ModelServer(ThreadingHTTPServer):
    daemon_threads = True
    # The listen backlog: socketserver's default of 5 refuses connections when dozens of clients
    # connect at once, before the queue can answer them with a clean 503.
    request_queue_size = 128

    def __init__(self, backends: dict[str, Backend], host: str = "127.0.0.1", port: int = 8000,
                 api_key: str | None = None, max_queue: int = 16, default_max_tokens: int = 256,
                 max_batch: int = 8, protect_health: bool = False):
        super().__init__((host, port), Handler)
        self.backends = backends
        # max_batch 1 still goes through a batcher: one request at a time, streamed as it decodes.
        self.batchers = {name: Batcher(b, max_batch) for name, b in backends.items() if b.capabilities.batching}
        self.api_key = api_key
        self.protect_health = protect_health  # /health says which models are loaded: private on some hosts
        self.admitted = threading.BoundedSemaphore(max_queue)
        self.default_max_tokens = default_max_tokens
        self.started = time.time()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self, model: str, request: GenerationRequest) -> Response:
        """Begin a generation: into a local model's batch queue, or straight to a remote model, which
        takes concurrent requests itself."""
        batcher = self.batchers.get(model)
        return batcher.submit(request) if batcher is not None else self.backends[model].generate(request)

    def server_close(self) -> None:
        for batcher in self.batchers.values():  # ends running generations so no thread outlives the server
            batcher.close()
        super().server_close()


class Handler(BaseHTTPRequestHandler):
    server: ModelServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # requests are not logged to the terminal by default
        pass

    def setup(self) -> None:
        super().setup()
        # One small write per streamed token: without TCP_NODELAY, Nagle's algorithm and the client's
        # delayed ACKs hold each one back for tens of milliseconds.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # -- plumbing ------------------------------------------------------------------------------------
    def _send_json(self, status: int, doc: dict) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _fail(self, error: APIError) -> None:
        self._send_json(error.status, error.body())

    def _authorized(self) -> bool:
        key = self.server.api_key
        given = self.headers.get("Authorization", "")
        # compare_digest: the time taken does not tell an attacker how much of a guess was right
        return not key or hmac.compare_digest(given.encode("utf-8", "surrogateescape"), f"Bearer {key}".encode())

    # -- routes --------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        if path == "/health" and (not self.server.protect_health or self._authorized()):
            return self._send_json(200, {"status": "ok", "models": list(self.server.backends),
                                         "batching": {name: b.stats for name, b in self.server.batchers.items()}})
        if not self._authorized():
            return self._fail(APIError(401, "invalid or missing API key", "invalid_api_key"))
        if path == "/v1/models":
            return self._send_json(200, {"object": "list", "data": [
                {"id": name, "object": "model", "created": int(self.server.started), "owned_by": "llmctl"}
                for name in self.server.backends]})
        self._fail(APIError(404, f"no route {self.path}", "not_found"))

    def do_POST(self) -> None:
        try:
            self._post()
        except APIError as e:
            self._fail(e)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client left; nothing to answer
        except ServerStopping as e:
            self._fail(APIError(503, str(e), "overloaded"))
        except Exception as e:  # noqa: BLE001 - a bug or a failed generation: an error body, never a traceback
            self._fail(APIError(500, f"generation failed: {type(e).__name__}: {e}", "server_error"))

    def _post(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        if path not in ("/v1/chat/completions", "/v1/completions"):
            raise APIError(404, f"no route {self.path}", "not_found")
        if not self._authorized():
            raise APIError(401, "invalid or missing API key", "invalid_api_key")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise APIError(413, f"request body of {length} bytes is over the {MAX_BODY} limit")
        try:
            body = json.loads(self.rfile.read(length) or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"the body is not valid JSON: {e}") from None
        chat = path.endswith("chat/completions")
        if not isinstance(body, dict):
            raise APIError(422, "the body must be a JSON object")
        model, request, n, stream = parse_request(body, chat, self.server.default_max_tokens)
        backend = self.server.backends.get(model)
        if backend is None:
            raise APIError(404, f"the model '{model}' is not served here (served: {', '.join(self.server.backends)})",
                           "model_not_found", "model")
        if not self.server.admitted.acquire(blocking=False):
            raise APIError(503, "the server is busy: too many requests waiting; retry shortly", "overloaded")
        try:
            (self._stream if stream else self._whole)(model, request, n, chat, body)
        finally:
            self.server.admitted.release()

    # -- generation ----------------------------------------------------------------------------------
    def _requests(self, request, n: int):
        seed = request.params.seed
        for i in range(n):  # n choices: seed, seed+1, ... so each is reproducible on its own
            yield i, replace(request, params=replace(request.params, seed=None if seed is None else seed + i))

    def _begin(self, model: str, request: GenerationRequest) -> Response:
        try:
            return self.server.start(model, request)
        except UsageError as e:  # the request itself is bad (too long, empty)
            raise APIError(400, str(e)) from None

    def _whole(self, model: str, request, n: int, chat: bool, body: dict) -> None:
        choices, usage = [], {"prompt_tokens": 0, "completion_tokens": 0}
        # All n choices are queued before any is read, so a batching model decodes them together.
        started = [(i, req, self._begin(model, req)) for i, req in self._requests(request, n)]
        for i, req, response in started:
            try:
                text = response.text()
            except UsageError as e:
                raise APIError(400, str(e)) from None
            choices.append(choice(chat, i, text, response.finish_reason, response.tokens, bool(req.top_probs), False))
            usage["prompt_tokens"] = response.usage.get("prompt_tokens", 0)
            usage["completion_tokens"] += response.usage.get("completion_tokens", 0)
        self._send_json(200, envelope(chat, model, choices, False, usage))

    def _stream(self, model: str, request, n: int, chat: bool, body: dict) -> None:
        rid = envelope(chat, model, [], True)["id"]
        started = False
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        for i, req in self._requests(request, n):
            response = self._begin(model, req)
            try:
                for delta in response:
                    if not started:
                        self._start_stream()
                        started = True
                    tokens = response.tokens[-1:] if req.top_probs else []
                    self._event(envelope(chat, model, [choice(chat, i, delta, None, tokens, bool(req.top_probs), True)],
                                         True, rid=rid))
            except LlmctlError as e:
                if not started:
                    raise APIError(400 if isinstance(e, UsageError) else 500, str(e)) from None
                self._event({"error": {"message": str(e), "type": "server_error", "param": None, "code": None}})
                break
            except (BrokenPipeError, ConnectionResetError):
                response.cancel()  # the client is gone: stop generating, free the model
                return
            if not started:
                self._start_stream()
                started = True
            self._event(envelope(chat, model, [choice(chat, i, "", response.finish_reason, [], False, True)], True, rid=rid))
            usage["prompt_tokens"] = response.usage.get("prompt_tokens", 0)
            usage["completion_tokens"] += response.usage.get("completion_tokens", 0)
        if (body.get("stream_options") or {}).get("include_usage"):
            self._event(envelope(chat, model, [], True, usage, rid=rid))
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()

    def _event(self, doc: dict[str, Any]) -> None:
        self.wfile.write(f"data: {json.dumps(doc)}\n\n".encode())
        self.wfile.flush()
