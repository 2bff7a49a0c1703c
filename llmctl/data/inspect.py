"""`llmctl data inspect`: what a data file holds before anyone trains on it: its format, length
statistics, exact and near duplicates, a few examples, and every problem with the line it is on.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable

from llmctl.answering import ROLES, alpaca_prompt, prompt_from_row
from llmctl.data.similarity import NearDuplicateIndex
from llmctl.errors import UsageError
from llmctl.finetune.data import ColumnMap, detect_format, read_rows
from llmctl.jsonl import read_text

FORMATS = ("alpaca", "alpaca-seed", "chat", "prompt-completion", "text", "preference", "prompts")
MAX_PAIRS = 100  # near-duplicate pairs listed (all are counted)


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


def normalised(row: dict, fmt: str) -> str:
    """The row's texts, lower case with single spaces: equal for rows that differ only in case or spacing."""
    parts = [f"{k}={' '.join(' '.join(v).lower().split())}" for k, v in sorted(fields_of(row, fmt).items())]
    return "\n".join(parts)


# -- reading, and the whole inspection ------------------------------------------------------------------------

def read_all_rows(path: Path) -> tuple[list[tuple[int, Any]], list[dict[str, Any]]]:
    """(line, row) pairs and the lines that are not valid JSON: JSONL is read line by line so that every
    bad line is reported; a JSON array, CSV or Parquet goes through the fine-tuning reader."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    if path.suffix.lower() in (".csv", ".parquet"):
        return read_rows(path), []
    text = read_text(path, f"{path}: no such file")
    if text.lstrip().startswith("["):
        return read_rows(path), []
    rows, problems = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as e:
                problems.append({"line": number, "problem": f"not valid JSON ({e.msg})"})
    return rows, problems


def file_format(rows: list[tuple[int, Any]]) -> tuple[str | None, Counter]:
    """The format most rows have, and how many rows look like each format."""
    counts = Counter(f for f in (row_format(r) for _, r in rows) if f)
    return (counts.most_common(1)[0][0] if counts else None), counts


def row_problems(rows: list[tuple[int, Any]], fmt: str) -> list[dict[str, Any]]:
    problems = []
    for number, row in rows:
        if not isinstance(row, dict):
            problems.append({"line": number, "problem": f"expected a JSON object, got {type(row).__name__}"})
            continue
        found = CHECKS[fmt](row)
        own = row_format(row)
        suffix = f" (the row looks like {own}, the file is {fmt})" if own and own != fmt else ""
        problems += [{"line": number, "problem": p + suffix} for p in found]
    return problems


def describe(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "mean": round(statistics.fmean(values), 1),
            "median": round(float(statistics.median(values)), 1), "max": max(values)}


def length_stats(rows: list[tuple[int, dict]], fmt: str, tokenizer=None) -> dict[str, dict[str, Any]]:
    texts: dict[str, list[str]] = defaultdict(list)
    for _, row in rows:
        for name, values in fields_of(row, fmt).items():
            texts[name] += values
    stats = {}
    for name, values in texts.items():
        if not values:
            continue
        stats[name] = {"count": len(values), "chars": describe([len(v) for v in values]),
                       "words": describe([len(v.split()) for v in values])}
        if tokenizer is not None:
            ids = tokenizer(values, add_special_tokens=False)["input_ids"]
            stats[name]["tokens"] = describe([len(i) for i in ids])
    return stats


def duplicates(rows: list[tuple[int, dict]], fmt: str, max_similarity: float) -> dict[str, Any]:
    """Exact duplicates (same normalised texts) as groups of lines; near duplicates as pairs of lines whose
    prompts have a ROUGE-L F above `max_similarity` (the measure `data generate` filters with)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for number, row in rows:
        groups[normalised(row, fmt)].append(number)
    exact = [lines for lines in groups.values() if len(lines) > 1]
    repeated = {line for lines in exact for line in lines[1:]}
    index, lines_in_index, pairs = NearDuplicateIndex(), [], []
    for number, row in rows:
        if number in repeated:
            continue
        text = prompt_text(row, fmt)
        score, match = index.most_similar(text, max_similarity)
        if match is not None:
            pairs.append({"lines": [lines_in_index[match], number], "similarity": round(score, 3)})
        index.add(text)
        lines_in_index.append(number)
    return {"exact": len(repeated), "exact_groups": exact, "near": len(pairs), "near_pairs": pairs[:MAX_PAIRS]}


def load_tokenizer(ref: str, config=None):
    """The tokenizer of a local registry model (its adapter's, if it has one)."""
    from llmctl.loading import load_tokenizer as load_model_tokenizer

    return load_model_tokenizer(ref, config, doing="token counts")


def inspect_file(path: Path, model_ref: str | None = None, examples: int = 3, max_similarity: float = 0.7,
                 config=None) -> dict[str, Any]:
    """Everything `data inspect` shows, as one JSON-ready document."""
    rows, problems = read_all_rows(Path(path))
    fmt, counts = file_format(rows)
    doc: dict[str, Any] = {"file": str(path), "format": fmt, "rows": len(rows) + len(problems),
                           "row_formats": dict(counts), "tokenizer": model_ref, "fields": {},
                           "duplicates": {"exact": 0, "exact_groups": [], "near": 0, "near_pairs": []}, "examples": []}
    if not rows and not problems:
        problems.append({"line": None, "problem": "the file has no rows"})
    elif fmt is None:
        problems.append({"line": None, "problem": "cannot tell the format of any row (expected " + ", ".join(FORMATS) + ")"})
    else:
        problems += row_problems(rows, fmt)
        good = [(n, r) for n, r in rows if isinstance(r, dict)]
        tokenizer = load_tokenizer(model_ref, config) if model_ref else None
        doc["fields"] = length_stats(good, fmt, tokenizer)
        doc["duplicates"] = duplicates(good, fmt, max_similarity)
        flawed = {p["line"] for p in problems}
        shown = [(n, r) for n, r in good if n not in flawed][:examples]  # rows that show the format as meant
        doc["examples"] = [{"line": n, "fields": {k: "\n".join(v) for k, v in fields_of(r, fmt).items() if v}}
                           for n, r in shown]
    doc["problems"] = sorted(problems, key=lambda p: (p["line"] or 0))
    return doc
