"""Local Hugging Face models: a Hub repo, a model directory, a pretrained GPT, or base + LoRA adapter.

Generation is our own short decoding loop over the model's KV cache (hf_decode.py) rather than
`generate()`: it batches concurrent server requests, and gives a per-request random generator (reproducible --seed), streaming without a thread, stop
strings, the per-token distribution for --top-probs, and a clean stop on Ctrl-C.
"""

from __future__ import annotations

from typing import Iterator

import torch

from llmctl.backends.base import Backend, Chunk, GenerationRequest, RenderedPrompt, TokenInfo, TokenProb
from llmctl.backends.hf_decode import DecodeRow, decode_rows
from llmctl.config import Config
from llmctl.errors import UsageError
from llmctl.loading import load_local
from llmctl.providers import PROVIDERS
from llmctl.registry import ModelEntry
from llmctl.templates import apply_entry_template


class HFBackend(Backend):
    capabilities = PROVIDERS["hf"].capabilities

    def __init__(self, entry: ModelEntry, model, tokenizer, device: torch.device, origin: str,
                 adapter_name: str | None = None):
        self.entry = entry
        # On a model shared by several adapters (serve): the peft adapter this backend's rows decode
        # with, "__base__" for the base model itself; None for a model of its own.
        self.adapter_name = adapter_name
        self.name = entry.name
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.origin = origin  # where the weights came from, for `models show` and --json
        self.has_template = apply_entry_template(entry, tokenizer)
        self.context_length = entry.context_length or getattr(model.config, "max_position_embeddings", None) or 2048
        self.eos_ids = self._eos_ids()

    @classmethod
    def load(cls, entry: ModelEntry, config: Config) -> "HFBackend":
        local = load_local(entry, config)
        backend = cls(entry, local.model, local.tokenizer, local.device, local.origin)
        backend.load_seconds = local.load_seconds
        return backend

    def _eos_ids(self) -> set[int]:
        ids = set()
        gen = getattr(self.model, "generation_config", None)
        for value in (getattr(gen, "eos_token_id", None), self.tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(v for v in value if isinstance(v, int))
        return ids

    # -- prompts ---------------------------------------------------------------------------------
    def is_chat(self, request: GenerationRequest) -> bool:
        return self.has_template and not request.raw

    def _prompt_text(self, request: GenerationRequest) -> str:
        if self.is_chat(request):
            from llmctl.backends.tools import chat_messages

            messages, tools = chat_messages(request, self.tokenizer)
            extra = {"tools": tools} if tools else {}
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra)
        return "".join(m.content for m in request.messages)

    def _encode(self, request: GenerationRequest) -> tuple[str, list[int]]:
        text = self._prompt_text(request)
        # A chat template writes its own special tokens (BOS included); raw text gets the defaults.
        ids = self.tokenizer(text, add_special_tokens=not self.is_chat(request))["input_ids"]
        return text, list(ids)

    def render(self, request: GenerationRequest) -> RenderedPrompt:
        text, ids = self._encode(request)
        return RenderedPrompt(text=text, tokens=len(ids), mode="chat" if self.is_chat(request) else "completion")

    # -- generation ------------------------------------------------------------------------------
    def _generate(self, request: GenerationRequest) -> Iterator[Chunk]:
        _, prompt_ids = self._encode(request)
        return self._decode(prompt_ids, request, self._room(prompt_ids, request))

    def _room(self, prompt_ids: list[int], request: GenerationRequest) -> int:
        """How many tokens this request may generate; an empty or too-long prompt is an error."""
        if not prompt_ids:
            raise UsageError("the prompt is empty after tokenization")
        room = self.context_length - len(prompt_ids)
        if room <= 0:
            raise UsageError(f"the prompt is {len(prompt_ids)} tokens but {self.name} has a context of "
                             f"{self.context_length}", hint="shorten the prompt or history (--no-continue)")
        return min(request.params.max_tokens, room)

    def _decode(self, prompt_ids: list[int], request: GenerationRequest, max_new: int) -> Iterator[Chunk]:
        row = DecodeRow(prompt_ids, request, max_new, self.tokenizer, grammar=self.grammar_for(request),
                        adapter=self.adapter_name)
        parts = []
        for _, chunk in decode_rows(self.model, [row], self.device, self.pad_id, self.eos_ids, self._token_info):
            parts.append(chunk.text)
            if chunk.finish_reason and request.tools and not chunk.error:
                from llmctl.backends.tools import parse_tool_calls

                chunk.tool_calls = parse_tool_calls("".join(parts), request)
                chunk.finish_reason = "tool_calls" if chunk.tool_calls else chunk.finish_reason
            yield chunk

    # -- batching (used by `llmctl serve` for concurrent requests) -------------------------------
    def prepare_row(self, request: GenerationRequest, cancelled=lambda: False) -> DecodeRow:
        """Check and encode a request for `decode_batch`; a bad request fails here, before it is queued."""
        _, prompt_ids = self._encode(request)
        max_new = self._room(prompt_ids, request)
        return DecodeRow(prompt_ids, request, max_new, self.tokenizer, cancelled, grammar=self.grammar_for(request),
                         adapter=self.adapter_name)

    def grammar_for(self, request: GenerationRequest):
        """The grammar a request's answer must follow (a JSON schema, a tool call), or None."""
        from llmctl.backends.constrained import Grammar
        from llmctl.backends.tools import resolve_constraint

        constraint = request.constraint if request.constraint is not None else resolve_constraint(request)
        if constraint is None:
            return None
        return Grammar.compile(constraint, self.tokenizer, self.eos_ids)

    def decode_batch(self, rows: list[DecodeRow]) -> Iterator[tuple[int, Chunk]]:
        return decode_rows(self.model, rows, self.device, self.pad_id, self.eos_ids, self._token_info)

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        for value in (tok.pad_token_id, tok.eos_token_id, *sorted(self.eos_ids)):
            if isinstance(value, int):
                return value
        return 0

    def _token_info(self, logits: torch.Tensor, temperature: float, token: int, k: int) -> TokenInfo:
        from llmctl.inspect.distribution import distribution, token_text

        # Greedy decoding reports the model's own distribution (temperature 1), not a one-hot.
        dist = distribution(logits, temperature if temperature > 0 else 1.0, k, self.tokenizer)
        return TokenInfo(token=token_text(self.tokenizer, token), prob=float(dist.probs[token]),
                         top=[TokenProb(c.token, c.prob) for c in dist.top])

    def close(self) -> None:
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

