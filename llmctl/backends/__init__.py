"""Backends: one interface (`Backend`) for every kind of model; `load_backend` picks the class from
the provider table (`llmctl.providers.PROVIDERS`).

Heavy libraries (torch, transformers, openai) are imported only here, when a model is loaded,
so commands that need no model start fast.
"""

from __future__ import annotations

from llmctl.backends.base import Backend
from llmctl.config import Config
from llmctl.providers import backend_class
from llmctl.registry import ModelEntry


def load_backend(entry: ModelEntry, config: Config) -> Backend:
    return backend_class(entry).load(entry, config)
