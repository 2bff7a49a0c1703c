"""The decoding loop of local models, for one request or a batch of them.

Each row keeps its own sampling knobs, random generator, stop strings and detokenizer, so a request
gives the same text alone or batched with others (a seed means the same thing in both). A batch is
left-padded; rows that finish (or whose client left) are dropped from the KV cache, so the batch
only ever computes the rows still generating.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from llmctl.backends.base import Chunk, GenerationRequest, TokenInfo
from llmctl.backends.detokenize import StreamDetokenizer
from llmctl.sampling import StopMatcher, apply_repetition_penalty, sample_next


@dataclass
class DecodeRow:
    """One request being decoded."""

    prompt_ids: list[int]
    request: GenerationRequest
    max_new: int
    tokenizer: object
    cancelled: Callable[[], bool] = lambda: False  # the client left: stop this row only
    produced: int = 0
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
                     usage={"prompt_tokens": len(self.prompt_ids), "completion_tokens": self.produced})


def _pick(row: DecodeRow, logits: torch.Tensor, eos_ids: set[int],
          token_info: Callable[[torch.Tensor, float, int, int], TokenInfo]) -> tuple[int, list[Chunk]]:
    """Sample this row's next token; the chunks it yields, the last one final when the row is done."""
    p, request = row.request.params, row.request
    logits = apply_repetition_penalty(logits.float(), row.seen, p.repetition_penalty)
    token = sample_next(logits, p.temperature, p.top_k, p.top_p, row.generator)
    info = token_info(logits, p.temperature, token, request.top_probs) if request.top_probs else None
    if token in eos_ids:
        return token, [row.final("stop")]
    row.produced += 1
    row.seen = torch.cat([row.seen, row.seen.new_tensor([token])])
    text, hit = row.stops.feed(row.detok.add(token))
    chunks = [Chunk(text=text, tokens=[info] if info else [])]
    if hit:
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


@torch.inference_mode()
def decode_rows(model, rows: list[DecodeRow], device: torch.device, pad_id: int, eos_ids: set[int],
                token_info: Callable[[torch.Tensor, float, int, int], TokenInfo]) -> Iterator[tuple[int, Chunk]]:
    """Yield (row index, chunk) as the rows generate; every row ends with a chunk carrying finish_reason."""
    for row in rows:
        row.start(device)
    live = [i for i, row in enumerate(rows) if row.max_new > 0]
    for i in set(range(len(rows))) - set(live):
        yield i, rows[i].final("length")
    if not live:
        return
    longest = max(len(rows[i].prompt_ids) for i in live)
    padded = [[pad_id] * (longest - len(rows[i].prompt_ids)) + rows[i].prompt_ids for i in live]
    step_ids = torch.tensor(padded, device=device)
    # One row, or rows of equal length, need no mask: the exact computation of an unbatched call.
    needs_mask = any(len(rows[i].prompt_ids) != longest for i in live)
    mask = torch.tensor([[0] * (longest - len(rows[i].prompt_ids)) + [1] * len(rows[i].prompt_ids) for i in live],
                        device=device) if needs_mask else None
    positions = (mask.cumsum(-1) - 1).clamp(min=0) if needs_mask else None
    past, cache_name, last_only = None, cache_argument(model), last_logits_only(model)
    while live:
        out = model(input_ids=step_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    **{cache_name: past}, **last_only)
        past = getattr(out, cache_name)
        keep, tokens = [], []
        for slot, i in enumerate(live):
            if rows[i].cancelled():
                yield i, rows[i].final("interrupted")
                continue
            token, chunks = _pick(rows[i], out.logits[slot, -1], eos_ids, token_info)
            for chunk in chunks:
                yield i, chunk
            if not chunks[-1].finish_reason:
                keep.append(slot)
                tokens.append(token)
        if len(keep) < len(live):
            if not keep:
                return
            index = torch.tensor(keep, device=device)
            past.batch_select_indices(index)  # finished rows leave the cache: no compute spent on them
            mask = mask.index_select(0, index) if mask is not None else None
            positions = positions.index_select(0, index) if positions is not None else None
            live = [live[slot] for slot in keep]
        step_ids = torch.tensor(tokens, device=device).view(-1, 1)
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(mask.size(0), 1)], dim=1)
            positions = positions[:, -1:] + 1
