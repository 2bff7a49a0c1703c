"""Corpora larger than memory: big files stream in chunks, tokenization runs in worker processes with a
bounded number of batches in flight, and BPE trains on a bounded sample."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from llmctl.pretrain import data as corpus_data
from llmctl.pretrain import shards
from llmctl.pretrain.data import CorpusReport, CorpusSpec, iter_documents, normalise
from llmctl.pretrain.prepare import prepare_data

ROOT = Path(__file__).resolve().parent.parent
WORDS = "thou art more lovely and temperate rough winds do shake the darling buds of may".split()


def write_corpus(path: Path, megabytes: int) -> None:
    """Generated lines, deterministic, written a megabyte at a time."""
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        for block in range(megabytes):
            words = rng.choice(WORDS, size=200_000)
            lines = [" ".join(words[i:i + 10]) for i in range(0, len(words), 10)]
            text = "\n".join(f"{block}.{n} {line}" for n, line in enumerate(lines))
            f.write(text[:1 << 20] + "\n")


PEAK_RSS = """
import json, resource, sys
from pathlib import Path
from llmctl.pretrain import data
data.STREAM_BYTES = 1 << 20  # stream every file over a megabyte, so a small test corpus shows the bound
from llmctl.pretrain.data import CorpusSpec
from llmctl.pretrain.prepare import prepare_data
_, manifest, _ = prepare_data(CorpusSpec([sys.argv[1]]), "bpe", 300, Path(sys.argv[2]), 1, 0.05, sample_bytes=200_000)
peak_kb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(json.dumps({"peak_mb": peak_kb / 1024, "tokens": manifest.train_tokens + manifest.val_tokens}))
"""


def peak_rss(corpus: Path, out: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, str(corpus), str(out)], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_corpus_larger_than_the_memory_allowed_tokenizes_in_bounded_memory(tmp_path):
    """RLIMIT_AS cannot be used here (importing transformers maps gigabytes of address space it never
    touches), so the bound is on peak resident memory: tokenizing a 16 MB file may cost at most 4 MB
    (a quarter of the corpus) more than tokenizing a 2 MB one, in this process or any worker."""
    small, big = tmp_path / "small.txt", tmp_path / "big.txt"
    write_corpus(small, 2)
    write_corpus(big, 16)
    a, b = peak_rss(small, tmp_path / "a"), peak_rss(big, tmp_path / "b")
    assert b["tokens"] > 7 * a["tokens"]
    assert b["peak_mb"] - a["peak_mb"] < 4, (a, b)


def test_a_big_file_streams_in_chunks_and_reads_back_the_same(tmp_path, monkeypatch):
    text = "".join(f"line {i}\r\nsecond {i}\r" for i in range(3000))
    (tmp_path / "big.txt").write_bytes(("\n\n" + text + "\n\n").encode())
    whole = list(iter_documents(CorpusSpec([str(tmp_path)]), CorpusReport()))
    monkeypatch.setattr(corpus_data, "STREAM_BYTES", 1000)
    monkeypatch.setattr(corpus_data, "STREAM_CHARS", 300)
    report = CorpusReport()
    parts = list(corpus_data.iter_parts(CorpusSpec([str(tmp_path)]), report))
    assert len(parts) > 100 and [last for _, last in parts] == [False] * (len(parts) - 1) + [True]
    assert "".join(p for p, _ in parts) == whole[0] == normalise(text)
    assert report.documents == 1 and report.characters == len(whole[0])


def test_worker_processes_write_what_one_process_writes(tmp_path, monkeypatch):
    corpus = tmp_path / "c.txt"
    write_corpus(corpus, 3)
    spec = CorpusSpec([str(corpus)])
    _, two, _ = prepare_data(spec, "char", 0, tmp_path / "two", 1, 0.1)
    monkeypatch.setattr(shards, "cpu_count", lambda: 1)
    _, one, _ = prepare_data(spec, "char", 0, tmp_path / "one", 1, 0.1)
    assert (one.train_tokens, one.val_tokens) == (two.train_tokens, two.val_tokens)
    for split in ("train", "val"):
        assert (tmp_path / "one" / f"{split}.bin").read_bytes() == (tmp_path / "two" / f"{split}.bin").read_bytes()


def test_the_tokenizer_sample(tmp_path):
    corpus = tmp_path / "c.txt"
    write_corpus(corpus, 2)
    notes = []
    prepare_data(CorpusSpec([str(corpus)]), "bpe", 300, tmp_path / "sampled", 1, 0.1, notes.append, sample_bytes=100_000)
    assert any("sample (100,000 of" in n for n in notes), notes
    notes.clear()
    prepare_data(CorpusSpec([str(corpus)]), "bpe", 300, tmp_path / "all", 1, 0.1, notes.append, sample_bytes=10**9)
    assert any("not smaller than the corpus" in n and "all of it" in n for n in notes), notes
