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
    load (the CLI shows a spinner). Adapters of the same base (and that base, if served) share one copy
    of it: one peft model with every adapter loaded, each request decoding through its own."""
    from llmctl.prompting import open_backend, resolve_entry

    entries = {ref: resolve_entry(ref) for ref in refs}
    groups = _shared_bases(entries)
    backends: dict[str, Backend] = {}
    try:
        for ref, entry in entries.items():
            if ref in backends:
                continue
            group = next((g for g in groups if ref in g), None)
            with loading(ref if group is None else " + ".join(group)):
                if group is None:
                    backends[ref] = open_backend(entry, config)
                else:
                    backends.update(open_shared({r: entries[r] for r in group}, config))
    except BaseException:  # a later model failed: free the ones already loaded
        for backend in backends.values():
            backend.close()
        raise
    return backends


def _base_key(entry) -> str | None:
    from llmctl.providers import capabilities_of
    from llmctl.registry import Registry

    if not capabilities_of(entry).weights:
        return None
    return Registry().base_of(entry).source if entry.adapter else entry.source


def _shared_bases(entries: dict) -> list[list[str]]:
    """Groups of references that share a base and include at least one adapter."""
    by_base: dict[str, list[str]] = {}
    for ref, entry in entries.items():
        key = _base_key(entry)
        if key is not None:
            by_base.setdefault(key, []).append(ref)
    return [refs for refs in by_base.values() if len(refs) > 1 and any(entries[r].adapter for r in refs)]


def open_shared(entries: dict, config: Config) -> dict[str, Backend]:
    """Backends over one base model carrying every adapter in `entries` (peft multi-adapter)."""
    from peft import PeftModel

    from llmctl.backends.hf import HFBackend
    from llmctl.loading import load_local, load_tokenizer

    adapters = [ref for ref, entry in entries.items() if entry.adapter]
    local = load_local(entries[adapters[0]], config, adapter="skip")  # the base's weights, loaded once
    model, names = local.model, {}
    for i, ref in enumerate(adapters):
        names[ref] = f"adapter{i}"
        if i == 0:
            model = PeftModel.from_pretrained(model, entries[ref].adapter, adapter_name=names[ref])
        else:
            model.load_adapter(entries[ref].adapter, adapter_name=names[ref])
    model.to(local.device).eval()
    backends = {}
    for ref, entry in entries.items():
        tokenizer = load_tokenizer(entry, config)  # an adapter's own first: its chat template
        origin = f"{local.origin.split(' + ')[0]}" + (f" + adapter {entry.adapter} (shared base)" if entry.adapter else " (shared)")
        backend = HFBackend(entry, model, tokenizer, local.device, origin, adapter_name=names.get(ref, "__base__"))
        backend.load_seconds = local.load_seconds
        backends[ref] = backend
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
