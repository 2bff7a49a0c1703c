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
from collections import deque
from typing import Callable, Iterator

import numpy as np

from llmctl.errors import UsageError
from llmctl.fsutil import atomic_write_json
from llmctl.pretrain.data import CorpusReport, CorpusSpec, cpu_count, is_validation, iter_parts

MANIFEST = "manifest.json"
PIECE_CHARS = 4096  # long documents are split at line ends into pieces, so even one big file splits
BATCH_CHARS = 1 << 18  # characters per batch a worker encodes (its encodings take ~100 bytes a token)


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
    """Tokenize every document into train.bin / val.bin (split by piece, seeded), in worker processes.
    Memory stays bounded: documents stream in, at most a few batches are in flight, tokens go to disk."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = len(tokenizer)
    dtype = np.uint16 if vocab <= np.iinfo(np.uint16).max + 1 else np.uint32
    eot = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    manifest = Manifest(fingerprint, tokenizer_name, vocab, np.dtype(dtype).name, int(eot))
    report = CorpusReport()
    tmp = {name: directory / f".{name}.bin.tmp" for name in ("train", "val")}
    files = {name: open(path, "wb") for name, path in tmp.items()}
    pieces_in = {"train": 0, "val": 0}
    last_piece: dict[str, tuple[np.ndarray, int]] = {}  # split -> (ids, chars) of its latest piece

    def add(name: str, ids: np.ndarray, chars: int) -> None:
        files[name].write(ids.tobytes())
        setattr(manifest, f"{name}_tokens", getattr(manifest, f"{name}_tokens") + len(ids))
        setattr(manifest, f"{name}_chars", getattr(manifest, f"{name}_chars") + chars)
        pieces_in[name] += 1
        last_piece[name] = (ids, chars)

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

    encoder = PieceEncoder(tokenizer.backend_tokenizer.to_str(), int(eot), np.dtype(dtype).name, seed, val_fraction)
    try:
        with encoder:
            for results in encoder.run(_batches(iter_parts(spec, report))):
                for val, ids, chars in results:
                    add("val" if val else "train", ids, chars)
                if on_progress:
                    on_progress(report.documents, manifest.train_tokens + manifest.val_tokens)
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


def _batches(parts) -> Iterator[list[tuple[str, str, bool]]]:
    """(split key, piece, ends a document) in batches of about BATCH_CHARS; the key names the piece by its
    document number and place, so the split does not depend on how the work is cut up."""
    batch, size, doc_number, piece_number = [], 0, 0, 0
    for text, last in parts:
        for part in pieces(text):
            batch.append((f"{doc_number}:{piece_number}:{part[:64]}", part, False))
            size += len(part)
            piece_number += 1
        if last:
            if batch:
                key, part, _ = batch[-1]
                batch[-1] = (key, part, True)
            doc_number, piece_number = doc_number + 1, 0
        if size >= BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


_worker: dict = {}  # the tokenizer and settings of this worker process


def _start_worker(tokenizer_json: str, eot: int, dtype: str, seed: int, val_fraction: float) -> None:
    from tokenizers import Tokenizer

    _worker.update(tokenizer=Tokenizer.from_str(tokenizer_json), eot=eot, dtype=np.dtype(dtype), seed=seed,
                   val_fraction=val_fraction)


def _encode(batch: list[tuple[str, str, bool]]) -> list[tuple[bool, np.ndarray, int]]:
    w = _worker
    encoded = w["tokenizer"].encode_batch_fast([part for _, part, _ in batch], add_special_tokens=False)  # no offsets
    return [(is_validation(key, w["seed"], w["val_fraction"]),
             np.asarray(enc.ids + ([w["eot"]] if last else []), dtype=w["dtype"]), len(part) + (1 if last else 0))
            for (key, part, last), enc in zip(batch, encoded)]


class PieceEncoder:
    """Encodes batches in a pool of forked processes (one per core), in order, with at most two batches
    per process in flight; in this process when there is one core or no fork."""

    def __init__(self, *settings):
        self.settings, self.pool = settings, None

    def __enter__(self):
        import multiprocessing as mp

        workers = cpu_count()
        if workers > 1 and "fork" in mp.get_all_start_methods():
            # Forked children must not use the parent's tokenizer threads; saying so silences tokenizers' warning.
            before = os.environ.get("TOKENIZERS_PARALLELISM")
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
            try:
                self.pool = mp.get_context("fork").Pool(workers, _start_worker, self.settings)
            finally:
                os.environ.pop("TOKENIZERS_PARALLELISM") if before is None else os.environ.update(TOKENIZERS_PARALLELISM=before)
            self.in_flight = 2 * workers
        else:
            _start_worker(*self.settings)
        return self

    def run(self, batches) -> Iterator[list[tuple[bool, np.ndarray, int]]]:
        if self.pool is None:
            yield from map(_encode, batches)
            return
        pending: deque = deque()
        for batch in batches:
            pending.append(self.pool.apply_async(_encode, (batch,)))
            if len(pending) >= self.in_flight:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
        return False


def _empty_message(report: CorpusReport) -> str:
    if report.files and len(report.skipped_files) == report.files:
        return (f"all {report.files} input files were unreadable (not UTF-8 text), e.g. "
                f"{', '.join(report.skipped_files[:3])}")
    return f"the corpus is empty: {report.files} files gave no documents ({report.empty} empty, {report.too_short} too short)"


def load_tokens(directory: Path, split: str, manifest: Manifest) -> np.ndarray:
    # A memmap: the OS pages in what a batch touches, so shards larger than RAM train fine.
    return np.memmap(directory / f"{split}.bin", dtype=np.dtype(manifest.dtype), mode="r")
