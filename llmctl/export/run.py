"""`llmctl export`: a registry model as one GGUF file for llama.cpp, ollama and LM Studio, checked by a round trip.

The order keeps bad input cheap and failures clean: every argument is checked and the output folder
claimed (a temporary file) before any weights load; the file is written beside the target and renamed
only once it passed its round trip; the registry changes last.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from llmctl.config import Config
from llmctl.errors import UsageError
from llmctl.export.gguf_writer import check_quant, encoded_bytes, output_tensor_name, tensor_type, write_gguf

FULL_DISK = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


@dataclass
class ExportResult:
    source: str
    path: str
    quant: str
    architecture: str
    parameters: int
    bytes: int
    seconds: float  # loading the source and writing the file
    tensor_types: dict[str, int]
    sha256: str
    name: str | None = None  # the registry entry; None when not registered (a failed round trip)
    round_trip: dict | None = None  # None: --no-verify
    modelfile: str | None = None
    ollama: dict | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool | None:
        return None if self.round_trip is None else self.round_trip["passed"]

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def export_gguf(model: str, out: Path, *, quant: str = "q8_0", name: str | None = None, verify: bool = True,
                force: bool = False, ollama: str | None = None, register: bool = True, config: Config | None = None,
                progress: Callable[[str], None] | None = None) -> ExportResult:
    """Export registry model `model` to the GGUF file `out`. A failed round trip does not raise: the result
    says so (`passed` False) and the file is kept as `*.failed.gguf`, unregistered."""
    from llmctl.export.modelfile import check_ollama_name
    from llmctl.loading import local_entry
    from llmctl.registry import Registry, check_name

    progress = progress or (lambda _: None)
    quant = check_quant(quant)
    out = _target(Path(out), force)
    modelfile = out.parent / "Modelfile" if ollama else None
    if ollama:
        check_ollama_name(ollama)
        if modelfile.exists() and not force:
            raise UsageError(f"{modelfile} already exists", hint="pass --force to overwrite it")
    name = name or default_name(out)
    check_name(name)
    registry = Registry()
    if register:
        _check_free_name(registry, name, force)
    entry = local_entry(model, "exporting to GGUF")
    if entry.adapter:
        registry.base_of(entry)  # an adapter whose base is gone fails here, before anything is written
    tmp = _claim_temporary(out)
    try:
        written = _load_and_write(entry, tmp, quant, config, progress)
        round_trip = None
        if verify:
            progress("loading the file back and comparing it with the source")
            from llmctl.export.verify import verify_round_trip

            round_trip = verify_round_trip(written.model, written.tokenizer, tmp, quant, written.chat)
        final = out if round_trip is None or round_trip.passed else failed_name(out)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    result = ExportResult(source=entry.name, path=str(final), quant=quant, architecture=written.arch,
                          parameters=written.parameters, bytes=final.stat().st_size, seconds=written.seconds,
                          tensor_types=written.counts, sha256=sha256_of(final), notes=written.notes,
                          round_trip=round_trip.to_dict() if round_trip else None)
    if result.passed is False:
        return result
    if register:
        result.name = _register(registry, name, entry, result, written, force)
    if ollama:
        _ollama(result, written, modelfile, ollama)
    return result


# -- before anything loads -----------------------------------------------------------------------

def _target(out: Path, force: bool) -> Path:
    out = out.expanduser()
    if out.suffix.lower() != ".gguf":
        raise UsageError(f"--out {out} must end in .gguf")
    folder = out.parent
    if not folder.is_dir():
        raise UsageError(f"output folder {folder} does not exist", hint=f"create it first: mkdir -p {folder}")
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder", hint="give a file name ending in .gguf")
    if out.exists() and not force:
        raise UsageError(f"{out} already exists", hint="pass --force to overwrite it")
    return out.resolve()


def default_name(out: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(out).stem).strip("-.") or "export"
    return name if name[0].isalnum() else "gguf-" + name


def failed_name(out: Path) -> Path:
    return out.with_name(out.stem + ".failed.gguf")


def _check_free_name(registry, name: str, force: bool) -> None:
    existing = registry.get(name)
    if existing is None:
        return
    if existing.builtin:
        raise UsageError(f"'{name}' is a built-in model name", hint="choose another with --name")
    if not force:
        raise UsageError(f"model '{name}' is already registered", hint="choose another with --name, or pass --force")


def _claim_temporary(out: Path) -> Path:
    """The temporary file the export is written to, made now so a read-only folder fails before any work."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as e:
        raise UsageError(f"cannot write in {out.parent}: {e.strerror or e}",
                         hint="choose a writable folder for --out") from None
    os.close(fd)
    # mkstemp makes it private (0600); a model file is for other programs too (ollama's server runs as
    # its own user), so it gets the permissions any new file would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp)


# -- loading and writing -------------------------------------------------------------------------

@dataclass
class _Written:
    model: object
    tokenizer: object
    arch: str
    chat: bool
    parameters: int
    context: int | None
    counts: dict[str, int]
    seconds: float
    notes: list[str]


def _load_and_write(entry, tmp: Path, quant: str, config: Config | None, progress) -> _Written:
    from llmctl.export.architectures import GGUF_ARCH, architecture_of, tensor_sources, write_hyperparameters
    from llmctl.export.tokenizer import gguf_tokenizer, write_tokenizer
    from llmctl.loading import load_local

    start = time.perf_counter()
    progress(f"loading {entry.name}" + (" and folding its adapter in" if entry.adapter else ""))
    # float32 on the CPU whatever hf.* says: exact source weights for the quantizer and the comparison.
    local = load_local(entry, _cpu_float32(config), adapter="merge", place=False, doing="exporting to GGUF")
    model, tokenizer = local.model.eval(), local.tokenizer
    arch = architecture_of(model.config)
    chat = entry.chat_template != "none" and bool(getattr(tokenizer, "chat_template", None))
    gtok = gguf_tokenizer(tokenizer, model.config.vocab_size, tokenizer.chat_template if chat else None)
    sources = tensor_sources(arch, model)
    context = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)

    def metadata(writer) -> None:
        writer.add_name(entry.name)
        writer.add_description(f"exported by llmctl from {entry.name}" + (f" ({entry.base} + LoRA)" if entry.adapter else ""))
        write_hyperparameters(writer, arch, model.config)
        write_tokenizer(writer, gtok)

    _check_space(tmp.parent, sources, quant)
    progress(f"writing {quant} GGUF")
    try:
        counts = write_gguf(tmp, GGUF_ARCH[arch], quant, sources, metadata)
    except OSError as e:
        if e.errno in FULL_DISK:
            raise UsageError(f"no space left writing {tmp.parent} (the file would be about "
                             f"{_planned_bytes(sources, quant) / 1e6:.0f} MB); nothing was kept",
                             hint="free space or choose another folder for --out") from None
        raise UsageError(f"cannot write {tmp.parent}: {e.strerror or e}") from None
    notes = [f"{gtok.padded} embedding rows beyond the tokenizer are written as unused [PAD] tokens"] if gtok.padded else []
    parameters = sum(p.numel() for p in model.parameters())
    return _Written(model, tokenizer, arch, chat, parameters, context, counts,
                    round(time.perf_counter() - start, 2), notes)


def _cpu_float32(config: Config | None) -> Config:
    from llmctl.loading import default_config

    config = copy.deepcopy(default_config(config))
    config.hf.device, config.hf.dtype = "cpu", "float32"
    return config


def _planned_bytes(sources, quant: str) -> int:
    output_name = output_tensor_name(sources)
    return sum(encoded_bytes(s.shape, tensor_type(s, quant, output_name)) for s in sources)


def _check_space(folder: Path, sources, quant: str) -> None:
    needed, free = _planned_bytes(sources, quant), shutil.disk_usage(folder).free
    if needed > free:
        raise UsageError(f"not enough disk space in {folder}: the file needs about {needed / 1e6:.0f} MB, "
                         f"{free / 1e6:.0f} MB are free", hint="free space or choose another folder for --out")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- after the file is in place ------------------------------------------------------------------

def _register(registry, name: str, entry, result: ExportResult, written: _Written, force: bool) -> str:
    from llmctl.registry import ModelEntry

    summary = {}
    if result.round_trip:
        summary = {k: result.round_trip[k] for k in ("loader", "max_logit_diff", "ppl_ratio", "greedy_equal")}
    registry.add(ModelEntry(
        name=name, provider="hf", source=result.path, chat_template="auto" if written.chat else "none",
        context_length=entry.context_length or written.context,
        description=f"{entry.name} exported to GGUF ({result.quant})",
        lineage={"level": "export", "source": entry.name, "base": entry.base, "adapter": entry.adapter,
                 "format": "gguf", "quantization": result.quant, "sha256": result.sha256,
                 "round_trip": "skipped" if result.round_trip is None else "PASS"},
        info={"bytes": result.bytes, "architecture": written.arch, "parameters": written.parameters,
              "tensor_types": result.tensor_types, "export_seconds": result.seconds,
              **({"round_trip": summary} if summary else {})}), replace=force)
    return name


def _ollama(result: ExportResult, written: _Written, modelfile: Path, ollama_name: str) -> None:
    from llmctl.export.modelfile import build_modelfile, ollama_create
    from llmctl.fsutil import atomic_write_text

    tokenizer = written.tokenizer
    eos = written.model.generation_config.eos_token_id
    ids = [tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])]
    stops = list(dict.fromkeys(tokenizer.convert_ids_to_tokens(i) for i in ids if i is not None))
    built = build_modelfile(Path(result.path).name, tokenizer, written.chat, written.context, stops)
    atomic_write_text(modelfile, built.text)
    result.modelfile = str(modelfile)
    result.notes += built.notes
    result.ollama = ollama_create(ollama_name, modelfile)
