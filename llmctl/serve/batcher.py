"""Batching concurrent requests to one local model: a worker thread decodes waiting requests together.

Requests that arrive while a batch is running wait for the next one (static batching): on a CPU or a
GPU, one forward pass over 8 rows costs far less than 8 passes, so throughput grows with the number of
clients while each request's text stays what it would be alone. A client that leaves drops its row at
the next step; closing the batcher stops every row and fails what is still waiting.
"""

from __future__ import annotations

import atexit
import queue
import threading
from typing import Iterator

from llmctl.backends.base import Chunk, GenerationRequest, Response
from llmctl.errors import LlmctlError


class ServerStopping(LlmctlError):
    """The server is shutting down: requests still waiting are not started."""


class _Job:
    def __init__(self) -> None:
        self.chunks: queue.SimpleQueue = queue.SimpleQueue()
        self.cancelled = threading.Event()
        self.row = None

    def stream(self) -> Iterator[Chunk]:
        try:
            while True:
                item = self.chunks.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason:
                    return
        finally:  # the reader stopped (finished, disconnected or failed): free the row
            self.cancelled.set()


class Batcher:
    def __init__(self, backend, max_batch: int = 8):
        self.backend, self.max_batch = backend, max_batch
        self.waiting: list[_Job] = []
        self.ready = threading.Condition()
        self.closed = False
        self.stats = {"batches": 0, "largest_batch": 0, "finished": {}}  # for /health
        self.worker = threading.Thread(target=self._run, name=f"batcher-{backend.name}", daemon=True)
        self.worker.start()
        # A thread that ran torch must be finished before the interpreter exits: torch's per-thread pools
        # are torn down then, and a still-running owner aborts the process ("terminate called ...").
        atexit.register(self.close)

    def submit(self, request: GenerationRequest) -> Response:
        """Queue a request; a bad one (too long, empty) raises now, before anything is queued."""
        job = _Job()
        job.row = self.backend.prepare_row(request, cancelled=lambda: job.cancelled.is_set() or self.closed)
        with self.ready:
            if self.closed:
                raise ServerStopping("the server is shutting down")
            self.waiting.append(job)
            self.ready.notify()
        return Response(self.backend.name, request, job.stream(), self.backend.load_seconds)

    def _next_batch(self) -> list[_Job] | None:
        with self.ready:
            while not self.waiting and not self.closed:
                self.ready.wait()
            if self.closed:
                return None
            batch, self.waiting = self.waiting[:self.max_batch], self.waiting[self.max_batch:]
        return [job for job in batch if not job.cancelled.is_set()]

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            if not batch:
                continue
            self.stats["batches"] += 1
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
            try:
                for index, chunk in self.backend.decode_batch([job.row for job in batch]):
                    batch[index].chunks.put(chunk)
                    if chunk.finish_reason:
                        finished = self.stats["finished"]
                        finished[chunk.finish_reason] = finished.get(chunk.finish_reason, 0) + 1
            except Exception as e:  # noqa: BLE001 - handed to every reader of this batch, who reports it
                for job in batch:
                    job.chunks.put(e)

    def close(self, timeout: float = 30.0) -> None:
        """Stop: running rows end as 'interrupted' at their next token, waiting requests fail."""
        atexit.unregister(self.close)
        with self.ready:
            self.closed = True
            waiting, self.waiting = self.waiting, []
            self.ready.notify_all()
        for job in waiting:
            job.chunks.put(ServerStopping("the server is shutting down"))
        self.worker.join(timeout)
