"""How the server prefills a burst of requests: the cost of a forward pass learnt from the passes it
runs, the burst cut into the passes that give the least total wait for first tokens (each row still
gets exactly its solo text), a shared beginning computed on its own only when that pays, and rows that
wait prefilled before the running rows take their next step."""

from __future__ import annotations

import threading
import time

import pytest

from llmctl.backends.base import GenerationRequest, Message, SamplingParams
from llmctl.backends.hf_decode import DecodeBatch
from llmctl.backends.pass_cost import PassCost
from llmctl.backends.prefix_cache import PrefixCache
from llmctl.serve.batcher import Batcher
from tests.tiny_models import endless_chat_backend

PROMPTS = ["Hello there, how are you today?", "Hello there, how are you doing?", "What is the capital of France?",
           "ROMEO: But soft, what light", "x", "def add(a, b):"]


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    return endless_chat_backend(tmp_path_factory.mktemp("tiny-passes"), "passes")


def request(i: int, max_tokens: int = 6) -> GenerationRequest:
    params = SamplingParams(temperature=0.9 if i % 2 else 0, top_k=20, seed=i, max_tokens=max_tokens)
    return GenerationRequest([Message("user", PROMPTS[i])], params, top_probs=2)


def learnt(fixed: float, per_position: float) -> PassCost:
    """A pass cost that has seen passes of 1 to 64 positions costing exactly fixed + per_position * n."""
    cost = PassCost()
    for n in (1, 8, 16, 64) * 4:
        cost.record(n, fixed + per_position * n)
    return cost


def total_wait(cost: PassCost, sizes: list[float]) -> float:
    fixed, per_position = cost.fit()
    wait, done = 0.0, 0.0
    for j, size in enumerate(sizes, start=1):
        done += size
        wait += size * (j * fixed + per_position * done)
    return wait


def test_the_fit_finds_the_fixed_and_per_position_cost():
    cost = learnt(0.030, 0.0015)
    assert cost.fit() == pytest.approx((0.030, 0.0015))
    assert cost.summary() == {"fixed_ms": 30.0, "per_position_ms": 1.5}
    assert PassCost().fit() is None  # nothing seen yet
    same_size = PassCost()
    for seconds in (0.03, 0.031, 0.029, 0.03):
        same_size.record(16, seconds)
    assert same_size.fit() is None  # passes of one size cannot tell the two costs apart
    noisy = PassCost()
    for n, seconds in ((1, 0.05), (64, 0.01), (1, 0.06), (64, 0.012)):
        noisy.record(n, seconds)
    assert noisy.fit() is None and noisy.split(100) == [100.0]  # a line that goes down means nothing


def test_a_burst_is_split_where_arithmetic_dominates_and_kept_whole_where_the_fixed_cost_does():
    cpu = learnt(0.030, 0.0015)  # prefill compute-bound from a few dozen positions
    sizes = cpu.split(120)
    assert len(sizes) > 1 and sum(sizes) == pytest.approx(120)
    assert all(a - b == pytest.approx(0.030 / 0.0015) for a, b in zip(sizes, sizes[1:]))  # each smaller by fixed/per_position
    assert total_wait(cpu, sizes) < total_wait(cpu, [120.0])
    for count in range(1, 6):  # and no other count of passes of that shape, or of equal ones, does better
        assert total_wait(cpu, sizes) <= total_wait(cpu, [120 / count] * count) + 1e-9
    gpu = learnt(0.020, 0.000002)  # arithmetic nearly free next to reading the weights
    assert gpu.split(120) == [120.0]
    assert cpu.split(1) == [1.0]


def collect(batch: DecodeBatch, rows, got: dict) -> None:
    for row, chunk in batch.add(rows):
        got[id(row)].append(chunk)
    while len(batch):
        for row, chunk in batch.step():
            got[id(row)].append(chunk)


def test_rows_prefilled_in_several_passes_get_their_solo_text(backend, monkeypatch):
    solo = [backend.generate(request(i)) for i in range(len(PROMPTS))]
    texts = [s.text() for s in solo]  # generated now, before the spy below
    prefills = []
    original = DecodeBatch._prefill
    monkeypatch.setattr(DecodeBatch, "_prefill", lambda self, prompts, rows=None:
                        prefills.append(len(prompts)) or original(self, prompts, rows))
    cost = learnt(0.001, 0.001)  # a pass costs a few positions' arithmetic: many small passes
    planned = cost.split(sum(len(backend.prepare_row(request(i)).prompt_ids) for i in range(len(PROMPTS))))
    batch = DecodeBatch(backend.model, backend.device, backend.pad_id, backend.eos_ids, backend._token_info,
                        pass_cost=cost)
    rows = [backend.prepare_row(request(i)) for i in range(len(PROMPTS))]
    got = {id(r): [] for r in rows}
    collect(batch, rows, got)
    assert len(planned) > 2 and 2 < len(prefills) <= len(PROMPTS) and sum(prefills) == len(PROMPTS)
    assert ["".join(c.text for c in got[id(r)]) for r in rows] == texts
    probs = [t.prob for r in rows for c in got[id(r)] for t in c.tokens]
    assert probs == pytest.approx([t.prob for s in solo for t in s.tokens], abs=1e-5)
    assert len(cost.samples) == 16 + len(prefills) + 5  # each pass was recorded: the prefills and 5 steps


@pytest.mark.parametrize("worth_it", [True, False])
def test_a_shared_beginning_gets_a_pass_of_its_own_only_when_it_saves_more_than_the_pass_costs(backend, worth_it):
    ids = [backend.prepare_row(request(i)).prompt_ids for i in (0, 1)]
    shared = next(n for n in range(len(ids[0])) if ids[0][n] != ids[1][n])
    cost = learnt(0.001, 0.001) if worth_it else learnt(1.0, 0.0001)  # a pass worth 1 or 10,000 positions
    batch = DecodeBatch(backend.model, backend.device, backend.pad_id, backend.eos_ids, backend._token_info,
                        PrefixCache(64 << 20), cost)
    rows = [backend.prepare_row(request(i)) for i in (0, 1)]
    got = {id(r): [] for r in rows}
    collect(batch, rows, got)
    assert [r.cached for r in rows] == ([shared, shared] if worth_it else [0, 0])
    assert ["".join(c.text for c in got[id(r)]) for r in rows] == [backend.generate(request(i)).text() for i in (0, 1)]


def test_rows_waiting_after_a_prefill_get_their_first_token_before_the_running_rows_step(backend):
    batcher = Batcher(backend, max_batch=8)
    order, done = [], threading.Event()

    def recorder(name):
        def put(chunk):
            order.append((name, chunk))
            if name == "c" and getattr(chunk, "finish_reason", None):
                done.set()
        return put

    try:
        with batcher.lock:  # the worker takes "a" and then waits here for the model
            batcher.enqueue(backend, request(0, max_tokens=4), recorder("a"))
            deadline = time.monotonic() + 30
            while batcher.waiting and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not batcher.waiting
            batcher.enqueue(backend, request(1, max_tokens=4), recorder("b"))
            batcher.enqueue(backend, request(2, max_tokens=4), recorder("c"))
        assert done.wait(60)
    finally:
        batcher.close()
    names = [name for name, _ in order]
    # a's second token comes only after b and c have their first: they were prefilled before the step
    assert names.index("b") < [i for i, n in enumerate(names) if n == "a"][1]
    assert names.index("c") < [i for i, n in enumerate(names) if n == "a"][1]
