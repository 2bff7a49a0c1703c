"""Keys and values of recent prompts, so a prompt that starts like one of them is prefilled only from
where the two part.

Chat requests to one server share long beginnings: the chat template's system prompt, an agent's
instructions and tool list, a document asked about again and again. Prefill is the compute-bound part
of a request (every prompt token through every layer), and when many requests arrive together it is
what their time to first token waits for. A key/value pair at position t depends only on tokens 0..t,
so the cached keys and values of any prompt are exact for every prompt that starts with the same
tokens, up to where they differ.

Entries are whole prompts (keys and values of every layer in one tensor each, on the model's
device), found through a chained hash of each of their beginnings, so a lookup costs one dictionary
probe per prompt token however many prompts are cached; entries are dropped least recently used
first when the byte budget is full. Adapters change keys and values, so each entry belongs to one
adapter (or the base), and the chain starts from the adapter's name.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

# Fewer shared tokens than this are not worth a lookup's copies: prefill them again.
MIN_REUSE = 4


@dataclass
class CachedPrompt:
    adapter: str | None
    ids: list[int]
    keys: torch.Tensor  # (layers, heads, length, head dim)
    values: torch.Tensor
    chain: list[int]  # chain[i]: the hash of ids[:i + 1] (and the adapter)

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes


def chain_of(adapter: str | None, ids: list[int]) -> list[int]:
    """A hash for every beginning of `ids`, each from the one before: O(len) for all of them."""
    out, h = [], hash(("llmctl-prefix", adapter))
    for token in ids:
        h = hash((h, token))
        out.append(h)
    return out


def common_length(a: list[int], b: list[int]) -> int:
    """How many leading tokens two id sequences share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class PrefixCache:
    """The keys and values of recent prompts on one model, within `budget_bytes`."""

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self.entries: OrderedDict[int, CachedPrompt] = OrderedDict()  # least recently used first
        self.by_beginning: dict[int, set[int]] = {}  # chain hash -> entries that begin so
        self.used = 0
        self.next_key = 0
        self.lock = threading.Lock()
        self.stats = {"lookups": 0, "hits": 0, "reused_tokens": 0, "prompt_tokens": 0}

    def __len__(self) -> int:
        return len(self.entries)

    def _deepest(self, chain: list[int], ids: list[int], limit: int) -> tuple[int | None, int]:
        """(entry key, shared length) of a cached prompt sharing the longest beginning, at most `limit`."""
        low, high = 0, min(limit, len(chain))  # beginnings are nested: a binary search finds the deepest
        while low < high:
            mid = (low + high + 1) // 2
            if chain[mid - 1] in self.by_beginning:
                low = mid
            else:
                high = mid - 1
        if not low:
            return None, 0
        key = max(self.by_beginning[chain[low - 1]])  # keys grow with every put and touch: the newest
        return key, min(common_length(self.entries[key].ids, ids), low)  # a hash collision cannot mislead

    def longest(self, adapter: str | None, ids: list[int]) -> tuple[CachedPrompt | None, int]:
        """The cached prompt sharing the longest beginning with `ids` (at most all but its last token:
        that one is computed to give the first logits), and how many tokens it shares; (None, 0) below
        MIN_REUSE."""
        with self.lock:
            key, length = self._deepest(chain_of(adapter, ids), ids, len(ids) - 1)
            if length < MIN_REUSE:
                return None, 0
            return self._touch(key), length

    def record(self, prompt_tokens: int, reused: int) -> None:
        """Count one request's prompt and how much of it came from the cache (for /health and /metrics)."""
        with self.lock:
            self.stats["lookups"] += 1
            self.stats["hits"] += bool(reused)
            self.stats["prompt_tokens"] += prompt_tokens
            self.stats["reused_tokens"] += reused

    def put(self, adapter: str | None, ids: list[int], keys: torch.Tensor, values: torch.Tensor) -> None:
        """Keep a prompt's keys and values; cached prompts it extends are dropped (it serves them too)."""
        entry = CachedPrompt(adapter, list(ids), keys, values, chain_of(adapter, ids))
        if entry.nbytes > self.budget or len(ids) < MIN_REUSE:
            return
        with self.lock:
            for key in list(self.by_beginning.get(entry.chain[-1], ())):
                if self.entries[key].ids[:len(ids)] == entry.ids:  # it already starts with all of this one
                    self._touch(key)
                    return
            for i in range(len(ids)):  # a cached prompt this one extends ends at one of its beginnings
                for key in list(self.by_beginning.get(entry.chain[i], ())):
                    old = self.entries[key]
                    if len(old.ids) == i + 1 and old.ids == entry.ids[:i + 1]:
                        self._drop(key)
            while self.entries and self.used + entry.nbytes > self.budget:
                self._drop(next(iter(self.entries)))
            self._add(self._new_key(), entry)

    def _new_key(self) -> int:
        self.next_key += 1
        return self.next_key

    def _add(self, key: int, entry: CachedPrompt) -> None:
        self.entries[key] = entry
        self.used += entry.nbytes
        for h in entry.chain:
            self.by_beginning.setdefault(h, set()).add(key)

    def _drop(self, key: int) -> CachedPrompt:
        entry = self.entries.pop(key)
        self.used -= entry.nbytes
        for h in entry.chain:
            keys = self.by_beginning[h]
            keys.discard(key)
            if not keys:
                del self.by_beginning[h]
        return entry

    def _touch(self, key: int) -> CachedPrompt:
        """Mark an entry most recently used (a new, larger key, at the end of the order)."""
        entry = self._drop(key)
        self._add(self._new_key(), entry)
        return entry

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()
            self.by_beginning.clear()
            self.used = 0
