"""Keys and values of recent prompts, so a prompt that starts like one of them is prefilled only from
where the two part.

Chat requests to one server share long beginnings: the chat template's system prompt, an agent's
instructions and tool list, a document asked about again and again. Prefill is the compute-bound part
of a request (every prompt token through every layer), and when many requests arrive together it is
what their time to first token waits for. A key/value pair at position t depends only on tokens 0..t,
so the cached keys and values of any prompt are exact for every prompt that starts with the same
tokens, up to where they differ.

Entries are whole prompts (one tensor pair per layer, on the model's device), looked up by their
longest common beginning with the new prompt, and dropped least recently used first when the byte
budget is full. Adapters change keys and values, so each entry belongs to one adapter (or the base).
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
    ids: torch.Tensor  # (length,) token ids, on the CPU
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values (heads, length, head dim)

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.layers)


def common_length(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many leading tokens two id sequences share."""
    n = min(len(a), len(b))
    differ = (a[:n] != b[:n]).nonzero()
    return int(differ[0]) if len(differ) else n


class PrefixCache:
    """The keys and values of recent prompts on one model, within `budget_bytes`."""

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self.entries: OrderedDict[int, CachedPrompt] = OrderedDict()  # least recently used first
        self.used = 0
        self.next_key = 0
        self.lock = threading.Lock()
        self.stats = {"lookups": 0, "hits": 0, "reused_tokens": 0, "prompt_tokens": 0}

    def __len__(self) -> int:
        return len(self.entries)

    def longest(self, adapter: str | None, ids: list[int]) -> tuple[CachedPrompt | None, int]:
        """The cached prompt sharing the longest beginning with `ids` (at most all but its last token:
        that one is computed to give the first logits), and how many tokens it shares; (None, 0) below
        MIN_REUSE."""
        wanted = torch.tensor(ids)
        best, best_length, best_key = None, 0, None
        with self.lock:
            for key, entry in self.entries.items():
                if entry.adapter == adapter:
                    length = min(common_length(entry.ids, wanted), len(ids) - 1)
                    if length > best_length:
                        best, best_length, best_key = entry, length, key
            if best_length < MIN_REUSE:
                return None, 0
            self.entries.move_to_end(best_key)
        return best, best_length

    def record(self, prompt_tokens: int, reused: int) -> None:
        """Count one request's prompt and how much of it came from the cache (for /health and /metrics)."""
        with self.lock:
            self.stats["lookups"] += 1
            self.stats["hits"] += bool(reused)
            self.stats["prompt_tokens"] += prompt_tokens
            self.stats["reused_tokens"] += reused

    def put(self, adapter: str | None, ids: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Keep a prompt's keys and values; cached prompts it extends are dropped (it serves them too)."""
        entry = CachedPrompt(adapter, torch.tensor(ids), layers)
        if entry.nbytes > self.budget or len(ids) < MIN_REUSE:
            return
        with self.lock:
            for key, old in list(self.entries.items()):
                if old.adapter != adapter:
                    continue
                shared = common_length(old.ids, entry.ids)
                if shared == len(ids):  # a cached prompt starts with all of this one: it serves it already
                    self.entries.move_to_end(key)
                    return
                if shared == len(old.ids):
                    self._drop(key)
            while self.entries and self.used + entry.nbytes > self.budget:
                self._drop(next(iter(self.entries)))
            self.entries[self.next_key] = entry
            self.next_key += 1
            self.used += entry.nbytes

    def _drop(self, key: int) -> None:
        self.used -= self.entries.pop(key).nbytes

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()
            self.used = 0
