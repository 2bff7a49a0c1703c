"""`llmctl data inspect`: what a data file holds before anyone trains on it: its format, length
statistics, exact and near duplicates, a few examples, and every problem with the line it is on.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from bisect import bisect_right
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator

from llmctl.answering import ROLES, alpaca_prompt, prompt_from_row
from llmctl.data.exact_duplicates import DigestLog
from llmctl.data.lengths import LengthStats
from llmctl.data.similarity import NearDuplicateIndex, WordCounts, append_number, index_words
from llmctl.errors import UsageError
from llmctl.finetune.data import ColumnMap, detect_format, iter_rows
from llmctl.jsonl import jsonl_lines, starts_with

FORMATS = ("alpaca", "alpaca-seed", "chat", "prompt-completion", "text", "preference", "prompts")
MAX_PAIRS = 100  # near-duplicate pairs listed (all are counted)
SEARCH_BUDGET = 2000  # earlier rows compared with each row at most: time stays linear in the rows


def row_format(row: Any) -> str | None:
    """The format one row looks like, or None."""
    if not isinstance(row, dict):
        return None
    if "chosen" in row and "rejected" in row:
        return "preference"
    if "instruction" in row and "instances" in row:
        return "alpaca-seed"
    if "instruction" in row and "output" not in row:
        return "prompts"  # Alpaca prompts without answers: what `data distill` reads
    found = detect_format(row, ColumnMap())
    if found:
        return found
    return "prompts" if "prompt" in row or "question" in row else None


# -- what each format must have: one checker per format, each returning every problem with the row -------------

def _text_field(row: dict, key: str, optional: bool = False) -> list[str]:
    value = row.get(key)
    if key not in row:
        return [] if optional else [f"missing field '{key}'"]
    if not isinstance(value, str):
        return [f"field '{key}' is {type(value).__name__}, not a string"]
    if not optional and not value.strip():
        return [f"field '{key}' is empty"]
    return []


def _messages(value: Any, key: str, last_role: str | None) -> list[str]:
    if not isinstance(value, list) or not value:
        return [f"field '{key}' must be a non-empty list of {{role, content}}"]
    problems = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            problems.append(f"{key}[{i}]: role must be one of {', '.join(ROLES)}")
        elif not isinstance(m.get("content"), str):
            problems.append(f"{key}[{i}]: content must be a string")
        elif m["role"] == "assistant" and not m["content"].strip():
            problems.append(f"{key}[{i}]: empty assistant message")
    if not problems and last_role and value[-1]["role"] != last_role:
        problems.append(f"the last message in '{key}' must be the {last_role}'s")
    return problems


def _check_seed(row: dict) -> list[str]:
    problems = _text_field(row, "instruction")
    instances = row.get("instances")
    if not isinstance(instances, list) or not instances:
        return problems + ["field 'instances' must be a non-empty list of {input, output}"]
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict):
            problems.append(f"instances[{i}] is not an object")
        else:
            problems += [f"instances[{i}]: {p}" for p in _text_field(instance, "input", True) + _text_field(instance, "output")]
    return problems


def _check_preference(row: dict) -> list[str]:
    problems = []
    for key in ("prompt", "chosen", "rejected"):
        value = row.get(key)
        if isinstance(value, list):
            problems += _messages(value, key, None)
        else:
            problems += _text_field(row, key)
    if not problems and _flat(row.get("chosen")).split() == _flat(row.get("rejected")).split():
        problems.append("'chosen' and 'rejected' are the same")
    return problems


def _check_prompts(row: dict) -> list[str]:
    try:
        prompt_from_row(row, "row")
    except UsageError as e:
        return [e.message.removeprefix("row: ")]
    return []


CHECKS: dict[str, Callable[[dict], list[str]]] = {
    "alpaca": lambda r: _text_field(r, "instruction") + _text_field(r, "input", True) + _text_field(r, "output"),
    "alpaca-seed": _check_seed,
    "chat": lambda r: _messages(r.get("messages"), "messages", "assistant"),
    "prompt-completion": lambda r: _text_field(r, "prompt") + _text_field(r, "completion"),
    "text": lambda r: _text_field(r, "text"),
    "preference": _check_preference,
    "prompts": _check_prompts,
}


# -- the text of each field, for statistics, duplicates and examples ------------------------------------------

def _flat(value: Any) -> str:
    """A field as text: a string, or a list of messages joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(m["content"] for m in value if isinstance(m, dict) and isinstance(m.get("content"), str))
    return ""


def _strings(row: dict, key: str) -> list[str]:
    return [row[key]] if isinstance(row.get(key), str) else []


def fields_of(row: dict, fmt: str) -> dict[str, list[str]]:
    """Field name -> its texts in this row (a chat row has one text per turn of each role)."""
    if fmt == "chat":
        by_role: dict[str, list[str]] = defaultdict(list)
        for m in row.get("messages") or []:
            if isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str):
                by_role[m["role"]].append(m["content"])
        return dict(by_role)
    if fmt == "alpaca-seed":
        instances = [i for i in row.get("instances") or [] if isinstance(i, dict)]
        return {"instruction": _strings(row, "instruction"),
                "input": [s for i in instances for s in _strings(i, "input")],
                "output": [s for i in instances for s in _strings(i, "output")]}
    if fmt == "preference":
        return {k: [_flat(row.get(k))] for k in ("prompt", "chosen", "rejected") if _flat(row.get(k))}
    if fmt == "prompts":
        try:
            return {"prompt": [prompt_from_row(row, "row")[1]]}
        except UsageError:
            return {}
    keys = {"alpaca": ("instruction", "input", "output"), "prompt-completion": ("prompt", "completion"), "text": ("text",)}
    return {k: _strings(row, k) for k in keys[fmt]}


def prompt_text(row: dict, fmt: str) -> str:
    """The part near duplicates are judged on: the prompt (an Alpaca instruction + input, the last user turn)."""
    if fmt == "alpaca":
        return alpaca_prompt(_flat(row.get("instruction")), _flat(row.get("input")))
    if fmt == "chat":
        return (fields_of(row, fmt).get("user") or [""])[-1]
    texts = fields_of(row, fmt)
    first = next(iter(texts.values()), [])
    return first[0] if first else ""


def normalised_pieces(texts: list[str], chunk: int = 1 << 20) -> Iterator[str]:
    """The same as " ".join(" ".join(texts).lower().split()), in pieces of whole words (joined by spaces), a
    megabyte at a time: never a list of every word of a 200 MB field, which would take gigabytes."""
    carry = ""
    for text in texts:
        for start in range(0, len(text), chunk):
            piece = carry + text[start:start + chunk]
            words = piece.split()
            carry = words.pop() if words and not piece[-1].isspace() else ""
            if words:
                yield " ".join(words).lower()
        if carry:
            yield carry.lower()
            carry = ""


def row_digest(row: dict, fmt: str) -> bytes:
    """8 bytes that are equal for rows whose texts differ only in case or spacing (exact duplicates)."""
    digest = hashlib.blake2b(digest_size=8)
    for name, values in sorted(fields_of(row, fmt).items()):
        digest.update(f"\0{name}=".encode())
        for i, piece in enumerate(normalised_pieces(values)):
            digest.update((" " + piece if i else piece).encode("utf-8", "surrogatepass"))
    return digest.digest()


# -- reading: two streaming passes, one row in memory at a time -----------------------------------------------

def iter_file(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """(line, row, None) for each row, (line, None, problem) for each line that is not valid JSON. JSONL is
    read line by line (memory follows the longest row); a JSON array, CSV or Parquet goes through the
    fine-tuning reader."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    if path.suffix.lower() in (".csv", ".parquet") or starts_with(path, "["):
        yield from ((number, row, None) for number, row in iter_rows(path))
        return
    for number, line in jsonl_lines(path, f"{path}: no such file"):
        try:
            yield number, json.loads(line), None
        except json.JSONDecodeError as e:
            yield number, None, f"not valid JSON ({e.msg})"
        except RecursionError:
            yield number, None, "JSON nested too deeply to read"


def survey(path: Path) -> tuple[Counter, int, WordCounts]:
    """First pass: how many rows look like each format, how many lines there are, and how common each
    prompt word is (to order the near-duplicate index)."""
    counts: Counter = Counter()
    lines, frequency = 0, WordCounts()
    for _, row, _ in iter_file(path):
        lines += 1
        fmt = row_format(row)
        if fmt:
            counts[fmt] += 1
            frequency.add(index_words(prompt_text(row, fmt)))
    return counts, lines, frequency


def file_format(counts: Counter) -> str | None:
    """The format most rows have."""
    return counts.most_common(1)[0][0] if counts else None


def problems_of(number: int, row: Any, fmt: str) -> list[dict[str, Any]]:
    if not isinstance(row, dict):
        return [{"line": number, "problem": f"expected a JSON object, got {type(row).__name__}"}]
    own = row_format(row)
    suffix = f" (the row looks like {own}, the file is {fmt})" if own and own != fmt else ""
    return [{"line": number, "problem": p + suffix} for p in CHECKS[fmt](row)]


class IndexLines:
    """The line of each text in the near-duplicate index. Text i is on line i + 1 until a blank, bad or
    repeated line shifts the rest, so only those shifts are kept: nothing a row in a clean file."""

    def __init__(self) -> None:
        self.shift_from, self.shift = array("I"), array("Q")  # from text i on, line = i + 1 + shift

    def add(self, index: int, line: int) -> None:
        shift = line - index - 1
        if shift != (self.shift[-1] if self.shift else 0):
            self.shift_from = append_number(self.shift_from, index)
            self.shift.append(shift)

    def line(self, index: int) -> int:
        k = bisect_right(self.shift_from, index) - 1
        return index + 1 + (self.shift[k] if k >= 0 else 0)


def repeated_digests(path: Path, fmt: str) -> set[int]:
    """A pass of its own over the file: the digests (row_digest) that more than one row has."""
    log = DigestLog()
    for _, row, bad_json in iter_file(path):
        if not bad_json and isinstance(row, dict):
            log.add(row_digest(row, fmt))
    return log.repeated()


class Duplicates:
    """Exact duplicates (same normalised texts; `repeated`, from repeated_digests, says which digests come
    back, so only those rows are grouped) as groups of lines; near duplicates as pairs of lines whose prompts
    have a ROUGE-L F above `max_similarity` (the measure `data generate` filters with), found through the
    prefix-filtered index."""

    def __init__(self, max_similarity: float, frequency: WordCounts, budget: int = SEARCH_BUDGET,
                 repeated: set[int] | None = None):
        self.max_similarity, self.budget, self.repeated = max_similarity, budget, repeated
        self.groups: dict[int, list[int]] = {}  # digest -> lines, for repeated digests only
        self.index = NearDuplicateIndex(max_similarity, frequency, keep_texts=False)
        self.lines = IndexLines()
        self.pairs: list[dict[str, Any]] = []
        self.near = 0

    def _repeat_of_earlier(self, number: int, row: dict, fmt: str) -> bool:
        if self.repeated is not None and not self.repeated:
            return False  # no row repeats another: no digest to work out
        digest = int.from_bytes(row_digest(row, fmt), "little")
        if self.repeated is not None and digest not in self.repeated:
            return False
        group = self.groups.setdefault(digest, [])
        group.append(number)
        return len(group) > 1

    def add(self, number: int, row: dict, fmt: str) -> None:
        if self._repeat_of_earlier(number, row, fmt):
            return
        text = prompt_text(row, fmt)
        score, match = self.index.most_similar(text, self.max_similarity, first=True, budget=self.budget)
        if match is not None:
            self.near += 1
            if len(self.pairs) < MAX_PAIRS:
                self.pairs.append({"lines": [self.lines.line(match), number], "similarity": round(score, 3)})
        self.lines.add(self.index.add(text), number)

    def result(self) -> dict[str, Any]:
        exact = [g for g in self.groups.values() if len(g) > 1]  # in the order of their first lines
        return {"exact": sum(len(g) - 1 for g in exact), "exact_groups": exact, "near": self.near,
                "near_pairs": self.pairs, "near_search_cut_short": self.index.cut_short}


def load_tokenizer(ref: str, config=None):
    """The tokenizer of a local registry model (its adapter's, if it has one)."""
    from llmctl.loading import load_tokenizer as load_model_tokenizer

    return load_model_tokenizer(ref, config, doing="token counts")


def inspect_file(path: Path, model_ref: str | None = None, examples: int = 3, max_similarity: float = 0.7,
                 config=None) -> dict[str, Any]:
    """Everything `data inspect` shows, as one JSON-ready document. The file is read three times, a row at
    a time: for the format, for exact duplicates, for the rest; what is kept per row is a few bytes (its
    digest, its prompt's word ids in the near-duplicate index), never its text or a Python object."""
    path = Path(path)
    counts, lines, frequency = survey(path)
    fmt = file_format(counts)
    doc: dict[str, Any] = {"file": str(path), "format": fmt, "rows": lines, "row_formats": dict(counts),
                           "tokenizer": model_ref, "fields": {},
                           "duplicates": {"exact": 0, "exact_groups": [], "near": 0, "near_pairs": [],
                                          "near_search_cut_short": 0}, "examples": []}
    problems: list[dict[str, Any]] = []
    if not lines:
        problems.append({"line": None, "problem": "the file has no rows"})
    elif fmt is None:
        problems += [{"line": n, "problem": p} for n, _, p in iter_file(path) if p]
        problems.append({"line": None, "problem": "cannot tell the format of any row (expected " + ", ".join(FORMATS) + ")"})
    else:
        lengths = LengthStats(load_tokenizer(model_ref, config) if model_ref else None)
        found = Duplicates(max_similarity, frequency, repeated=repeated_digests(path, fmt))
        for number, row, bad_json in iter_file(path):
            if bad_json:
                problems.append({"line": number, "problem": bad_json})
                continue
            own = problems_of(number, row, fmt)
            problems += own
            if not isinstance(row, dict):
                continue
            lengths.add(fields_of(row, fmt))
            found.add(number, row, fmt)
            if not own and len(doc["examples"]) < examples:  # rows that show the format as meant
                doc["examples"].append({"line": number, "fields": {k: "\n".join(v) for k, v in fields_of(row, fmt).items() if v}})
        doc["fields"], doc["duplicates"] = lengths.result(), found.result()
    doc["problems"] = sorted(problems, key=lambda p: (p["line"] or 0))
    return doc
