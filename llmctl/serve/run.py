"""`llmctl serve` as functions: open the models, run the server until Ctrl-C or SIGTERM, close all."""

from __future__ import annotations

import signal
import threading
from contextlib import AbstractContextManager, nullcontext
from typing import Callable

from llmctl.backends.base import Backend
from llmctl.config import Config
from llmctl.serve.server import ModelServer


def open_models(refs: list[str], config: Config,
                loading: Callable[[str], AbstractContextManager] = lambda ref: nullcontext()) -> dict[str, Backend]:
    """Each model reference loaded once, under the name clients will ask for; `loading(ref)` wraps each
    load (the CLI shows a spinner)."""
    from llmctl.prompting import open_backend, resolve_entry

    backends: dict[str, Backend] = {}
    try:
        for ref in refs:
            with loading(ref):
                backends[ref] = open_backend(resolve_entry(ref), config)
    except BaseException:  # a later model failed: free the ones already loaded
        for backend in backends.values():
            backend.close()
        raise
    return backends


def serve_until_stopped(server: ModelServer, backends: dict[str, Backend]) -> None:
    """Serve until Ctrl-C or SIGTERM; SIGTERM stops accepting, ends what is running and returns, so
    the process exits 0 (what process managers expect)."""
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    try:
        server.serve_forever()
    finally:
        server.server_close()
        for backend in backends.values():
            backend.close()
