"""The data stage of pretraining: tokenizer + shards, reused when nothing changed."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Callable

from llmctl.errors import UsageError
from llmctl.pretrain.data import CorpusReport, CorpusSpec, iter_documents, source_fingerprint
from llmctl.pretrain.shards import Manifest, _empty_message, read_manifest, write_shards
from llmctl.pretrain.tokenizer import build_tokenizer

TOKENIZER_DIR = "tokenizer"


def prepare_data(spec: CorpusSpec, tokenizer_kind: str, vocab_size: int, data_dir: Path, seed: int,
                 val_fraction: float, note: Callable[[str], None] = lambda s: None,
                 on_progress: Callable[[int, int, int], None] | None = None) -> tuple[object, Manifest, bool]:
    """Returns (tokenizer, manifest, reused)."""
    from transformers import AutoTokenizer

    key = hashlib.sha256("\x00".join(map(str, (source_fingerprint(spec), tokenizer_kind, vocab_size, seed,
                                                 val_fraction))).encode()).hexdigest()
    manifest = read_manifest(data_dir)
    if manifest and manifest.fingerprint == key and (data_dir / TOKENIZER_DIR).is_dir():
        note(f"reusing token shards in {data_dir} ({manifest.train_tokens:,} train tokens)")
        return AutoTokenizer.from_pretrained(data_dir / TOKENIZER_DIR), manifest, True
    report = CorpusReport()
    note(f"training the {tokenizer_kind} tokenizer…" if tokenizer_kind in ("bpe", "char")
         else f"loading the tokenizer of {tokenizer_kind}…")
    try:
        tokenizer = build_tokenizer(tokenizer_kind, vocab_size, iter_documents(spec, report))
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
    note(f"tokenizing {report.documents:,} documents ({report.characters:,} characters)…" if trained_here
         else "tokenizing the corpus…")
    total = report.documents if trained_here else None
    progress = (lambda docs, tokens: on_progress(docs, total, tokens)) if on_progress else None
    manifest = write_shards(spec, tokenizer, tokenizer_kind, data_dir, seed, val_fraction, key, progress)
    return tokenizer, manifest, False
