"""Which backend class serves each provider, and what each can do, in one table.

Light on purpose: callers ask what a model can do (`capabilities_of(entry).logits`) before anything
heavy is imported, and the backend class is imported only when a model is loaded. A new backend is
one module plus one row here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmctl.errors import ModelError, UsageError

if TYPE_CHECKING:  # the registry imports this table (to check provider names), not the other way
    from llmctl.registry import ModelEntry


@dataclass(frozen=True)
class Capabilities:
    remote: bool  # answers come over the network (concurrent requests help; nothing to load)
    logits: bool  # full next-token distributions: perplexity, distillation, inspection
    batching: bool  # prepare_row/decode_batch: several requests decoded together
    weights: bool  # local weights that can be trained, merged and exported
    tools: bool = False  # function calling (`tools`, `tool_choice`)
    schemas: bool = False  # structured output (`response_format`)
    embeddings: bool = False  # `/v1/embeddings`


@dataclass(frozen=True)
class Provider:
    name: str
    backend: str  # "module:Class"
    capabilities: Capabilities
    description: str


PROVIDERS: dict[str, Provider] = {
    "hf": Provider("hf", "llmctl.backends.hf:HFBackend",
                   Capabilities(remote=False, logits=True, batching=True, weights=True, tools=True, schemas=True,
                                embeddings=True),
                   "local Hugging Face weights (a Hub repo, a directory, an adapter, a pretrained GPT)"),
    "openai": Provider("openai", "llmctl.backends.openai_backend:OpenAIBackend",
                       Capabilities(remote=True, logits=False, batching=False, weights=False, tools=True, schemas=True),
                       "an OpenAI-compatible API (OpenAI, vLLM, ollama, llama.cpp, llmctl serve)"),
}


def provider_of(entry: "ModelEntry") -> Provider:
    try:
        return PROVIDERS[entry.provider]
    except KeyError:
        raise ModelError(f"model '{entry.name}' has an unknown provider '{entry.provider}'",
                         hint="known providers: " + ", ".join(PROVIDERS)) from None


def capabilities_of(entry: "ModelEntry") -> Capabilities:
    return provider_of(entry).capabilities


def backend_class(entry: "ModelEntry") -> type:
    module, _, cls = provider_of(entry).backend.partition(":")
    return getattr(importlib.import_module(module), cls)


def require_local(entry: "ModelEntry", doing: str, hint: str | None = None) -> None:
    """Refuse, with one clear line, work that needs local weights (training, logits, tokenizers)."""
    if not capabilities_of(entry).weights:
        raise UsageError(f"cannot use '{entry.name}' for {doing}: it is a remote ({entry.provider}) model, "
                         f"and {doing} needs a local model's weights",
                         hint=hint or "use smollm2, a Hub repo (hf:...), a model directory, an adapter or a pretrained GPT")
