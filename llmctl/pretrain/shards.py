"""Token shards: the corpus tokenized once into flat uint16/uint32 files plus a manifest.

Re-running on the same inputs with the same tokenizer reuses them. Files are written under
temporary names and renamed, the manifest last, so an interrupted preparation is simply redone.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from llmctl.errors import UsageError
from llmctl.fsutil import atomic_write_json
from llmctl.pretrain.data import CorpusReport, CorpusSpec, is_validation, iter_documents

MANIFEST = "manifest.json"
PIECE_CHARS = 4096  # long documents are split at line ends into pieces, so even one big file splits
BATCH_DOCS = 256


@dataclass
class Manifest:
    fingerprint: str
    tokenizer: str  # "bpe", "char" or the model reference it came from
    vocab_size: int
    dtype: str
    eot_id: int
    train_tokens: int = 0
    val_tokens: int = 0
    train_chars: int = 0
    val_chars: int = 0
    corpus: dict = field(default_factory=dict)

    @property
    def val_chars_per_token(self) -> float:
        return self.val_chars / max(1, self.val_tokens)


def pieces(text: str, limit: int = PIECE_CHARS) -> list[str]:
    if len(text) <= limit:
        return [text]
    out, start = [], 0
    while start < len(text):
        end = min(len(text), start + limit)
        cut = text.rfind("\n", start, end) + 1 if end < len(text) else end
        end = cut if cut > start else end
        out.append(text[start:end])
        start = end
    return out


def read_manifest(directory: Path) -> Manifest | None:
    try:
        return Manifest(**json.loads((directory / MANIFEST).read_text()))
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None


def write_shards(spec: CorpusSpec, tokenizer, tokenizer_name: str, directory: Path, seed: int, val_fraction: float,
                 fingerprint: str, on_progress: Callable[[int, int], None] | None = None) -> Manifest:
    """Tokenize every document into train.bin / val.bin (split by piece, seeded)."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = len(tokenizer)
    dtype = np.uint16 if vocab <= np.iinfo(np.uint16).max + 1 else np.uint32
    eot = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    manifest = Manifest(fingerprint, tokenizer_name, vocab, np.dtype(dtype).name, int(eot))
    report = CorpusReport()
    tmp = {name: directory / f".{name}.bin.tmp" for name in ("train", "val")}
    files = {name: open(path, "wb") for name, path in tmp.items()}
    batch: list[tuple[str, bool, bool]] = []  # (text, is validation, ends a document)

    pieces_in = {"train": 0, "val": 0}
    last_piece: dict[str, tuple[list[int], int]] = {}  # split -> (ids, chars) of its latest piece

    def add(name: str, ids: list[int], chars: int) -> None:
        files[name].write(np.asarray(ids, dtype=dtype).tobytes())
        setattr(manifest, f"{name}_tokens", getattr(manifest, f"{name}_tokens") + len(ids))
        setattr(manifest, f"{name}_chars", getattr(manifest, f"{name}_chars") + chars)
        pieces_in[name] += 1
        last_piece[name] = (ids, chars)

    def flush() -> None:
        encoded = tokenizer.backend_tokenizer.encode_batch([t for t, _, _ in batch], add_special_tokens=False)
        for (text, val, last), enc in zip(batch, encoded):
            add("val" if val else "train", list(enc.ids) + ([eot] if last else []), len(text) + (1 if last else 0))
        batch.clear()

    def rebalance() -> None:
        """A small corpus can leave a split empty by chance: move the other split's last piece over."""
        for empty, full in (("val", "train"), ("train", "val")):
            if pieces_in[empty] == 0 and pieces_in[full] > 1:
                ids, chars = last_piece[full]
                files[full].truncate(files[full].tell() - len(ids) * np.dtype(dtype).itemsize)
                setattr(manifest, f"{full}_tokens", getattr(manifest, f"{full}_tokens") - len(ids))
                setattr(manifest, f"{full}_chars", getattr(manifest, f"{full}_chars") - chars)
                pieces_in[full] -= 1
                add(empty, ids, chars)

    try:
        for doc_number, text in enumerate(iter_documents(spec, report)):
            parts = pieces(text)
            for i, part in enumerate(parts):
                batch.append((part, is_validation(f"{doc_number}:{i}:{part[:64]}", seed, val_fraction), i == len(parts) - 1))
            if len(batch) >= BATCH_DOCS:
                flush()
                if on_progress:
                    on_progress(report.documents, manifest.train_tokens + manifest.val_tokens)
        if batch:
            flush()
        rebalance()
        for f in files.values():
            f.close()
        if report.documents == 0:
            raise UsageError(_empty_message(report), hint="check --data, --glob and --min-chars")
        if manifest.train_tokens == 0 or manifest.val_tokens == 0:
            raise UsageError(f"the corpus is too small to split ({report.documents} documents, "
                             f"{manifest.train_tokens} train / {manifest.val_tokens} validation tokens)",
                             hint="add data or change --val-fraction")
        manifest.corpus = report.to_dict()
        for name, path in tmp.items():
            os.replace(path, directory / f"{name}.bin")
        atomic_write_json(directory / MANIFEST, asdict(manifest))
        return manifest
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise UsageError(f"no disk space left for token shards in {directory}",
                             hint="free space or use --out on a bigger disk") from None
        raise
    finally:
        for f in files.values():
            f.close()
        for path in tmp.values():
            path.unlink(missing_ok=True)


def _empty_message(report: CorpusReport) -> str:
    if report.files and len(report.skipped_files) == report.files:
        return (f"all {report.files} input files were unreadable (not UTF-8 text), e.g. "
                f"{', '.join(report.skipped_files[:3])}")
    return f"the corpus is empty: {report.files} files gave no documents ({report.empty} empty, {report.too_short} too short)"


def load_tokens(directory: Path, split: str, manifest: Manifest) -> np.ndarray:
    # A memmap: the OS pages in what a batch touches, so shards larger than RAM train fine.
    return np.memmap(directory / f"{split}.bin", dtype=np.dtype(manifest.dtype), mode="r")
