"""Large and odd data: `data inspect` and the fine-tuning reader stream JSONL, so memory follows the largest
row, not the file; near-duplicate search does work that grows with the rows, not their pairs; deep nesting
is an error naming the line; a U+2028 inside a string is part of its row in every reader."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from llmctl.data.inspect import Duplicates, inspect_file, survey
from llmctl.data.similarity import NearDuplicateIndex, WordCounts, rouge_l
from llmctl.errors import UsageError
from llmctl.finetune.data import load_examples
from llmctl.jsonl import iter_jsonl, parse_jsonl

ROOT = Path(__file__).resolve().parent.parent

# Runs inspect_file in a fresh process and reports its own peak RSS before and after (ru_maxrss, in KiB):
# RLIMIT_AS is no use here, since the allocator and imported libraries reserve far more than they touch.
MEASURE = """
import json, resource, sys
from llmctl.data.inspect import inspect_file
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
doc = inspect_file(sys.argv[1])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grew_kb": peak - base, "rows": doc["rows"], "fields": doc["fields"], "problems": doc["problems"]}))
"""


def measured_inspect(path: Path) -> dict:
    r = subprocess.run([sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True, timeout=600,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_a_200_mb_row_takes_a_small_multiple_of_its_size(tmp_path):
    path = tmp_path / "one-row.jsonl"
    words = "lorem ipsum dolor sit amet consectetur " * (200_000_000 // 39)
    path.write_text(json.dumps({"instruction": "Summarise the text.", "input": words, "output": "A summary."}) + "\n")
    row_mb = path.stat().st_size / 2**20
    del words
    doc = measured_inspect(path)
    assert doc["rows"] == 1 and doc["problems"] == []
    assert doc["fields"]["input"]["words"]["max"] == 6 * (200_000_000 // 39)
    grew_mb = doc["grew_kb"] / 1024
    assert grew_mb < 5 * row_mb, f"{grew_mb:.0f} MB for a {row_mb:.0f} MB row"  # measured: 3.1x


def test_a_50_mb_instruction(tmp_path):
    path = tmp_path / "long-instruction.jsonl"
    rows = [{"instruction": "Explain " + "why the sky is blue " * (50_000_000 // 19), "output": "Light scatters."},
            {"instruction": "Explain why the sky is blue.", "output": "Rayleigh scattering."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    doc = measured_inspect(path)
    assert doc["rows"] == 2 and doc["fields"]["instruction"]["count"] == 2
    assert doc["grew_kb"] / 1024 < 5 * 50 * 1.05


def rows_say_number(n: int) -> list[dict]:
    return [{"instruction": f"Say the number {i}.", "output": str(i)} for i in range(n)]


def rows_varied(n: int, seed: int = 0) -> list[dict]:
    """Random prompts whose vocabulary grows with the file (as real text's does), few near duplicates."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(n * 3)]
    return [{"instruction": "Describe " + " ".join(rng.choice(vocab) for _ in range(rng.randint(4, 12))),
             "output": "ok"} for _ in range(n)]


def dedup_work(rows: list[dict], tmp_path: Path, budget: int | None = None) -> tuple[int, dict]:
    path = tmp_path / f"rows-{len(rows)}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, _, frequency = survey(path)
    found = Duplicates(0.7, frequency, budget) if budget else Duplicates(0.7, frequency)
    for number, row in enumerate(rows, 1):
        found.add(number, row, "alpaca")
    return found.index.work, found.result()


@pytest.mark.parametrize("make", [rows_say_number, rows_varied])
def test_near_duplicate_work_grows_linearly(tmp_path, make):
    """Counted, not timed: the postings read for N rows and for 4N rows. All pairs would be 16 times the
    work, and so would reading every prompt that shares "say the number" for every row."""
    small, small_doc = dedup_work(make(1500), tmp_path)
    large, large_doc = dedup_work(make(6000), tmp_path)
    assert large <= 5 * max(small, 1), (small, large)
    assert large_doc["near_search_cut_short"] == 0
    if make is rows_say_number:  # each is a near duplicate of an earlier one (ROUGE-L 0.75): found, not missed
        assert large_doc["near"] == 5999 and large_doc["near_pairs"][0]["similarity"] == 0.75


def test_the_search_budget_bounds_the_worst_case(tmp_path):
    """A small fixed vocabulary and no near duplicates: every posting list grows with the file. The budget
    caps the rows read per row, and the searches it cut short are counted, not hidden."""
    rng = random.Random(3)
    rows = [{"instruction": " ".join(rng.choice("abcdefghijklmnopqrst") for _ in range(8)), "output": "ok"}
            for _ in range(3000)]
    work, doc = dedup_work(rows, tmp_path, budget=20)
    assert work <= 20 * 3000 and doc["near_search_cut_short"] > 0
    unbounded, _ = dedup_work(rows, tmp_path)
    assert unbounded > 3 * work


def test_prefix_filtered_index_finds_what_all_pairs_find():
    rng = random.Random(2)
    vocab = "the a cat dog sat ran on under mat table quickly slowly red blue".split()
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(3, 9))) for _ in range(300)]
    counts = WordCounts()
    for text in texts:
        counts.add(text.split())
    for threshold in (0.5, 0.7, 0.9):
        index = NearDuplicateIndex(threshold, counts)
        for text in texts:
            scores = [rouge_l(text, other) for other in index.texts]
            best = max(scores, default=0.0)
            score, match = index.most_similar(text, threshold)
            if best > threshold:
                assert score == pytest.approx(best) and scores[match] == pytest.approx(best)
            else:
                assert (score, match) == (0.0, None)
            first_score, first_match = index.most_similar(text, threshold, first=True)
            assert (first_match is None) == (match is None) and (first_match is None or first_score > threshold)
            index.add(text)
    with pytest.raises(ValueError):
        NearDuplicateIndex(0.7).most_similar("a b c", 0.5)


def test_deep_nesting_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text('{"text": "fine"}\n\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(UsageError, match=r"deep.jsonl:3: JSON nested too deeply"):
        load_examples([path])
    with pytest.raises(UsageError, match=r":3: JSON nested too deeply"):
        list(iter_jsonl(path, "missing"))
    doc = inspect_file(path)
    assert {"line": 3, "problem": "JSON nested too deeply to read"} in doc["problems"]
    r = subprocess.run([sys.executable, "-m", "llmctl", "data", "inspect", str(path), "--json"], capture_output=True,
                       text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                                    "LLMCTL_HOME": str(tmp_path / "home")})
    assert r.returncode in (0, 2) and "internal error" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "nested too deeply" in r.stdout + r.stderr


def test_a_line_separator_inside_a_string_stays_in_its_row(tmp_path):
    path = tmp_path / "seps.jsonl"
    rows = [{"instruction": "one\u2028two\u2029three\x85four", "output": "a\u2028b"},
            {"instruction": "second", "output": "c"}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert [r for _, r in iter_jsonl(path, "missing")] == rows
    assert [r for _, r in parse_jsonl(path, path.read_text(encoding="utf-8"))] == rows
    examples, report = load_examples([path])
    assert report.rows == 2 and len(examples) == 2
    doc = inspect_file(path)
    assert doc["rows"] == 2 and doc["problems"] == [] and doc["format"] == "alpaca"
    assert doc["examples"][0]["fields"]["instruction"] == rows[0]["instruction"]
