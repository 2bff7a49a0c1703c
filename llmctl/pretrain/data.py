"""Corpus reading and cleaning: text files, directories, JSONL/CSV/Parquet, the Python stdlib.

Documents stream one at a time, big files in chunks (corpora larger than RAM are fine); exact
duplicates are found by hash, so memory grows with the number of documents, not their size. Files that are not UTF-8
text are counted and skipped, never fatal.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from llmctl.errors import UsageError

BUILTIN_CORPORA = ("python-stdlib",)
STREAM_BYTES = 16 << 20  # text files larger than this are read in chunks, never whole
STREAM_CHARS = 1 << 16  # small reads: big strings freed and re-made fragment the heap until it grows with the file
TABLE_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class CorpusReport:
    files: int = 0
    documents: int = 0
    characters: int = 0
    duplicates: int = 0
    too_short: int = 0
    empty: int = 0
    skipped_files: list[str] = field(default_factory=list)  # not UTF-8, binary or unreadable

    def to_dict(self) -> dict:
        return {"files": self.files, "documents": self.documents, "characters": self.characters,
                "duplicates": self.duplicates, "too_short": self.too_short, "empty": self.empty,
                "skipped_files": len(self.skipped_files), "skipped_examples": self.skipped_files[:5]}


@dataclass
class CorpusSpec:
    sources: list[str]
    glob: str = "**/*"
    text_field: str = "text"
    min_chars: int = 1


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def resolve_files(spec: CorpusSpec) -> list[Path]:
    """Every input file, sorted so the corpus (and so the split and the shards) is reproducible."""
    files: list[Path] = []
    for source in spec.sources:
        if source == "python-stdlib":
            root = stdlib_dir()
            files += sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and p.is_file())
            continue
        path = Path(source).expanduser()
        if path.is_dir():
            files += sorted(p for p in path.glob(spec.glob) if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            files.append(path)
        else:
            raise UsageError(f"--data {source}: no such file or directory",
                             hint=f"give a file, a directory, or a built-in corpus ({', '.join(BUILTIN_CORPORA)})")
    if not files:
        raise UsageError("the corpus is empty: no files matched", hint=f"check --data and --glob ({spec.glob})")
    return files


def normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").strip("\n")


def _read_text_file(path: Path) -> str | None:
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if b"\x00" in raw[:8192]:  # binary, even if it happens to decode
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _table_rows(path: Path, text_field: str) -> Iterator[str]:
    """Rows of a JSONL/CSV/Parquet file through `datasets`' local loaders, streamed."""
    from datasets import load_dataset

    try:
        rows = load_dataset(TABLE_SUFFIXES[path.suffix], data_files=str(path), split="train", streaming=True)
        for number, row in enumerate(rows, 1):
            if text_field not in row:
                raise UsageError(f"{path}: row {number} has no field '{text_field}'",
                                 hint=f"choose the text column with --text-field (found: {', '.join(row)})")
            value = row[text_field]
            if isinstance(value, str):
                yield value
    except UsageError:
        raise
    except Exception as e:  # datasets raises many types for a malformed file
        raise UsageError(f"{path}: cannot read as {TABLE_SUFFIXES[path.suffix]}: {str(e).splitlines()[0]}") from None


def _stream_parts(path: Path, report: CorpusReport) -> Iterator[tuple[str, bool]]:
    """A big text file in chunks of about STREAM_CHARS, cut at line ends: (text, is the last chunk)."""
    previous = None
    try:
        with open(path, "rb") as f:
            binary = b"\x00" in f.read(8192)
        if binary:
            report.skipped_files.append(str(path))
            return
        with open(path, encoding="utf-8", newline=None) as f:  # universal newlines: \r\n and \r become \n
            while chunk := f.read(STREAM_CHARS):
                chunk += f.readline()
                if previous is not None:
                    report.characters += len(previous)
                    yield previous, False
                else:
                    chunk = chunk.lstrip("\n")
                previous = chunk
    except (OSError, UnicodeDecodeError):
        report.skipped_files.append(str(path))
        previous = "" if previous is not None else None  # close what was already given out
    if previous is not None:
        report.documents += 1
        report.characters += len(previous.rstrip("\n"))
        yield previous.rstrip("\n"), True


def iter_parts(spec: CorpusSpec, report: CorpusReport) -> Iterator[tuple[str, bool]]:
    """Clean, de-duplicated documents as (text, ends a document): a text file larger than STREAM_BYTES
    comes in chunks (and is not de-duplicated), so memory stays bounded whatever the file size."""
    seen: set[bytes] = set()
    for path in resolve_files(spec):
        report.files += 1
        if path.suffix not in TABLE_SUFFIXES and path.stat().st_size > STREAM_BYTES:
            yield from _stream_parts(path, report)
            continue
        if path.suffix in TABLE_SUFFIXES:
            texts: Iterator[str] = _table_rows(path, spec.text_field)
        else:
            text = _read_text_file(path)
            if text is None:
                report.skipped_files.append(str(path))
                continue
            texts = iter([text])
        for text in texts:
            text = normalise(text)
            if not text.strip():
                report.empty += 1
                continue
            if len(text) < spec.min_chars:
                report.too_short += 1
                continue
            digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
            if digest in seen:
                report.duplicates += 1
                continue
            seen.add(digest)
            report.documents += 1
            report.characters += len(text)
            yield text, True


def iter_documents(spec: CorpusSpec, report: CorpusReport) -> Iterator[str]:
    """Clean, de-duplicated documents from every source, in a fixed order, each whole."""
    parts: list[str] = []
    for text, last in iter_parts(spec, report):
        parts.append(text)
        if last:
            yield "".join(parts)
            parts = []


def is_validation(text: str, seed: int, fraction: float) -> bool:
    """A seeded split by document that needs no shuffling buffer: a hash decides each document."""
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(f"{seed}\x00{text}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def source_fingerprint(spec: CorpusSpec) -> str:
    """Changes when any input file's path, size or mtime changes: the key for reusing shards."""
    h = hashlib.sha256(f"{spec.glob}\x00{spec.text_field}\x00{spec.min_chars}".encode())
    for path in resolve_files(spec):
        stat = path.stat()
        h.update(f"{path.resolve()}\x00{stat.st_size}\x00{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cpu_count() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
