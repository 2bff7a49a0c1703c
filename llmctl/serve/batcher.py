"""Continuous batching for one local model: a worker thread decodes every running request together.

A request that arrives while others decode joins the batch at the next step (its prompt is prefilled
on its own first, so the running rows wait for one forward pass, not for each other); a row leaves
as soon as it finishes. On a CPU or a GPU one forward pass over 8 rows costs far less than 8 passes,
so throughput grows with the number of clients while each request's text stays what it would be
alone. A client that leaves drops its row at the next step; closing the batcher ends every running
row as "interrupted" and fails what is still waiting.

Time to first token under load: requests that arrive during a prefill are prefilled before the next
decode step (at most --max-batch rows between two steps, so the running rows are held back by a
bounded amount), since a decode step there would delay every newcomer's first token by one token's
time. A burst is prefilled in as many passes as gives its rows the least mean wait for their first
token, from what passes cost on this machine (pass_cost.py).
"""

from __future__ import annotations

import atexit
import queue
import threading
from typing import Callable, Iterator

from llmctl.backends.base import Chunk, GenerationRequest, Response
from llmctl.backends.hf_decode import DecodeBatch
from llmctl.backends.pass_cost import PassCost
from llmctl.backends.prefix_cache import PrefixCache
from llmctl.errors import LlmctlError


class ServerStopping(LlmctlError):
    """The server is shutting down: requests still waiting are not started."""


class Job:
    """One request in the batcher: its row, and where its chunks go (a queue, or a callback)."""

    def __init__(self, put: Callable[[object], None] | None = None) -> None:
        self.chunks: queue.SimpleQueue = queue.SimpleQueue()
        self.put = put or self.chunks.put
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
    def __init__(self, backend, max_batch: int = 8, observe: Callable[[str, float], None] | None = None,
                 prefix_cache_bytes: int = 0):
        self.backend, self.max_batch = backend, max_batch
        # Prompts that begin alike (a system prompt, an agent's tools) are computed once: see prefix_cache.py
        self.prefix_cache = PrefixCache(prefix_cache_bytes) if prefix_cache_bytes > 0 else None
        self.pass_cost = PassCost()  # learnt from this model's passes: how to cut a burst's prefill
        self.observe = observe or (lambda name, value: None)  # metrics: batch sizes
        self.waiting: list[Job] = []
        self.ready = threading.Condition()
        self.lock = threading.Lock()  # held for each forward pass: embeddings use the same model between steps
        self.closed = False
        self.running = 0
        self.stats = {"batches": 0, "largest_batch": 0, "finished": {}}  # for /health
        if self.prefix_cache is not None:
            self.stats["prefix_cache"] = self.prefix_cache.stats
        self.worker = threading.Thread(target=self._run, name=f"batcher-{backend.name}", daemon=True)
        self.worker.start()
        # A thread that ran torch must be finished before the interpreter exits: torch's per-thread pools
        # are torn down then, and a still-running owner aborts the process ("terminate called ...").
        atexit.register(self.close)

    def enqueue(self, backend, request: GenerationRequest, put: Callable[[object], None] | None = None) -> Job:
        """Queue a request for `backend` (this model, or an adapter view of it); a bad one (too long,
        empty, a grammar that does not compile) raises now, before anything is queued."""
        job = Job(put)
        job.row = backend.prepare_row(request, cancelled=lambda: job.cancelled.is_set() or self.closed)
        with self.ready:
            if self.closed:
                raise ServerStopping("the server is shutting down")
            self.waiting.append(job)
            self.ready.notify()
        return job

    def submit(self, request: GenerationRequest, backend=None) -> Response:
        backend = backend or self.backend
        job = self.enqueue(backend, request)
        return Response(backend.name, request, job.stream(), backend.load_seconds)

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    def _joiners(self, batch: DecodeBatch) -> list[Job] | None:
        """Jobs to add at this step (waiting only when nothing runs); None when closed."""
        with self.ready:
            while not self.waiting and not len(batch) and not self.closed:
                self.ready.wait()
            if self.closed:
                return None
            if not batch.can_join():
                return []
            room = self.max_batch - len(batch)
            joining, self.waiting = self.waiting[:room], self.waiting[room:]
        return [job for job in joining if not job.cancelled.is_set()]

    def _new_batch(self) -> DecodeBatch:
        b = self.backend
        return DecodeBatch(b.model, b.device, b.pad_id, b.eos_ids, b._token_info, self.prefix_cache, self.pass_cost)

    def _deliver(self, jobs: dict[int, Job], events) -> None:
        for row, chunk in events:
            job = jobs[id(row)]
            job.put(chunk)
            if chunk.finish_reason:
                del jobs[id(row)]
                finished = self.stats["finished"]
                finished[chunk.finish_reason] = finished.get(chunk.finish_reason, 0) + 1

    def _run(self) -> None:
        batch = self._new_batch()
        jobs: dict[int, Job] = {}
        admitted = 0  # rows prefilled since the last decode step
        while (joining := self._joiners(batch)) is not None:
            try:
                if joining:
                    if not len(batch):
                        self.stats["batches"] += 1
                    jobs.update({id(job.row): job for job in joining})
                    with self.lock:
                        self._deliver(jobs, batch.add([job.row for job in joining]))
                    admitted += len(joining)
                self.running = len(batch)
                self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
                if joining and self.waiting and len(batch) < self.max_batch and admitted < self.max_batch:
                    continue  # more arrived meanwhile: their first tokens before the next step
                if len(batch):
                    self.observe("batch_size", len(batch))
                    with self.lock:
                        self._deliver(jobs, batch.step())
                admitted = 0
            except Exception as e:  # noqa: BLE001 - a forward pass failed: every row in it gets the error
                for job in jobs.values():
                    job.put(e)
                jobs.clear()
                batch = self._new_batch()
                admitted = 0
        self._deliver(jobs, batch.cancel_all())
        self.running = 0

    def health(self) -> dict:
        """What /health shows: the counters, and once passes have run, their cost as fitted now (None
        until passes of different sizes tell the two terms apart). Fitted here, not on the worker's path."""
        return {**self.stats, "pass_cost": self.pass_cost.summary()} if self.pass_cost.samples else dict(self.stats)

    def close(self, timeout: float = 30.0) -> None:
        """Stop: running rows end as 'interrupted' at their next token, waiting requests fail."""
        atexit.unregister(self.close)
        with self.ready:
            self.closed = True
            waiting, self.waiting = self.waiting, []
            self.ready.notify_all()
        for job in waiting:
            job.put(ServerStopping("the server is shutting down"))
        if threading.current_thread() is not self.worker:
            self.worker.join(timeout)
