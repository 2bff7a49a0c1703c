"""`llmctl serve` as functions: open the models, run the server until Ctrl-C or SIGTERM, close all."""

from __future__ import annotations

import os
import signal
import threading
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Callable

from llmctl.backends.base import Backend
from llmctl.config import Config
from llmctl.errors import UsageError
from llmctl.serve.server import ModelServer


def required_api_key(flag: str | None, key_file: Path | None, environ=os.environ) -> str | None:
    """The key clients must send: --api-key, else --api-key-file, else LLMCTL_SERVE_API_KEY (the last two
    keep it out of the process list)."""
    if flag and key_file:
        raise UsageError("give --api-key or --api-key-file, not both")
    if key_file is not None:
        try:
            key = Path(key_file).read_text(encoding="utf-8").splitlines()[0].strip() if Path(key_file).stat().st_size else ""
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read --api-key-file {key_file}: {e}") from None
        if not key:
            raise UsageError(f"--api-key-file {key_file} is empty")
        return key
    return flag or environ.get("LLMCTL_SERVE_API_KEY") or None


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
