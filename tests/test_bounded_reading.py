"""Bounded reading: `data inspect` and `finetune inspect` keep a few bytes a row, not the rows (memory measured
in a fresh process for a small and a ten times larger file); a huge example is tokenized only until it passes
max_length; a JSON array, a CSV and a Parquet file are read row by row and give the rows the whole-file
readers gave; deep nesting inside a JSON array is an error naming its line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llmctl.errors import UsageError
from llmctl.finetune.data import iter_rows, load_examples
from llmctl.jsonl import iter_json_array

ROOT = Path(__file__).resolve().parent.parent

# Runs the real CLI in a fresh process and prints its peak RSS (KiB) after the command's own output.
MEASURE = """
import resource, sys
from llmctl.cli.main import run
sys.argv = ["llmctl", *sys.argv[1:]]
try:
    run()
except SystemExit as e:
    assert not e.code, e.code
print("PEAK_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_kb(tmp_path: Path, *args: str) -> tuple[int, str]:
    r = subprocess.run([sys.executable, "-c", MEASURE, *args], capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                            "LLMCTL_HOME": str(tmp_path / "home")})
    assert r.returncode == 0, r.stderr[-2000:]
    output, _, peak = r.stdout.rpartition("PEAK_KB ")
    return int(peak), output


def tiny_rows(path: Path, n: int, key: str = "instruction") -> Path:
    """n rows of ~60 bytes. Alpaca rows have a vocabulary that grows with the file, as real text's does;
    text rows share 500 words, so that the tokenizer's own cache of words (10,000) is not what grows."""
    with open(path, "w") as f:
        for i in range(n):
            words = " ".join(f"w{(i * 7919 + k * 104729) % (3 * n if key == 'instruction' else 500)}" for k in range(4))
            row = {"instruction": f"Describe {words}", "output": f"ok {i}"} if key == "instruction" else {"text": f"Say {words}."}
            f.write(json.dumps(row) + "\n")
    return path


def per_row_growth(tmp_path: Path, small: int, large: int, command, key: str = "instruction") -> float:
    """Bytes of peak RSS per extra row, between a file of `small` rows and one of `large`."""
    peaks = []
    for n in (small, large):
        peak, output = peak_kb(tmp_path, *command(tiny_rows(tmp_path / f"rows-{n}.jsonl", n, key)))
        peaks.append(peak)
    return (peaks[1] - peaks[0]) * 1024 / (large - small)


def test_data_inspect_keeps_a_few_bytes_a_row(tmp_path):
    grew = per_row_growth(tmp_path, 5_000, 40_000, lambda path: ("data", "inspect", str(path), "--json"))
    # By hand: 45 for 10k -> 1M rows; before: 842. The bound leaves ~14 MB for the noise between two processes'
    # peaks and still fails at half of what was kept before.
    assert grew < 400, f"{grew:.0f} bytes a row"


def test_finetune_inspect_keeps_a_few_bytes_an_example(tmp_path, tiny_chat_model):
    grew = per_row_growth(tmp_path, 1_000, 16_000, lambda path: ("finetune", "inspect", "--data", str(path), "-m",
                                                                  str(tiny_chat_model), "--json"), key="text")
    # By hand: under 1 for 10k -> 1M rows; before: 2,456. ~9 MB left for the noise between two processes' peaks.
    assert grew < 600, f"{grew:.0f} bytes an example"


def test_a_huge_example_is_tokenized_only_past_max_length(tmp_path, tiny_chat_model):
    """A 1 MB and a 10 MB instruction: the larger costs a small multiple of its size, not the tokenizer's
    many times; the example is reported as longer than max_length, counted in part."""
    docs, peaks = [], []
    for mb in (1, 10):
        path = tmp_path / f"long-{mb}.jsonl"
        rows = [{"instruction": "Explain " + "why the sky is blue " * (mb * 2**20 // 19), "output": "Light scatters."},
                {"instruction": "Explain why the sky is blue.", "output": "Rayleigh scattering."}]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        peak, output = peak_kb(tmp_path, "finetune", "inspect", "--data", str(path), "-m", str(tiny_chat_model),
                               "--max-length", "64", "--json")
        peaks.append(peak)
        docs.append(json.loads(output))
    per_byte = (peaks[1] - peaks[0]) * 1024 / (9 * 2**20)
    assert per_byte < 6, f"{per_byte:.1f} bytes of memory per byte of the row"
    for doc in docs:
        assert doc["examples"] == 2 and doc["too_long"] == 1 and doc["too_long_counted_in_part"] == 1
        assert 64 < doc["tokens"]["max"] < 64 * 8 and doc["example"]["source"].endswith(":1")


def test_a_short_example_is_encoded_exactly_as_before(tiny_chat_model):
    from transformers import AutoTokenizer

    from llmctl.finetune.data import Example
    from llmctl.finetune.tokenize import encode, encode_prefix

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model)
    chat = Example(messages=[{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}])
    for example in (chat, Example(text="plain text " * 20)):
        item, cut = encode_prefix(tokenizer, example, 40)
        assert not cut and item == encode(tokenizer, example)
    item, cut = encode_prefix(tokenizer, Example(text="plain text " * 2000), 40)
    assert cut and len(item.ids) > 40


ROWS = [{"instruction": "Say \"hi\" \\ there", "input": "", "output": "Hi! \u00e9\u2028\U0001F600"},
        {"instruction": "Nested", "input": "", "output": "ok", "meta": {"a": [1, 2.5, -3e-2, None, True, False]}},
        {"instruction": "Numbers", "input": "", "output": "12", "n": 1234567890123}]


@pytest.mark.parametrize("indent", [None, 2])
@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_a_json_array_gives_the_rows_json_loads_gives(tmp_path, indent, chunk):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(ROWS * 5, indent=indent, ensure_ascii=False), encoding="utf-8")
    got = list(iter_json_array(path, "missing", chunk=chunk))
    assert got == list(enumerate(json.loads(path.read_text(encoding="utf-8")), 1))
    (tmp_path / "empty.json").write_text(" [ \n ] \n")
    assert list(iter_json_array(tmp_path / "empty.json", "missing", chunk=chunk)) == []


@pytest.mark.parametrize("text, line, why", [
    ('[\n{"a": 1},\n{"a": 2}\n{"a": 3}]', 4, "Expecting ',' delimiter"),
    ('[\n{"a": 1},\n{"a": }\n]', 3, "Expecting value"),
    ('[\n{"a": 1}\n] extra', 3, "Extra data"),
    ('[\n{"a": 1},\n{"a": "never closed', 3, "Unterminated string"),
    ('[\n{"a": 1},\n', 3, "not valid JSON"),
    ('[{"ok": 1},\n\n' + "[" * 100_000 + "]" * 100_000 + "]", 3, "JSON nested too deeply"),
])
def test_a_bad_json_array_is_one_error_naming_the_line(tmp_path, text, line, why):
    path = tmp_path / "bad.json"
    path.write_text(text)
    for chunk in (5, 1 << 20):
        with pytest.raises(UsageError, match=rf"bad.json:{line}: .*{why}"):
            list(iter_json_array(path, "missing", chunk=chunk))
    with pytest.raises(UsageError, match=rf"bad.json:{line}: "):
        load_examples([path])


def test_csv_and_parquet_give_the_rows_datasets_gave(tmp_path):
    from datasets import load_dataset

    csv = tmp_path / "rows.csv"
    csv.write_text('instruction,input,output\nSay hi,,"Hi, there"\n"Two\nlines",x,y\nq\u00e9,z,"say ""a"""\n',
                   encoding="utf-8")
    old = [(i + 2, dict(r)) for i, r in enumerate(load_dataset("csv", data_files=str(csv), split="train"))]
    new = list(iter_rows(csv))
    assert [n for n, _ in new] == [n for n, _ in old] == [2, 3, 4]
    # datasets made an empty cell None; the csv module keeps it the empty string the file holds
    assert [{k: v or "" for k, v in r.items()} for _, r in old] == [r for _, r in new]
    parquet = tmp_path / "rows.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{**r, "meta": {"scores": [1.5, -2.0], "ok": i % 2 == 0}, "n": 10**12 + i} for i, r in enumerate(ROWS[:1] * 600)]
    pq.write_table(pa.Table.from_pylist(rows), parquet, row_group_size=250)  # rows in three groups
    old = [(i + 1, dict(r)) for i, r in enumerate(load_dataset("parquet", data_files=str(parquet), split="train"))]
    assert list(iter_rows(parquet)) == old == list(enumerate(rows, 1))
    examples, report = load_examples([parquet])
    assert report.examples == 600 and examples[0].messages[-1]["content"] == ROWS[0]["output"]


def test_malformed_csv_and_parquet_are_one_usage_error(tmp_path):
    parquet = tmp_path / "bad.parquet"
    parquet.write_bytes(b"not parquet at all")
    with pytest.raises(UsageError, match="bad.parquet: cannot read as parquet"):
        list(iter_rows(parquet))
    csv = tmp_path / "bad.csv"
    csv.write_bytes(b"instruction,output\n\xff\xfe,x\n")
    with pytest.raises(UsageError, match="bad.csv:.*cannot read as csv"):
        list(iter_rows(csv))


def test_token_counts_of_a_long_text_are_taken_a_piece_at_a_time_and_equal_the_whole(tiny_chat_model, monkeypatch):
    from transformers import AutoTokenizer

    from llmctl.data.lengths import LengthStats

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model)
    words = ["the", "cat", "sat", "on", "a", "mat,", "and", "then\nit", "slept."]
    text = " ".join(words[i * 7 % len(words)] for i in range(20_000))
    seen = []
    real = tokenizer.__call__

    def recording(texts, **kwargs):
        seen.append(max(len(t) for t in ([texts] if isinstance(texts, str) else texts)))
        return real(texts, **kwargs)

    monkeypatch.setattr(LengthStats, "PIECE", 4096)
    stats = LengthStats(recording)
    stats.add({"text": [text, "a short one"]})
    counts = stats.result()["text"]["tokens"]
    assert counts["max"] == len(real(text, add_special_tokens=False)["input_ids"]) and counts["min"] > 0
    assert max(seen) <= 4096 < len(text)  # never the whole text at once
