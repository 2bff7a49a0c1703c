"""The server's prefix cache: a prompt that begins like an earlier one (or like another arriving with it)
is computed only from where they differ, and every request still gets exactly its solo text."""

from __future__ import annotations

import urllib.request

import openai
import pytest
import torch

from llmctl.backends.base import GenerationRequest, Message, SamplingParams
from llmctl.backends.hf_decode import DecodeBatch
from llmctl.backends.prefix_cache import PrefixCache
from tests.serve_helpers import running_server
from tests.tiny_models import endless_chat_backend

PROMPTS = ["Hello there, how are you today?", "Hello there, how are you doing?", "What is the capital of France?",
           "Hello there, how are you today?", "x"]


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    return endless_chat_backend(tmp_path_factory.mktemp("tiny-prefix"), "pc")


def request(i: int) -> GenerationRequest:
    params = SamplingParams(temperature=0.9 if i % 2 else 0, top_k=20, seed=i, max_tokens=8)
    return GenerationRequest([Message("user", PROMPTS[i])], params, top_probs=2)


def test_rows_that_reuse_cached_beginnings_get_their_solo_text(backend):
    solo = [backend.generate(request(i)) for i in range(len(PROMPTS))]
    prompt_ids = [backend.prepare_row(request(i)).prompt_ids for i in range(len(PROMPTS))]
    system = next(n for n in range(len(prompt_ids[0])) if prompt_ids[0][n] != prompt_ids[2][n])
    cache = PrefixCache(64 << 20)
    for round_ in range(2):
        batch = DecodeBatch(backend.model, backend.device, backend.pad_id, backend.eos_ids, backend._token_info, cache)
        rows = [backend.prepare_row(request(i)) for i in range(len(PROMPTS))]
        got = {id(r): [] for r in rows}
        take = lambda events: [got[id(row)].append(chunk) for row, chunk in events]  # noqa: E731
        take(batch.add(rows[:3]))  # three arrive together, two more join a step later
        take(batch.step())
        take(batch.add(rows[3:]))
        while len(batch):
            take(batch.step())
        assert ["".join(c.text for c in got[id(r)]) for r in rows] == [s.text() for s in solo]
        probs = [t.prob for r in rows for c in got[id(r)] for t in c.tokens]
        assert probs == pytest.approx([t.prob for s in solo for t in s.tokens], abs=1e-5)
        cached = [r.cached for r in rows]
        if round_ == 0:
            # rows 0 and 1 arrived together sharing more than the system prompt: that was computed once
            shared01 = next(n for n in range(len(prompt_ids[0])) if prompt_ids[0][n] != prompt_ids[1][n])
            assert cached[0] == cached[1] == shared01 > system
            assert cached[2] == system  # with rows 0 and 1 it shares the chat template's beginning
            assert cached[3] == len(prompt_ids[3]) - 1  # row 0's prompt again: all but the last token
        else:  # every prompt was seen: only its last token is computed
            assert cached == [len(ids) - 1 for ids in prompt_ids]
        assert [c.usage["cached_tokens"] for r in rows for c in got[id(r)] if c.finish_reason] == cached
    assert cache.stats["reused_tokens"] > cache.stats["prompt_tokens"] / 2


def kv(length: int, value: float) -> tuple[torch.Tensor, torch.Tensor]:
    keys = torch.full((1, 2, length, 4), value)  # 1 layer, 2 heads, head size 4: 32 bytes a token, 64 with values
    return keys, keys.clone()


def test_the_cache_keeps_to_its_budget_and_to_each_adapter():
    cache = PrefixCache(budget_bytes=2 * 10 * 64)  # two 10-token prompts
    cache.put(None, list(range(10)), *kv(10, 1.0))
    cache.put(None, list(range(100, 110)), *kv(10, 2.0))
    assert cache.longest(None, list(range(10)) + [7])[1] == 10  # touched: now the most recently used
    cache.put(None, list(range(200, 210)), *kv(10, 3.0))  # over budget: the least recently used goes
    assert cache.used <= cache.budget and len(cache) == 2
    assert cache.longest(None, list(range(100, 110)))[0] is None
    entry, n = cache.longest(None, list(range(6)) + [99, 98])
    assert n == 6 and float(entry.keys[0, 0, 0, 0]) == 1.0
    assert cache.longest("an-adapter", list(range(10)) + [7]) == (None, 0)  # other weights, other keys
    assert cache.longest(None, [0, 1, 2, 50]) == (None, 0)  # below the shortest beginning worth reusing
    cache.put(None, list(range(5)), *kv(5, 4.0))  # a beginning of a cached prompt: nothing new to keep
    assert len(cache) == 2
    cache.put(None, list(range(12)), *kv(12, 5.0))  # extends a cached prompt: replaces it (and, over
    assert [e.ids for e in cache.entries.values()] == [list(range(12))]  # budget, the other goes)
    assert cache.used == 12 * 64 <= cache.budget


def test_the_server_reports_cached_prompt_tokens(backend):
    def ask(client, question):
        return client.chat.completions.create(
            model="pc", temperature=0, max_tokens=4,
            messages=[{"role": "system", "content": "You answer in one short sentence about geography."},
                      {"role": "user", "content": question}])

    with running_server({"pc": backend}, max_queue=4, shutdown_timeout=0) as srv:
        client = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=30)
        first, second = ask(client, "Where is Paris?"), ask(client, "Where is Lima?")
        assert first.usage.prompt_tokens_details.cached_tokens == 0
        assert 10 < second.usage.prompt_tokens_details.cached_tokens < second.usage.prompt_tokens
        with urllib.request.urlopen(srv.url.removesuffix("/v1") + "/metrics", timeout=10) as reply:
            metrics = reply.read().decode()
        cached = next(line for line in metrics.splitlines() if line.startswith('llmctl_tokens_total{kind="cached_prompt"}'))
        assert int(cached.split()[-1]) == second.usage.prompt_tokens_details.cached_tokens
        assert "llmctl_prefix_cache_bytes" in metrics
    with running_server({"pc": backend}, max_queue=4, shutdown_timeout=0, prefix_cache_mb=0) as srv:
        client = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=30)
        ask(client, "Where is Paris?")
        assert ask(client, "Where is Lima?").usage.prompt_tokens_details is None


def test_a_hash_collision_never_reuses_keys_of_another_prompt(monkeypatch):
    import llmctl.backends.prefix_cache as prefix_cache

    # Every prompt's beginnings hash alike by length: the worst collisions there could be.
    monkeypatch.setattr(prefix_cache, "chain_of", lambda adapter, ids: list(range(len(ids))))
    cache = PrefixCache(1 << 20)
    cache.put(None, [1, 2, 3, 4, 5, 6, 7, 8], *kv(8, 1.0))
    assert cache.longest(None, [1, 2, 3, 4, 5, 9, 9, 9])[1] == 5  # as far as they really agree
    assert cache.longest(None, [7, 7, 7, 7, 7, 7, 7, 7]) == (None, 0)
