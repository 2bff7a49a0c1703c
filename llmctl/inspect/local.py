"""The models inspection runs on: local ones only, since only local weights show their logits,
router choices and attention. Remote models are refused up front with one line saying so."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from llmctl.errors import UsageError
from llmctl.loading import LocalModel, default_config, load_local, load_tokenizer
from llmctl.providers import capabilities_of
from llmctl.registry import ModelEntry, Registry

if TYPE_CHECKING:
    from llmctl.config import Config

LOCAL_HINT = ("use a local model: smollm2, hf:REPO, a model directory, an adapter or a GPT you pretrained; "
              "remote models work with prompt, chat and eval, and prompt --top-probs shows the few probabilities "
              "a server returns")


def inspectable_entry(ref: str | ModelEntry, doing: str) -> ModelEntry:
    """The entry for `ref`, refused if it is a remote model (no logits, weights or tokenizer here)."""
    entry = Registry().resolve(ref) if isinstance(ref, str) else ref
    if not capabilities_of(entry).logits:
        raise UsageError(f"{doing}: '{entry.name}' is a remote ({entry.provider}) model, whose logits, internals "
                         "and tokenizer stay on its server", hint=LOCAL_HINT)
    return entry


def load_inspected(ref: str | ModelEntry, doing: str, config: Config | None = None, *,
                   eager_attention: bool = False) -> LocalModel:
    """Weights and tokenizer for inspection, in eval mode on hf.device. `eager_attention`: the plain
    attention implementation, the only one that returns its weights (SDPA and flash never form them)."""
    entry = inspectable_entry(ref, doing)
    config = default_config(config)
    if eager_attention:
        config = dataclasses.replace(config, hf=dataclasses.replace(config.hf, attn_implementation="eager"))
    return load_local(entry, config, doing=doing)


def inspected_tokenizer(ref: str | ModelEntry, doing: str, config: Config | None = None) -> tuple[ModelEntry, object]:
    """The entry and its tokenizer alone (no weights read)."""
    entry = inspectable_entry(ref, doing)
    return entry, load_tokenizer(entry, config, doing=doing)


def context_length(local: LocalModel) -> int:
    """How many positions the model can attend over (the registry's value first, as prompting does)."""
    cfg = local.model.config
    return local.entry.context_length or getattr(cfg, "max_position_embeddings", None) or 2048


def eos_ids(local: LocalModel) -> set[int]:
    """The tokens that end a text, from the tokenizer and the generation config (an int or a list)."""
    ids: set = set()
    for value in (local.tokenizer.eos_token_id, getattr(local.model.generation_config, "eos_token_id", None)):
        ids.update(value if isinstance(value, (list, tuple)) else [value])
    return {i for i in ids if isinstance(i, int)}


def check_text(text: str) -> str:
    if not text or not text.strip():
        raise UsageError("empty text", hint="pass TEXT or pipe it on stdin")
    return text
