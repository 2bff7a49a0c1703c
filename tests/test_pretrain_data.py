"""Pretraining data: reading, cleaning, splitting, tokenizers and token shards."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmctl.errors import UsageError
from llmctl.pretrain.data import CorpusReport, CorpusSpec, is_validation, iter_documents, resolve_files
from llmctl.pretrain.prepare import prepare_data
from llmctl.pretrain.shards import pieces
from llmctl.pretrain.tokenizer import train_bpe, train_char


def corpus(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("first document\r\nwith windows newlines\r\n")
    (root / "sub" / "b.txt").write_text("second document\n")
    (root / "sub" / "dup.txt").write_text("second document\n")
    (root / "empty.txt").write_text("\n\n")
    (root / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (root / "blob.bin").write_bytes(b"\x00\x01\x02binary")
    (root / "short.md").write_text("hi")
    return root


def test_documents_are_cleaned_deduplicated_and_reported(tmp_path):
    report = CorpusReport()
    docs = list(iter_documents(CorpusSpec([str(corpus(tmp_path))], min_chars=3), report))
    assert docs == ["first document\nwith windows newlines", "second document"]
    assert (report.files, report.documents, report.duplicates, report.empty, report.too_short) == (7, 2, 1, 1, 1)
    assert sorted(p.rsplit("/", 1)[1] for p in report.skipped_files) == ["blob.bin", "latin1.txt"]


def test_glob_and_missing_sources(tmp_path):
    root = corpus(tmp_path)
    assert [p.name for p in resolve_files(CorpusSpec([str(root)], glob="**/*.txt"))] == [
        "a.txt", "empty.txt", "latin1.txt", "b.txt", "dup.txt"]
    with pytest.raises(UsageError, match="no such file or directory"):
        resolve_files(CorpusSpec([str(tmp_path / "nope")]))
    with pytest.raises(UsageError, match="no files matched"):
        resolve_files(CorpusSpec([str(root)], glob="*.rst"))


def test_python_stdlib_is_a_builtin_corpus():
    files = resolve_files(CorpusSpec(["python-stdlib"]))
    assert len(files) > 500 and all(f.suffix == ".py" for f in files)


def test_tables_through_datasets(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps({"body": f"row number {i}", "n": i}) for i in range(3)) + "\n")
    table = tmp_path / "rows.csv"
    table.write_text("body,n\nfrom csv,1\n")
    docs = list(iter_documents(CorpusSpec([str(rows), str(table)], text_field="body"), CorpusReport()))
    assert docs == ["row number 0", "row number 1", "row number 2", "from csv"]
    with pytest.raises(UsageError, match="has no field 'text'.*--text-field"):
        list(iter_documents(CorpusSpec([str(rows)]), CorpusReport()))


def test_split_is_seeded_and_near_the_fraction():
    texts = [f"document {i}" for i in range(2000)]
    val = [t for t in texts if is_validation(t, 1, 0.1)]
    assert val == [t for t in texts if is_validation(t, 1, 0.1)]
    assert 150 < len(val) < 250
    assert val != [t for t in texts if is_validation(t, 2, 0.1)]


def test_pieces_cut_at_line_ends():
    text = "".join(f"line {i:04d}\n" for i in range(2000))
    parts = pieces(text, 1000)
    assert "".join(parts) == text and all(p.endswith("\n") for p in parts) and max(map(len, parts)) <= 1000


def test_tokenizers_round_trip_and_load_with_autotokenizer(tmp_path):
    from transformers import AutoTokenizer

    texts = ["To be, or not to be: that is the question.\n"] * 50 + ["Whether 'tis nobler in the mind to suffer"] * 50
    for tok in (train_char(texts), train_bpe(texts, 300)):
        tok.save_pretrained(tmp_path / "t")
        loaded = AutoTokenizer.from_pretrained(tmp_path / "t")
        ids = loaded("not to be")["input_ids"]
        assert loaded.decode(ids) == "not to be"
        assert loaded.eos_token == "<|endoftext|>"
    char = train_char(texts)
    assert char.decode(char("Zebra")["input_ids"], skip_special_tokens=False).startswith("<|unk|>")


def test_vocab_larger_than_the_data_supports():
    with pytest.raises(UsageError, match="larger than this corpus supports"):
        train_bpe(["tiny corpus"] * 3, 5000)


def test_shards_are_written_and_reused(tmp_path):
    text_file = tmp_path / "c.txt"
    text_file.write_text("".join(f"The quick brown fox {i} jumps over the lazy dog.\n" for i in range(3000)))
    spec = CorpusSpec([str(text_file)])
    data = tmp_path / "data"
    tok, manifest, reused = prepare_data(spec, "char", 0, data, 1, 0.1)
    assert not reused and manifest.dtype == "uint16"
    train = np.fromfile(data / "train.bin", dtype=np.uint16)
    val = np.fromfile(data / "val.bin", dtype=np.uint16)
    assert len(train) == manifest.train_tokens and len(val) == manifest.val_tokens
    assert manifest.train_chars + manifest.val_chars == len(text_file.read_text().strip("\n")) + 1
    assert 0.05 < manifest.val_tokens / (manifest.train_tokens + manifest.val_tokens) < 0.2
    stamp = (data / "train.bin").stat().st_mtime_ns
    _, again, reused = prepare_data(spec, "char", 0, data, 1, 0.1)
    assert reused and again == manifest and (data / "train.bin").stat().st_mtime_ns == stamp
    text_file.write_text(text_file.read_text() + "one more line\n")
    assert not prepare_data(spec, "char", 0, data, 1, 0.1)[2]  # a changed input is re-tokenized


def test_parquet_through_datasets(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"text": ["parquet one", "parquet two"], "id": [1, 2]}), path)
    assert list(iter_documents(CorpusSpec([str(path)]), CorpusReport())) == ["parquet one", "parquet two"]
