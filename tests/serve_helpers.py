"""A real `llmctl serve` server on 127.0.0.1 in a background thread, stopped and closed afterwards."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

from llmctl.serve.server import ModelServer


@contextmanager
def running_server(backends: dict, **options) -> Iterator[ModelServer]:
    """ModelServer(backends, "127.0.0.1", <free port>, **options), serving until the block ends."""
    srv = ModelServer(backends, "127.0.0.1", 0, **options)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
