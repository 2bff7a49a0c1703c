"""Backends: one interface (`Backend`) for every kind of model; `load_backend` picks the class.

Heavy libraries (torch, transformers, openai) are imported only here, when a model is loaded,
so commands that need no model start fast.
"""

from __future__ import annotations

from llmctl.backends.base import Backend
from llmctl.config import Config
from llmctl.registry import ModelEntry


def load_backend(entry: ModelEntry, config: Config) -> Backend:
    if entry.provider == "openai":
        from llmctl.backends.openai_backend import OpenAIBackend

        return OpenAIBackend(entry, config)
    from llmctl.backends.hf import HFBackend

    return HFBackend.load(entry, config)
