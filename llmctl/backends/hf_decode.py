"""The decoding loop of local models, for one request or a batch that rows join and leave as they go.

Each row keeps its own sampling knobs, random generator, stop strings, detokenizer, grammar and
adapter, so a request gives the same text alone or batched with others (a seed means the same thing
in both). The batch is left-padded with a per-row attention mask and positions; a row that joins is
prefilled on its own (the rows already decoding wait for one forward pass), then its KV cache is
left-padded to the batch's length and stacked under it. Rows that finish (or whose client left) are
dropped from the cache, and padding columns no row needs any more are cut off.

With a prefix cache (the server's), a joining row's prompt is computed only past the longest
beginning it shares with a prompt seen before, and rows that join together and share a beginning
nobody has cached compute it once between them (prefix_cache.py), when that saves more than the
extra pass costs. With a pass-cost estimate (the server's), rows that join together are prefilled in
the passes that give them the least total wait for their first token (pass_cost.py).
"""

from __future__ import annotations

import bisect
import inspect
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from llmctl.backends.base import Chunk, GenerationRequest, TokenInfo
from llmctl.backends.detokenize import StreamDetokenizer
from llmctl.backends.pass_cost import PassCost
from llmctl.backends.prefix_cache import MIN_REUSE, CachedPrompt, PrefixCache, common_length
from llmctl.sampling import StopMatcher, apply_repetition_penalty, sample_next

# Below this a temperature divides logits into infinities: it means greedy, and is decoded so.
MIN_TEMPERATURE = 1e-4


@dataclass
class DecodeRow:
    """One request being decoded."""

    prompt_ids: list[int]
    request: GenerationRequest
    max_new: int
    tokenizer: object
    cancelled: Callable[[], bool] = lambda: False  # the client left: stop this row only
    grammar: Any = None  # a constrained.Grammar: only tokens it allows are sampled
    adapter: str | None = None  # the peft adapter this row decodes with (None: the base model)
    produced: int = 0
    cached: int | None = None  # prompt tokens whose keys and values came from a prefix cache (None: no cache)
    generator: torch.Generator | None = None
    seen: torch.Tensor | None = None
    detok: StreamDetokenizer | None = field(default=None, repr=False)
    stops: StopMatcher | None = None

    def start(self, device: torch.device) -> None:
        seed = self.request.params.seed
        # A per-request generator: the same seed gives the same text whatever else ran before or beside it.
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed) if seed is not None else self.generator.seed()
        self.seen = torch.tensor(self.prompt_ids, device=device)
        self.detok, self.stops = StreamDetokenizer(self.tokenizer), StopMatcher(self.request.params.stop)

    def final(self, finish: str) -> Chunk:
        # After a stop string nothing is pending; at EOS or the length limit, text held back (an
        # unfinished character, a possible start of a stop string) is part of the answer.
        text, hit = self.stops.feed(self.detok.flush())
        return Chunk(text=text if hit else text + self.stops.flush(), finish_reason="stop" if hit else finish,
                     usage=self.usage())

    def failed(self, error: Exception) -> Chunk:
        return Chunk(finish_reason="error", error=f"{type(error).__name__}: {error}", usage=self.usage())

    def usage(self) -> dict[str, int]:
        use = {"prompt_tokens": len(self.prompt_ids), "completion_tokens": self.produced}
        return use if self.cached is None else {**use, "cached_tokens": self.cached}


def _pick(row: DecodeRow, logits: torch.Tensor, eos_ids: set[int],
          token_info: Callable[[torch.Tensor, float, int, int], TokenInfo]) -> tuple[int, list[Chunk]]:
    """Sample this row's next token; the chunks it yields, the last one final when the row is done."""
    p, request = row.request.params, row.request
    temperature = p.temperature if p.temperature >= MIN_TEMPERATURE else 0.0
    logits = apply_repetition_penalty(logits.float(), row.seen, p.repetition_penalty)
    if row.grammar is not None:
        logits = row.grammar.constrain(logits)
    token = sample_next(logits, temperature, p.top_k, p.top_p, row.generator)
    info = token_info(logits, temperature, token, request.top_probs) if request.top_probs else None
    if row.grammar is not None:
        row.grammar.consume(token)
    if token in eos_ids:
        return token, [row.final("stop")]
    row.produced += 1
    row.seen = torch.cat([row.seen, row.seen.new_tensor([token])])
    text, hit = row.stops.feed(row.detok.add(token))
    chunks = [Chunk(text=text, tokens=[info] if info else [])]
    if row.grammar is not None and row.grammar.done():
        chunks.append(row.final("stop"))  # the grammar allows nothing more: the answer is complete
    elif hit:
        chunks.append(row.final("stop"))
    elif row.produced >= row.max_new:
        chunks.append(row.final("length"))
    return token, chunks


def _forward_parameters(model) -> set[str]:
    core = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps forward(**kwargs)
    return set(inspect.signature(core.forward).parameters)


def cache_argument(model) -> str:
    """transformers 5 names the KV cache `cache`; 4.x (and 5.x until 5.40, deprecated) `past_key_values`."""
    return "cache" if "cache" in _forward_parameters(model) else "past_key_values"


def last_logits_only(model) -> dict[str, int]:
    """The forward argument that computes logits for the last position only: without it the prefill
    makes a vocabulary-sized row for every prompt token. Left padding keeps every row's last token last."""
    # Every transformers model since 4.50 takes it; a model with its own (remote) code may not.
    return {"logits_to_keep": 1} if "logits_to_keep" in _forward_parameters(model) else {}


def _mergeable(cache) -> bool:
    """Whether a cache is plain per-layer key/value tensors we can pad and stack (not sliding or quantized)."""
    from transformers.cache_utils import DynamicLayer

    return hasattr(cache, "layers") and all(type(layer) is DynamicLayer for layer in cache.layers)


def _left_pad(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - tensor.size(dim)
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class DecodeBatch:
    """The rows decoding together on one model: `add` rows at any step, `step` all of them once."""

    def __init__(self, model, device: torch.device, pad_id: int, eos_ids: set[int],
                 token_info: Callable[[torch.Tensor, float, int, int], TokenInfo], prefix_cache: PrefixCache | None = None,
                 pass_cost: PassCost | None = None):
        self.model, self.device, self.pad_id, self.eos_ids, self.token_info = model, device, pad_id, eos_ids, token_info
        self.prefix_cache = prefix_cache  # keys and values of earlier prompts, shared by every batch on this model
        self.pass_cost = pass_cost  # what a forward pass costs here, learnt from the ones this batch runs
        self.cache_name, self.last_only = cache_argument(model), last_logits_only(model)
        self.rows: list[DecodeRow] = []
        self.past = None
        self.mask: torch.Tensor | None = None  # (rows, cache length + 1): 0 over left padding
        self.next_ids: list[int] = []  # each row's last sampled token, fed at the next step

    def __len__(self) -> int:
        return len(self.rows)

    def can_join(self) -> bool:
        return not self.rows or _mergeable(self.past)

    def _forward(self, adapters: list[str | None], ids: torch.Tensor, mask: torch.Tensor, past):
        padded = not bool(mask.all())
        # No mask and no positions when nothing is padded: the exact computation of an unbatched call.
        # Positions count the mask's ones, so padding between a cached beginning and the rest is skipped.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.size(1):] if padded else None
        extra = {}
        if any(adapters):  # peft: each row through its own adapter, in one pass
            extra["adapter_names"] = [adapter or "__base__" for adapter in adapters]
        start = time.perf_counter()
        out = self.model(input_ids=ids, attention_mask=mask if padded else None, position_ids=positions,
                         use_cache=True, **{self.cache_name: past}, **self.last_only, **extra)
        if self.pass_cost is not None:
            _finish_queued_work(self.device)  # sampling waits for it next anyway; without it a GPU pass times its launch
            self.pass_cost.record(ids.numel(), time.perf_counter() - start)
        return out.logits[:, -1], getattr(out, self.cache_name)

    def _sample(self, rows: list[DecodeRow], logits: torch.Tensor) -> Iterator[tuple[DecodeRow, list[Chunk], int | None]]:
        """(row, its chunks, its next token or None when the row ended) for each row."""
        for slot, row in enumerate(rows):
            if row.cancelled():
                yield row, [row.final("interrupted")], None
                continue
            try:
                token, chunks = _pick(row, logits[slot], self.eos_ids, self.token_info)
            except Exception as e:  # noqa: BLE001 - this row alone fails; the others go on
                yield row, [row.failed(e)], None
                continue
            yield row, chunks, None if chunks[-1].finish_reason else token

    def _run(self, rows, logits, keep: list[DecodeRow], tokens: list[int]) -> Iterator[tuple[DecodeRow, Chunk]]:
        for row, chunks, token in self._sample(rows, logits):
            for chunk in chunks:
                yield row, chunk
            if token is not None:
                keep.append(row)
                tokens.append(token)

    @torch.inference_mode()
    def add(self, rows: list[DecodeRow]) -> Iterator[tuple[DecodeRow, Chunk]]:
        """Prefill new rows, sample their first tokens and stack them under the running rows; rows get
        their first token as their pass ends, so a burst split into passes serves its first rows sooner."""
        for row in rows:
            row.start(self.device)
        for row in [r for r in rows if r.max_new <= 0]:
            yield row, row.final("length")
        rows = [r for r in rows if r.max_new > 0]
        if not rows:
            return
        if self.prefix_cache is not None:
            self._prefill_shared_beginnings(rows)
        for group in self._passes(rows):
            yield from self._add_pass(group)

    def _add_pass(self, rows: list[DecodeRow]) -> Iterator[tuple[DecodeRow, Chunk]]:
        logits, past, mask = self._prefill([(r.adapter, r.prompt_ids) for r in rows], rows)
        keep, tokens = [], []
        yield from self._run(rows, logits, keep, tokens)
        keep_slots = [rows.index(r) for r in keep]
        if not keep:
            return
        if len(keep) < len(rows):
            past.batch_select_indices(torch.tensor(keep_slots, device=self.device))
            mask = mask[keep_slots]
        self._stack(keep, tokens, past, mask)

    def _reused(self, row: DecodeRow) -> int:
        """How many of a row's prompt tokens the prefix cache would give it now."""
        return self.prefix_cache.longest(row.adapter, row.prompt_ids)[1] if self.prefix_cache is not None else 0

    def _passes(self, rows: list[DecodeRow]) -> list[list[DecodeRow]]:
        """The rows in arrival order, cut into the prefill passes that give them the least total wait
        for their first token (pass_cost.py): each row goes to the pass its middle position falls in."""
        if self.pass_cost is None or len(rows) == 1:
            return [rows]
        rests = [len(r.prompt_ids) - self._reused(r) for r in rows]
        ends = list(itertools.accumulate(self.pass_cost.split(sum(rests))))
        passes: list[list[DecodeRow]] = [[] for _ in ends]
        done = 0
        for row, rest in zip(rows, rests):
            passes[min(bisect.bisect(ends, done + rest / 2), len(ends) - 1)].append(row)
            done += rest
        return [p for p in passes if p]

    def _prefill(self, prompts: list[tuple[str | None, list[int]]], rows: list[DecodeRow] | None = None):
        """One forward pass over new prompts: (last logits, cache, mask). Each is left-padded; with a
        prefix cache, what a prompt shares with a cached one comes from there and only the rest is
        computed, laid out as [padding, cached beginning, padding, rest]. Every prompt is then cached."""
        cache = self.prefix_cache
        starts = [cache.longest(adapter, ids) for adapter, ids in prompts] if cache is not None else [(None, 0)] * len(prompts)
        reused = max(n for _, n in starts)
        rests = [ids[n:] for (_, ids), (_, n) in zip(prompts, starts)]
        width = max(len(rest) for rest in rests)
        ids = torch.tensor([[self.pad_id] * (width - len(rest)) + rest for rest in rests], device=self.device)
        mask = torch.tensor([[0] * (reused - n) + [1] * n + [0] * (width - len(rest)) + [1] * len(rest)
                             for (_, n), rest in zip(starts, rests)], device=self.device)
        past = self._cached_past(starts, reused) if reused else None
        logits, past = self._forward([adapter for adapter, _ in prompts], ids, mask, past)
        if cache is not None:
            if _mergeable(past):
                keys, values = torch.stack([layer.keys for layer in past.layers]), torch.stack([layer.values for layer in past.layers])
                for slot, (adapter, prompt) in enumerate(prompts):
                    columns = mask[slot].nonzero().squeeze(1)  # the prompt's own tokens, padding left out
                    cache.put(adapter, prompt, keys[:, slot].index_select(2, columns), values[:, slot].index_select(2, columns))
            for row, (_, n) in zip(rows or [], starts):
                row.cached = n
                cache.record(len(row.prompt_ids), n)
        return logits, past, mask

    def _cached_past(self, starts: list[tuple[CachedPrompt | None, int]], length: int):
        """A cache holding each prompt's reused beginning, left-padded to `length` (zeros where none)."""
        from transformers.cache_utils import DynamicCache

        some = next(entry for entry, n in starts if n)
        layers, heads, _, size = some.keys.shape
        blank = some.keys.new_zeros(layers, heads, length, size)
        keys = torch.stack([_left_pad(e.keys[:, :, :n], length, 2) if n else blank for e, n in starts], dim=1)
        values = torch.stack([_left_pad(e.values[:, :, :n], length, 2) if n else blank for e, n in starts], dim=1)
        return DynamicCache(ddp_cache_data=list(zip(keys.unbind(0), values.unbind(0))))

    def _prefill_shared_beginnings(self, rows: list[DecodeRow]) -> None:
        """Rows arriving together that share a beginning nobody has cached yet (the same system prompt,
        the same question asked by several clients): compute each such beginning once, into the cache,
        so that the rows' own prefill reads it instead of computing it once per row. That is a pass of
        its own, so with a pass-cost estimate it runs only when it saves more positions than it costs."""
        # (adapter, beginning) -> the most new positions computing it costs: what one row would spend on it
        shared: dict[tuple[str | None, tuple[int, ...]], int] = {}
        saved = 0  # new positions the rows would each spend on their shared beginnings without the pass
        # In sorted order, the prompt sharing the longest beginning with a prompt is next to it.
        ordered = sorted(rows, key=lambda r: (r.adapter or "", r.prompt_ids))
        for at, row in enumerate(ordered):
            neighbours = [o for o in ordered[max(at - 1, 0):at + 2] if o is not row and o.adapter == row.adapter]
            length = min(max((common_length(row.prompt_ids, o.prompt_ids) for o in neighbours), default=0),
                         len(row.prompt_ids) - 1)
            reused = self._reused(row)
            if length >= MIN_REUSE and reused < length:
                beginning = (row.adapter, tuple(row.prompt_ids[:length]))
                shared[beginning] = max(shared.get(beginning, 0), length - reused)
                saved += length - reused
        worth = self.pass_cost.positions_worth_a_pass() if self.pass_cost is not None else None
        if shared and (worth is None or saved - sum(shared.values()) > worth):
            self._prefill([(adapter, list(ids)) for adapter, ids in shared])

    def _stack(self, rows: list[DecodeRow], tokens: list[int], past, mask: torch.Tensor) -> None:
        mask = torch.cat([mask, mask.new_ones(mask.size(0), 1)], dim=1)  # the pending token's column
        if not self.rows:
            self.rows, self.next_ids, self.past, self.mask = rows, tokens, past, mask
            return
        length = max(self.mask.size(1), mask.size(1))
        for mine, theirs in zip(self.past.layers, past.layers):
            keys = [_left_pad(mine.keys, length - 1, -2), _left_pad(theirs.keys, length - 1, -2)]
            values = [_left_pad(mine.values, length - 1, -2), _left_pad(theirs.values, length - 1, -2)]
            mine.keys, mine.values = torch.cat(keys, dim=0), torch.cat(values, dim=0)
        self.mask = torch.cat([_left_pad(self.mask, length, 1), _left_pad(mask, length, 1)], dim=0)
        self.rows, self.next_ids = self.rows + rows, self.next_ids + tokens

    @torch.inference_mode()
    def step(self) -> Iterator[tuple[DecodeRow, Chunk]]:
        """One token for every running row; finished rows leave the batch."""
        if not self.rows:
            return
        ids = torch.tensor(self.next_ids, device=self.device).view(-1, 1)
        logits, self.past = self._forward([row.adapter for row in self.rows], ids, self.mask, self.past)
        keep, tokens = [], []
        yield from self._run(self.rows, logits, keep, tokens)
        self._keep(keep, tokens)

    def _keep(self, keep: list[DecodeRow], tokens: list[int]) -> None:
        if not keep:
            self.rows, self.next_ids, self.past, self.mask = [], [], None, None
            return
        if len(keep) < len(self.rows):
            slots = torch.tensor([self.rows.index(r) for r in keep], device=self.device)
            self.past.batch_select_indices(slots)  # finished rows leave the cache: no compute spent on them
            self.mask = self.mask.index_select(0, slots)
            first = int(self.mask.any(0).nonzero()[0])  # columns that are padding in every row left
            if first and _mergeable(self.past):
                for layer in self.past.layers:
                    layer.keys, layer.values = layer.keys[..., first:, :], layer.values[..., first:, :]
                self.mask = self.mask[:, first:]
        self.rows, self.next_ids = keep, tokens
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.size(0), 1)], dim=1)

    def cancel_all(self, finish: str = "interrupted") -> Iterator[tuple[DecodeRow, Chunk]]:
        for row in self.rows:
            yield row, row.final(finish)
        self._keep([], [])


def _finish_queued_work(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def decode_rows(model, rows: list[DecodeRow], device: torch.device, pad_id: int, eos_ids: set[int],
                token_info: Callable[[torch.Tensor, float, int, int], TokenInfo]) -> Iterator[tuple[int, Chunk]]:
    """Yield (row index, chunk) as the rows generate; every row ends with a chunk carrying finish_reason."""
    index = {id(row): i for i, row in enumerate(rows)}
    batch = DecodeBatch(model, device, pad_id, eos_ids, token_info)
    for row, chunk in batch.add(rows):
        yield index[id(row)], chunk
    while batch:
        for row, chunk in batch.step():
            yield index[id(row)], chunk
