"""The data stage of pretraining: tokenizer + shards, reused when nothing changed."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Callable, Iterator

from llmctl.errors import UsageError
from llmctl.pretrain.data import CorpusReport, CorpusSpec, iter_documents, iter_parts, resolve_files, source_fingerprint
from llmctl.pretrain.shards import Manifest, _empty_message, pieces, read_manifest, write_shards
from llmctl.pretrain.tokenizer import build_tokenizer

TOKENIZER_DIR = "tokenizer"
# 4 MB: the most frequent merges are settled by a few megabytes of text, and BPE training time grows with
# what it reads; on python-stdlib (31 MB) a 4 MB sample trains in 5-7 s on 2 busy cores (bench/RESULTS.md).
DEFAULT_SAMPLE_BYTES = 4_000_000


def tokenizer_sample(spec: CorpusSpec, report: CorpusReport, sample_bytes: int, seed: int,
                     note: Callable[[str], None]) -> Iterator[str]:
    """About `sample_bytes` of the corpus for BPE training, spread evenly over it: BPE merges settle on a
    few megabytes, and training time grows with the text it reads. Small files are taken whole or not at
    all (so most are never read); big ones are read and every n-th byte's piece is taken."""
    files = [(path, path.stat().st_size) for path in resolve_files(spec)]
    total = sum(size for _, size in files)
    share = min(1.0, sample_bytes / max(1, total))
    if share >= 1:
        note(f"the tokenizer sample ({sample_bytes:,} bytes) is not smaller than the corpus "
             f"({total:,} bytes): training the tokenizer on all of it")
    else:
        note(f"training the tokenizer on a {share:.0%} sample ({sample_bytes:,} of {total:,} bytes, --tokenizer-sample)")
    file_credit = piece_credit = 0.0
    for path, size in files:
        whole = share >= 1 or size < sample_bytes / 64
        if whole and share < 1:
            file_credit += size * share  # systematic sampling: take a file each time a file's worth is due
            if file_credit < size:
                continue
            file_credit -= size
        one = CorpusSpec([str(path)], spec.glob, spec.text_field, spec.min_chars)
        for text, _ in iter_parts(one, report):
            for part in pieces(text):
                piece_credit += len(part) * (1.0 if whole else share)
                if piece_credit >= len(part):
                    piece_credit -= len(part)
                    yield part


def prepare_data(spec: CorpusSpec, tokenizer_kind: str, vocab_size: int, data_dir: Path, seed: int,
                 val_fraction: float, note: Callable[[str], None] = lambda s: None,
                 on_progress: Callable[[int, int, int], None] | None = None,
                 sample_bytes: int = DEFAULT_SAMPLE_BYTES) -> tuple[object, Manifest, bool]:
    """Returns (tokenizer, manifest, reused)."""
    from transformers import AutoTokenizer

    if sample_bytes < 1:
        raise UsageError(f"--tokenizer-sample must be positive, got {sample_bytes}")
    key = hashlib.sha256("\x00".join(map(str, (source_fingerprint(spec), tokenizer_kind, vocab_size, seed,
                                                 val_fraction) + ((sample_bytes,) if tokenizer_kind == "bpe" else ())
                                           )).encode()).hexdigest()
    manifest = read_manifest(data_dir)
    if manifest and manifest.fingerprint == key and (data_dir / TOKENIZER_DIR).is_dir():
        note(f"reusing token shards in {data_dir} ({manifest.train_tokens:,} train tokens)")
        return AutoTokenizer.from_pretrained(data_dir / TOKENIZER_DIR), manifest, True
    report = CorpusReport()
    note(f"training the {tokenizer_kind} tokenizer…" if tokenizer_kind in ("bpe", "char")
         else f"loading the tokenizer of {tokenizer_kind}…")
    try:
        texts = (tokenizer_sample(spec, report, sample_bytes, seed, note) if tokenizer_kind == "bpe"
                 else iter_documents(spec, report))  # characters: every one, or a rare one becomes unknown
        tokenizer = build_tokenizer(tokenizer_kind, vocab_size, texts)
    except UsageError:
        if report.documents == 0:
            raise UsageError(_empty_message(report), hint="check --data, --glob and --min-chars") from None
        raise
    trained_here = tokenizer_kind in ("bpe", "char")  # a borrowed tokenizer has not read the corpus yet
    if trained_here and report.documents == 0:
        raise UsageError(_empty_message(report), hint="check --data, --glob and --min-chars")
    if report.skipped_files:
        note(f"skipped {len(report.skipped_files)} files that are not UTF-8 text, e.g. {report.skipped_files[0]}")
    tmp = data_dir / f".{TOKENIZER_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(data_dir / TOKENIZER_DIR, ignore_errors=True)
    tmp.rename(data_dir / TOKENIZER_DIR)
    whole = tokenizer_kind == "char"  # the tokenizer read every document (BPE read a sample)
    note(f"tokenizing {report.documents:,} documents ({report.characters:,} characters)…" if whole
         else "tokenizing the corpus…")
    total = report.documents if whole else None
    progress = (lambda docs, tokens: on_progress(docs, total, tokens)) if on_progress else None
    manifest = write_shards(spec, tokenizer, tokenizer_kind, data_dir, seed, val_fraction, key, progress)
    return tokenizer, manifest, False
