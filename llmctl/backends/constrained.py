"""Constrained decoding for local models: a JSON schema becomes a token mask applied at every step.

llguidance compiles the schema against the model's tokenizer; before each token the row's matcher
says which tokens may come next, and everything else gets -inf. The answer therefore always parses
and validates (unless `max_tokens` cuts it off, which finish_reason "length" says). Each row of a
batch has its own matcher, so rows with different schemas (or none) decode together.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch

from llmctl.errors import UsageError

_tokenizers: dict[int, Any] = {}  # id(HF tokenizer) -> LLTokenizer: building one takes about a second
_lock = threading.Lock()


def _ll_tokenizer(tokenizer, eos_ids: set[int]):
    import llguidance.hf

    with _lock:
        key = id(tokenizer)
        if key not in _tokenizers:
            try:
                _tokenizers[key] = llguidance.hf.from_tokenizer(tokenizer, eos_token=sorted(eos_ids) or None)
            except ValueError as e:  # a slow (Python) tokenizer
                raise UsageError(f"constrained decoding needs a fast tokenizer: {e}") from None
        return _tokenizers[key]


def check_schema(schema: Any, what: str = "the JSON schema") -> str:
    """The llguidance grammar for a JSON schema; a schema it cannot compile is a UsageError naming why
    (an unsupported keyword, a bad reference)."""
    from llguidance import LLMatcher

    if not isinstance(schema, dict):
        raise UsageError(f"{what} must be a JSON object")
    try:
        grammar = LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
    except (ValueError, TypeError) as e:
        raise UsageError(f"{what} cannot be used: {e}") from None
    error = LLMatcher.validate_grammar(grammar)
    if error:
        raise UsageError(f"{what} cannot be used for constrained decoding: {error.strip()}")
    return grammar


class Grammar:
    """One row's matcher: `constrain` masks logits, `consume` advances with the sampled token."""

    def __init__(self, matcher, vocab: int):
        self.matcher, self.vocab = matcher, vocab

    @classmethod
    def compile(cls, schema: dict, tokenizer, eos_ids: set[int]) -> "Grammar":
        from llguidance import LLMatcher

        grammar = check_schema(schema)
        ll = _ll_tokenizer(tokenizer, eos_ids)
        matcher = LLMatcher(ll, grammar)
        if matcher.is_error():
            raise UsageError(f"the JSON schema cannot be used for constrained decoding: {matcher.get_error()}")
        return cls(matcher, ll.vocab_size)

    def constrain(self, logits: torch.Tensor) -> torch.Tensor:
        bits = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        allowed = torch.zeros(logits.numel(), dtype=torch.bool)
        n = min(self.vocab, logits.numel(), bits.size)
        allowed[:n] = torch.from_numpy(bits[:n].astype(bool))
        if not bool(allowed.any()):
            raise RuntimeError(f"the grammar allows no token here ({self.matcher.get_error() or 'dead end'})")
        return logits.masked_fill(~allowed.to(logits.device), float("-inf"))

    def consume(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"the grammar refused token {token}: {self.matcher.get_error()}")

    def done(self) -> bool:
        """The answer is complete: the grammar allows nothing more (not even more whitespace)."""
        return self.matcher.is_stopped()


def response_schema(response_format: Any) -> dict | None:
    """The schema a `response_format` asks for: None for text, {"type": "object"} for json_object."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict) or response_format.get("type") not in ("text", "json_object", "json_schema"):
        raise UsageError("response_format must be {\"type\": \"text\"}, {\"type\": \"json_object\"} or "
                         "{\"type\": \"json_schema\", \"json_schema\": {\"name\": ..., \"schema\": {...}}}")
    kind = response_format["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
        raise UsageError("response_format json_schema needs {\"json_schema\": {\"name\": ..., \"schema\": {...}}}")
    check_schema(spec["schema"], "the response_format schema")
    return spec["schema"]
