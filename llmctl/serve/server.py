"""An OpenAI-compatible HTTP server over any `Backend`: the app (app.py) under uvicorn, with limits.

Idle connections cost a socket, not a thread (asyncio), and are closed when they send no complete
request within `read_timeout`; at most `max_connections` are open at once. Shutdown stops accepting,
lets running generations finish for up to `shutdown_timeout` seconds, then ends them as "interrupted".
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
import threading
import time

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from llmctl.backends.base import Backend, GenerationRequest
from llmctl.serve.app import GENERATION_ROUTES, Generation, Routes
from llmctl.serve.batcher import Batcher
from llmctl.serve.metrics import Metrics
from llmctl.serve.openai_api import APIError

# Keys and values of recent prompts kept per model (SmolLM2-135M: ~46 KB a token in float32, so ~5,700 tokens)
DEFAULT_PREFIX_CACHE_MB = 256
MAX_HEADER_BYTES = 16 * 1024  # headers and request line together: more is refused with a 400


def guarded_protocol(read_timeout: float, max_connections: int) -> type:
    """uvicorn's h11 protocol, plus a deadline for a request's headers, a bound on open connections,
    and OpenAI-shaped JSON for requests h11 cannot parse."""

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                self.transport.close()  # over the bound: refused at once, so idle sockets cannot pile up
                return
            self._arm_deadline()

        def _arm_deadline(self) -> None:
            self._deadline = self.loop.call_later(read_timeout, self._expire)

        def _expire(self) -> None:
            if self.cycle is None or self.cycle.response_complete:  # no request under way: an idle or slow client
                if not self.transport.is_closing():
                    self.transport.close()

        def handle_events(self) -> None:
            try:
                super().handle_events()
            except (UnicodeError, ValueError, h11.LocalProtocolError):
                self.send_400_response("Invalid HTTP request received.")

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._deadline.cancel()
            if not self.transport.is_closing():
                self._arm_deadline()  # the next request on this keep-alive connection gets its own deadline

        def connection_lost(self, exc) -> None:
            deadline = getattr(self, "_deadline", None)
            if deadline is not None:
                deadline.cancel()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
                self.transport.close()
                return
            body = json.dumps(APIError(400, f"malformed HTTP request: {msg}").body()).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       (b"connection", b"close")]
            try:
                for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                              h11.EndOfMessage()):
                    self.transport.write(self.conn.send(event))
            except h11.LocalProtocolError:
                pass
            self.transport.close()

    return GuardedH11Protocol


def _logging(access_log: bool) -> None:
    """uvicorn's own messages stay quiet (errors only); the access log goes to stderr when asked for."""
    error = logging.getLogger("uvicorn.error")
    error.setLevel(logging.ERROR)
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    if access_log:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        access.addHandler(handler)
        access.setLevel(logging.INFO)


class ModelServer:
    def __init__(self, backends: dict[str, Backend], host: str = "127.0.0.1", port: int = 8000,
                 api_key: str | None = None, max_queue: int = 16, default_max_tokens: int = 256,
                 max_batch: int = 8, protect_health: bool = False, *, max_tokens_limit: int = 4096,
                 cors: list[str] | None = None, access_log: bool = False, shutdown_timeout: float = 30.0,
                 read_timeout: float = 30.0, keep_alive_timeout: float = 5.0, max_connections: int = 1024,
                 prefix_cache_mb: float = DEFAULT_PREFIX_CACHE_MB):
        self.backends = backends
        self.metrics = Metrics()
        self.batchers = self._batchers(backends, max_batch, int(prefix_cache_mb * 2**20))
        self.api_key = api_key
        self.protect_health = protect_health  # /health says which models are loaded: private on some hosts
        self.max_queue, self.admitted = max_queue, 0
        self.default_max_tokens, self.max_tokens_limit = default_max_tokens, max_tokens_limit
        self.read_timeout, self.shutdown_timeout = read_timeout, shutdown_timeout
        self.started = time.time()
        self.stopping = threading.Event()
        self.known_routes = {"/health", "/v1/models", "/metrics", "/v1/embeddings", *GENERATION_ROUTES}
        self.metrics.gauges["llmctl_queue_depth"] = lambda: {n: b.queue_depth for n, b in self.batchers.items()}
        self.metrics.gauges["llmctl_running_rows"] = lambda: {n: b.running for n, b in self.batchers.items()}
        self.metrics.gauges["llmctl_prefix_cache_bytes"] = lambda: {n: b.prefix_cache.used for n, b in self.batchers.items()
                                                                   if b.prefix_cache is not None}
        self.metrics.gauges["llmctl_admitted_requests"] = lambda: {"all": self.admitted}
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(1024)  # dozens of clients connecting at once are queued, not refused
        self.server_address = self.sock.getsockname()
        app = Routes(self)
        if cors:
            from starlette.middleware.cors import CORSMiddleware

            app = CORSMiddleware(app, allow_origins=cors, allow_methods=["GET", "POST"],
                                 allow_headers=["Authorization", "Content-Type"])
        _logging(access_log)
        config = uvicorn.Config(app, http=guarded_protocol(read_timeout, max_connections), ws="none",
                                lifespan="off", log_config=None, access_log=access_log,
                                timeout_keep_alive=keep_alive_timeout, h11_max_incomplete_event_size=MAX_HEADER_BYTES,
                                timeout_graceful_shutdown=shutdown_timeout + 10)
        self.uvicorn = uvicorn.Server(config)
        self.finished = threading.Event()
        self.running = False

    def _batchers(self, backends: dict[str, Backend], max_batch: int, prefix_cache_bytes: int) -> dict[str, Batcher]:
        """One batcher per model in memory: adapters that share a base share its batcher (mixed batches)."""
        by_model: dict[int, Batcher] = {}
        out = {}
        for name, backend in backends.items():
            if not backend.capabilities.batching:
                continue
            key = id(backend.model)
            if key not in by_model:
                by_model[key] = Batcher(backend, max_batch, observe=self.metrics.observe,
                                        prefix_cache_bytes=prefix_cache_bytes)
            out[name] = by_model[key]
        return out

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"

    # -- used by the routes ----------------------------------------------------------------------
    def admit(self):
        """A release function if the request may start now, else None (the caller answers 503)."""
        if self.admitted >= self.max_queue or self.stopping.is_set():
            return None
        self.admitted += 1  # only the event loop thread admits and releases: no lock needed
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.admitted -= 1

        return release

    def generation(self, model: str, request: GenerationRequest) -> Generation:
        return Generation(self, model, request)

    def check_capabilities(self, backend: Backend, request: GenerationRequest) -> None:
        caps = backend.capabilities
        if getattr(request, "tools", None) and not caps.tools:
            raise APIError(400, f"the model '{backend.name}' does not support tools", param="tools")
        if getattr(request, "response_format", None) and not caps.schemas:
            raise APIError(400, f"the model '{backend.name}' does not support response_format", param="response_format")

    # -- running ---------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Serve until `shutdown()` (from another thread); uvicorn runs in its own thread so that the
        caller's signal handlers, not uvicorn's, decide when to stop."""
        thread = threading.Thread(target=self._run, name="uvicorn", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(0.5)  # a timed join: Ctrl-C still reaches the main thread

    def _run(self) -> None:
        self.running = True
        try:
            asyncio.run(self.uvicorn.serve(sockets=[self.sock]))
        finally:
            self.finished.set()

    def shutdown(self) -> None:
        """Stop accepting; running generations get `shutdown_timeout` seconds, then end as 'interrupted'."""
        self.stopping.set()
        self.uvicorn.should_exit = True
        deadline = time.monotonic() + self.shutdown_timeout
        while self.admitted and time.monotonic() < deadline:
            time.sleep(0.05)
        self._close_batchers()
        if self.running:
            self.finished.wait(15)

    def _close_batchers(self) -> None:
        for batcher in set(self.batchers.values()):  # ends running generations so no thread outlives the server
            batcher.close()

    def server_close(self) -> None:
        self._close_batchers()
        self.sock.close()
