"""Fine-tuning data: Alpaca, chat (`messages`), prompt/completion and plain text, detected per file.

Every row is checked before training; a bad row is an error naming file, line and field, or with
--skip-bad-rows a counted, reported skip. Nothing is dropped silently.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from llmctl.answering import alpaca_prompt, checked_messages
from llmctl.errors import UsageError
from llmctl.jsonl import iter_json_array, iter_jsonl, starts_with

FORMATS = ("alpaca", "chat", "prompt-completion", "text")


@dataclass
class Example:
    """A prompt (as chat turns) and the response to learn; or, for plain text, only `text`."""

    messages: list[dict[str, str]] = field(default_factory=list)  # ends with the assistant turn to learn
    text: str | None = None
    source: str = ""  # file:line, for messages about this example


@dataclass
class DataReport:
    format: str = ""
    rows: int = 0
    examples: int = 0
    skipped: list[str] = field(default_factory=list)  # "file:line: why"


@dataclass
class ColumnMap:
    instruction: str = "instruction"
    input: str = "input"
    output: str = "output"
    messages: str = "messages"
    prompt: str = "prompt"
    completion: str = "completion"
    text: str = "text"


def read_rows(path: Path) -> list[tuple[int, Any]]:
    """(line or row number, row) pairs from JSON, JSONL, CSV or Parquet."""
    return list(iter_rows(path))


def iter_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """read_rows one row at a time, whatever the format: memory follows the largest row, not the file."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--data {path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        yield from _csv_rows(path)
    elif suffix == ".parquet":
        yield from _parquet_rows(path)
    elif starts_with(path, "["):  # a JSON array (the original Alpaca data)
        yield from iter_json_array(path, f"--data {path}: no such file")
    else:
        yield from iter_jsonl(path, f"--data {path}: no such file", hint="one JSON object per line (JSONL), or a JSON array")


def _csv_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """Each data row as {header: cell}, cells as the strings the file holds; data row i is numbered i + 2
    (its line, when no cell spans lines), as the header is line 1."""
    number = 1
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # the default, 128 KB a cell, is no limit on data
    try:
        with open(path, encoding="utf-8", newline="") as f:
            for number, row in enumerate(csv.DictReader(f), 2):
                yield number, row
    except (csv.Error, UnicodeDecodeError) as e:
        raise UsageError(f"{path}:{number + 1}: cannot read as csv: {e}") from None


def _parquet_rows(path: Path, batch: int = 256) -> Iterator[tuple[int, dict]]:
    """Each row as a dict, numbered from 1, read a batch of rows at a time. pyarrow decodes a row group's
    column chunks whole, so memory follows the largest row group (writers cap them), not the file."""
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False).iter_batches(batch_size=batch)
        number = 0
        for rows in batches:
            for row in rows.to_pylist():
                number += 1
                yield number, row
    except Exception as e:  # pyarrow raises several kinds (ArrowInvalid, OSError) for a malformed file
        raise UsageError(f"{path}: cannot read as parquet: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def detect_format(row: Any, columns: ColumnMap) -> str | None:
    if not isinstance(row, dict):
        return None
    if columns.messages in row:
        return "chat"
    if columns.instruction in row:
        return "alpaca"
    if columns.prompt in row and columns.completion in row:
        return "prompt-completion"
    if columns.text in row:
        return "text"
    return None


def _string(row: dict, key: str, where: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise UsageError(f"{where}: field '{key}' is missing, empty or not a string")
    return value


def _alpaca(row: dict, c: ColumnMap, where: str) -> list[Example]:
    instruction = _string(row, c.instruction, where)
    if "instances" in row and c.output not in row:  # the Alpaca seed-task layout
        instances = row["instances"]
        if not isinstance(instances, list) or not instances:
            raise UsageError(f"{where}: field 'instances' must be a non-empty list")
        return [_alpaca_example(instruction, _string(i, "input", where, False), _string(i, "output", where), where)
                for i in instances if isinstance(i, dict)]
    return [_alpaca_example(instruction, _string(row, c.input, where, False), _string(row, c.output, where), where)]


def _alpaca_example(instruction: str, input_text: str, output: str, where: str) -> Example:
    return Example(messages=[{"role": "user", "content": alpaca_prompt(instruction, input_text)}, {"role": "assistant", "content": output}], source=where)


def _chat(row: dict, c: ColumnMap, where: str) -> list[Example]:
    clean = checked_messages(row.get(c.messages), where, c.messages)
    if clean[-1]["role"] != "assistant":
        raise UsageError(f"{where}: the last message must be the assistant's (the response to learn)")
    return [Example(messages=clean, source=where)]


def _prompt_completion(row: dict, c: ColumnMap, where: str) -> list[Example]:
    return [Example(messages=[{"role": "user", "content": _string(row, c.prompt, where)},
                              {"role": "assistant", "content": _string(row, c.completion, where)}], source=where)]


def _text(row: dict, c: ColumnMap, where: str) -> list[Example]:
    return [Example(text=_string(row, c.text, where), source=where)]


PARSERS = {"alpaca": _alpaca, "chat": _chat, "prompt-completion": _prompt_completion, "text": _text}


def load_examples(paths: list[Path], fmt: str = "auto", columns: ColumnMap | None = None,
                  skip_bad_rows: bool = False) -> tuple[list[Example], DataReport]:
    """Every example of the files, checked, and what was read and skipped."""
    report = DataReport()
    examples = list(iter_examples(paths, fmt, columns, skip_bad_rows, report))
    return examples, report


def iter_examples(paths: list[Path], fmt: str = "auto", columns: ColumnMap | None = None,
                  skip_bad_rows: bool = False, report: DataReport | None = None) -> Iterator[Example]:
    """load_examples one example at a time, filling `report` as it goes: a file is never in memory whole."""
    columns = columns or ColumnMap()
    if fmt != "auto" and fmt not in FORMATS:
        raise UsageError(f"unknown --format '{fmt}'", hint="use auto, " + ", ".join(FORMATS))
    report = report if report is not None else DataReport()
    for path in paths:
        report.format = _file_format(Path(path), fmt, columns, report.format)
        for number, row in iter_rows(Path(path)):
            report.rows += 1
            where = f"{path}:{number}"
            try:
                if not isinstance(row, dict):
                    raise UsageError(f"{where}: expected a JSON object")
                parsed = PARSERS[report.format](row, columns, where)
            except UsageError as e:
                if not skip_bad_rows:
                    raise UsageError(e.message, hint="fix the row, or pass --skip-bad-rows to skip and report it") from None
                report.skipped.append(e.message)
                continue
            report.examples += len(parsed)
            yield from parsed
    if not report.examples:
        raise UsageError("the data has no usable examples" + (f" ({len(report.skipped)} rows skipped)" if report.skipped else ""))


def _file_format(path: Path, fmt: str, columns: ColumnMap, earlier: str) -> str:
    """The file's format: `fmt`, or with "auto" that of the first row that shows one (read streaming)."""
    if next(iter_rows(path), None) is None:
        raise UsageError(f"{path}: the file has no rows (an empty dataset)")
    file_format = fmt
    if fmt == "auto":
        file_format = next((f for f in (detect_format(r, columns) for _, r in iter_rows(path)) if f), None)
        if file_format is None:
            raise UsageError(f"{path}: cannot tell the format of its rows",
                             hint="expected alpaca (instruction/output), chat (messages), prompt/completion or "
                                  "text fields; map other names with --instruction-field etc., or set --format")
    if earlier and earlier != file_format:
        raise UsageError(f"{path} is {file_format} but earlier files are {earlier}", hint="use one format per run")
    return file_format
