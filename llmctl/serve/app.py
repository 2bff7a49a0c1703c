"""The routes of `llmctl serve` as an ASGI (starlette) app: OpenAI's API over any `Backend`.

Every answer, errors included, is OpenAI-shaped JSON (or a server-sent event stream). Local models'
requests go to their continuous batcher; remote ones run in a thread each (bounded by admission:
at most `max_queue` generations at once, more get a clean 503). A client that leaves stops its
generation, streamed or not.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, AsyncIterator

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from llmctl.backends.base import Chunk, GenerationRequest
from llmctl.errors import LlmctlError, UsageError
from llmctl.serve.batcher import ServerStopping
from llmctl.serve.openai_api import APIError, add_usage, choice, envelope, parse_body, parse_request

if TYPE_CHECKING:
    from llmctl.serve.server import ModelServer

MAX_BODY = 1 << 20  # 1 MiB of JSON is far more than any prompt this server can take
MAX_HEADERS, MAX_HEADER_BYTES = 100, 16 * 1024  # h11 bounds headers still arriving; these bound what arrived
GENERATION_ROUTES = ("/v1/chat/completions", "/v1/completions")


def _json(status: int, doc: dict) -> Response:
    return JSONResponse(doc, status_code=status)


def _error(e: APIError) -> Response:
    return _json(e.status, e.body())


class Routes:
    """The handlers, over the server's state (models, batchers, limits, metrics)."""

    def __init__(self, server: "ModelServer"):
        self.server = server

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        request.state.cleanups = []  # run once the answer is sent, or the client has left
        path = request.url.path.rstrip("/")
        try:
            response = await self.dispatch(request, path)
        except APIError as e:
            response = _error(e)
        except ClientDisconnect:
            return  # the client left before its body arrived: nobody to answer
        except ServerStopping as e:
            response = _error(APIError(503, str(e), "overloaded"))
        except Exception as e:  # noqa: BLE001 - a bug or a failed generation: an error body, never a traceback
            response = _error(APIError(500, f"generation failed: {type(e).__name__}: {e}", "server_error"))
        self.server.metrics.request(path if path in self.server.known_routes else "other", response.status_code)
        try:
            await response(scope, receive, send)
        finally:
            for cleanup in request.state.cleanups:
                cleanup()

    def _authorized(self, request: Request) -> bool:
        key = self.server.api_key
        given = request.headers.get("authorization", "")
        # compare_digest: the time taken does not tell an attacker how much of a guess was right
        return not key or hmac.compare_digest(given.encode("utf-8", "surrogateescape"), f"Bearer {key}".encode())

    async def dispatch(self, request: Request, path: str) -> Response:
        srv = self.server
        headers = request.scope["headers"]
        if len(headers) > MAX_HEADERS or sum(len(k) + len(v) for k, v in headers) > MAX_HEADER_BYTES:
            raise APIError(431, f"too many or too large headers (at most {MAX_HEADERS}, {MAX_HEADER_BYTES} bytes)")
        if request.method in ("GET", "HEAD"):
            if path == "/health" and (not srv.protect_health or self._authorized(request)):
                return _json(200, {"status": "ok", "models": list(srv.backends),
                                   "batching": {name: b.health() for name, b in srv.batchers.items()}})
            if not self._authorized(request):
                raise APIError(401, "invalid or missing API key", "invalid_api_key")
            if path == "/v1/models":
                return _json(200, {"object": "list", "data": [
                    {"id": name, "object": "model", "created": int(srv.started), "owned_by": "llmctl"}
                    for name in srv.backends]})
            if path == "/metrics":
                return Response(srv.metrics.render(), media_type="text/plain; version=0.0.4")
            raise APIError(404, f"no route {request.url.path}", "not_found")
        if request.method != "POST":
            raise APIError(405, f"method {request.method} is not allowed here", "method_not_allowed")
        if path not in (*GENERATION_ROUTES, "/v1/embeddings"):
            raise APIError(404, f"no route {request.url.path}", "not_found")
        if not self._authorized(request):
            raise APIError(401, "invalid or missing API key", "invalid_api_key")
        body = parse_body(await self._read_body(request))
        if path == "/v1/embeddings":
            from llmctl.serve.embeddings_route import embeddings

            return await embeddings(srv, body)
        chat = path.endswith("chat/completions")
        model, gen, n, stream = parse_request(body, chat, srv.default_max_tokens, srv.max_tokens_limit)
        backend = srv.backends.get(model)
        if backend is None:
            raise APIError(404, f"the model '{model}' is not served here (served: {', '.join(srv.backends)})",
                           "model_not_found", "model")
        srv.check_capabilities(backend, gen)
        release = srv.admit()
        if release is None:
            raise APIError(503, "the server is busy: too many requests waiting; retry shortly", "overloaded")
        request.state.cleanups.append(release)
        if stream:
            return await self._stream(request, model, gen, n, chat, body)
        return await self._whole(request, model, gen, n, chat)

    async def _read_body(self, request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and int(length) > MAX_BODY:  # h11 has checked it is a number
            raise APIError(413, f"request body of {length} bytes is over the {MAX_BODY} limit")

        async def read() -> bytes:
            data = bytearray()
            async for part in request.stream():  # chunked bodies too
                data += part
                if len(data) > MAX_BODY:
                    raise APIError(413, f"the request body is over the {MAX_BODY} byte limit")
            return bytes(data)

        try:
            return await asyncio.wait_for(read(), self.server.read_timeout)
        except asyncio.TimeoutError:
            raise APIError(408, f"the request body did not arrive within {self.server.read_timeout:g} s",
                           "timeout") from None

    # -- generation ----------------------------------------------------------------------------------
    def _requests(self, request: GenerationRequest, n: int):
        seed = request.params.seed
        for i in range(n):  # n choices: seed, seed+1, ... so each is reproducible on its own
            yield i, replace(request, params=replace(request.params, seed=None if seed is None else seed + i))

    async def _whole(self, http: Request, model: str, request: GenerationRequest, n: int, chat: bool) -> Response:
        srv = self.server
        # All n choices are queued before any is read, so a batching model decodes them together.
        runs = [srv.generation(model, req) for _, req in self._requests(request, n)]
        http.state.cleanups.extend(run.cancel for run in runs)
        for run in runs:
            await run.start()
        watcher = asyncio.ensure_future(_until_disconnected(http))
        results = asyncio.ensure_future(asyncio.gather(*(run.collect() for run in runs)))
        try:
            await asyncio.wait([watcher, results], return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
        if not results.done():  # the client left: stop generating for nobody
            for run in runs:
                run.cancel()
            results.cancel()
            return Response(status_code=499)
        outputs = results.result()
        choices, usage = [], {"prompt_tokens": 0, "completion_tokens": 0}
        for i, (run, (text, finish, tokens, use)) in enumerate(zip(runs, outputs)):
            calls = run.tool_calls(text)
            choices.append(choice(chat, i, "" if calls else text, "tool_calls" if calls else finish, tokens,
                                  bool(request.top_probs), False, calls))
            add_usage(usage, use)
        return _json(200, envelope(chat, model, choices, False, usage))

    async def _stream(self, http: Request, model: str, request: GenerationRequest, n: int, chat: bool,
                      body: dict) -> Response:
        srv = self.server
        rid = envelope(chat, model, [], True)["id"]
        runs = [(i, req, srv.generation(model, req)) for i, req in self._requests(request, n)]
        http.state.cleanups.extend(run.cancel for _, _, run in runs)
        await runs[0][2].start()  # a bad request fails here, as a plain JSON error, before the stream starts
        first = await runs[0][2].first()

        async def events() -> AsyncIterator[str]:
            usage = {"prompt_tokens": 0, "completion_tokens": 0}
            for index, (i, req, run) in enumerate(runs):
                try:
                    if index:
                        await run.start()
                    async for delta in _deltas(chat, i, req, run, first if index == 0 else None):
                        yield _event(envelope(chat, model, [delta], True, rid=rid))
                    error = run.error
                except Exception as e:  # noqa: BLE001 - told to the client in the stream, never a traceback
                    error = e.message if isinstance(e, APIError) else str(e)
                if error:
                    yield _event({"error": {"message": error, "type": "server_error", "param": None, "code": None}})
                    break
                add_usage(usage, run.usage)
            if (body.get("stream_options") or {}).get("include_usage"):
                yield _event(envelope(chat, model, [], True, usage, rid=rid))
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _deltas(chat: bool, i: int, request: GenerationRequest, run: "Generation",
                  first: Chunk | None) -> AsyncIterator[dict]:
    """The stream's choice deltas for one generation: its text as it comes, then its finish reason."""
    async def chunks():
        if first is not None:
            yield first
            if first.finish_reason:
                return
        async for chunk in run.chunks():
            yield chunk

    # With tools on offer, the answer may be a call: held back until it is whole, then sent as
    # delta.tool_calls, or as text if it was not one.
    hold = chat and bool(request.tools) and request.tool_choice != "none"
    held, tokens = [], []
    async for chunk in chunks():
        if chunk.error:
            run.error = chunk.error
            return
        if chunk.text and not hold:
            yield choice(chat, i, chunk.text, None, chunk.tokens, bool(request.top_probs), True)
        elif chunk.text:
            held.append(chunk.text)
            tokens.extend(chunk.tokens)
        if chunk.finish_reason:
            calls = run.tool_calls("".join(held))
            if calls:
                yield choice(chat, i, "", None, [], False, True, calls)
            elif held:
                yield choice(chat, i, "".join(held), None, tokens, bool(request.top_probs), True)
            yield choice(chat, i, "", "tool_calls" if calls else chunk.finish_reason, [], False, True)


def _event(doc: dict[str, Any]) -> str:
    return f"data: {json.dumps(doc)}\n\n"


async def _until_disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


class Generation:
    """One choice being generated, read asynchronously: from a batcher's job or a remote backend's thread."""

    def __init__(self, server: "ModelServer", model: str, request: GenerationRequest):
        self.server, self.model, self.request = server, model, request
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.error: str | None = None
        self.usage: dict[str, int] = {}
        self.finish: str | None = None
        self.started_at = time.perf_counter()
        self.first_at: float | None = None
        self._job = None
        self._calls = []

    def tool_calls(self, text: str) -> list:
        """The calls in the answer: as the remote server sent them, or parsed from a local model's text."""
        if self._calls or not self.request.tools or self.server.backends[self.model].capabilities.remote:
            return self._calls
        from llmctl.backends.tools import parse_tool_calls

        return parse_tool_calls(text, self.request)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        def put(item) -> None:
            loop.call_soon_threadsafe(self.queue.put_nowait, item)

        batcher = self.server.batchers.get(self.model)
        backend = self.server.backends[self.model]
        try:
            if batcher is not None:
                self._job = await run_in_threadpool(batcher.enqueue, backend, self.request, put)
            else:
                threading.Thread(target=self._remote, args=(backend, put), daemon=True).start()
        except UsageError as e:  # the request itself is bad (too long, empty, an unusable schema)
            raise APIError(400, str(e)) from None

    def _remote(self, backend, put) -> None:
        chunks = backend.stream_chunks(self.request)
        try:
            for chunk in chunks:
                if self.cancelled.is_set() or self.server.stopping.is_set():
                    put(Chunk(finish_reason="interrupted"))
                    break
                put(chunk)
                if chunk.finish_reason:
                    break
        except Exception as e:  # noqa: BLE001 - handed to the reader, who reports it
            put(e)
        finally:
            close = getattr(chunks, "close", None)
            if close:
                close()

    async def chunks(self) -> AsyncIterator[Chunk]:
        while True:
            item = await self.queue.get()
            if isinstance(item, BaseException):
                if isinstance(item, UsageError):
                    raise APIError(400, str(item)) from None
                raise item
            if item.text and self.first_at is None:
                self.first_at = time.perf_counter()
                self.server.metrics.observe("ttft", self.first_at - self.started_at)
            if item.finish_reason:
                self.finish, self.usage = item.finish_reason, item.usage or {}
                self.error, self._calls = item.error, item.tool_calls
                self._account()
            yield item
            if item.finish_reason:
                return

    def _account(self) -> None:
        done = self.usage.get("completion_tokens", 0)
        self.server.metrics.usage(self.usage.get("prompt_tokens", 0), done, self.usage.get("cached_tokens", 0))
        if self.first_at is not None and done > 1:
            per_token = (time.perf_counter() - self.first_at) / (done - 1)
            self.server.metrics.observe("per_token", per_token)

    async def first(self) -> Chunk | None:
        """The first chunk, read before the stream's headers go out (so an error is still a JSON answer)."""
        async for chunk in self.chunks():
            if chunk.error:
                raise APIError(500, f"generation failed: {chunk.error}", "server_error")
            return chunk
        return None

    async def collect(self) -> tuple[str, str | None, list, dict]:
        parts, tokens = [], []
        async for chunk in self.chunks():
            parts.append(chunk.text)
            tokens.extend(chunk.tokens)
        if self.error:
            raise APIError(500, f"generation failed: {self.error}", "server_error")
        return "".join(parts), self.finish, tokens, self.usage

    def cancel(self) -> None:
        self.cancelled.set()
        if self._job is not None:
            self._job.cancelled.set()
