"""JSONL files: reading input with errors that name the file and line (shots, QA sets, training data), and
writing output one whole, synced row at a time so that a crash leaves at most one torn last line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from llmctl.errors import UsageError


def read_text(path: Path, missing: str) -> str:
    """The file as UTF-8 text; `missing` is the message when it does not exist."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(missing) from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not UTF-8 text ({e})") from None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e}") from None


def parse_jsonl(path: Path, text: str, hint: str | None = None) -> list[tuple[int, Any]]:
    """(line number, value) for every non-blank line; a bad line is an error naming file and line."""
    # Split on "\n" only: str.splitlines() also breaks at U+2028/U+2029/NEL, which JSON strings may hold.
    return [(number, loads_line(path, number, line, hint)) for number, line in enumerate(text.split("\n"), 1)
            if line.strip()]


def loads_line(path: Path, number: int, line: str, hint: str | None = None) -> Any:
    """One JSONL line parsed; an error names file and line (deep nesting too, which json meets as recursion)."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}:{number}: not valid JSON ({e.msg})", hint=hint) from None
    except RecursionError:
        raise UsageError(f"{path}:{number}: JSON nested too deeply to read", hint=hint) from None


def jsonl_lines(path: Path, missing: str) -> Iterator[tuple[int, str]]:
    """(line number, line) for every non-blank line, read one line at a time: memory follows the longest
    line, not the file. Lines end at "\n" only, as in parse_jsonl (a U+2028 in a string stays in its row)."""
    try:
        f = open(path, encoding="utf-8", newline="\n")
    except FileNotFoundError:
        raise UsageError(missing) from None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    number = 0
    with f:
        try:
            for number, line in enumerate(f, 1):
                if line.strip():
                    yield number, line
        except UnicodeDecodeError as e:
            raise UsageError(f"{path}:{number + 1}: not UTF-8 text ({e.reason})") from None


def iter_jsonl(path: Path, missing: str, hint: str | None = None) -> Iterator[tuple[int, Any]]:
    """parse_jsonl streamed: (line number, value), one line in memory at a time."""
    for number, line in jsonl_lines(path, missing):
        yield number, loads_line(path, number, line, hint)


def starts_with(path: Path, char: str) -> bool:
    """Whether the file's first non-blank character is `char` (a JSON array is "["), reading only its start."""
    with open(path, "rb") as f:
        while chunk := f.read(65536):
            stripped = chunk.lstrip()
            if stripped:
                return stripped[:1] == char.encode()
    return False


def jsonl_line(row: Any) -> str:
    """One row as one line. JSON leaves U+2028, U+2029 and NEL unescaped, but many readers (Python's
    str.splitlines() among them) end a line there, so they are escaped."""
    line = json.dumps(row, ensure_ascii=False)
    return line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").replace("\x85", "\\u0085") + "\n"


def append_jsonl(path: Path, row: Any) -> None:
    """Append one row and sync it: once this returns, the row survives a crash."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(jsonl_line(row))
        f.flush()
        os.fsync(f.fileno())


class JsonlAppender:
    """append_jsonl with the file kept open, for long runs that write many rows."""

    def __init__(self, path: Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a", encoding="utf-8")

    def write(self, row: Any) -> None:
        self.file.write(jsonl_line(row))
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def read_resumable(path: Path, warn, required: dict[str, type]) -> list[dict]:
    """The rows an earlier run left in `path` (none if it does not exist), to continue it. A last line
    that is not valid JSON (a crash mid-write) is cut off with a warning; any other bad line is an error."""
    path = Path(path)
    if not path.exists():
        return []
    text = read_text(path, f"{path}: no such file")
    lines = text.split("\n")
    rows, offset = [], 0
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                if any(rest.strip() for rest in lines[number:]):
                    raise UsageError(f"{path}:{number}: not valid JSON", hint="--out must be a file this command "
                                     "wrote; fix the line or choose another --out") from None
                warn(f"{path}:{number}: the last line is incomplete (a crash mid-write?); removed it")
                _truncate(path, len(text[:offset].encode("utf-8")))
                return rows
            if not isinstance(row, dict) or not all(isinstance(row.get(k), t) for k, t in required.items()):
                raise UsageError(f"{path}:{number}: not a row this command writes (needs {', '.join(required)})",
                                 hint="choose another --out")
            rows.append(row)
        offset += len(line) + 1
    if text and not text.endswith("\n"):  # a complete last row without its newline: the next append needs one
        with open(path, "a", encoding="utf-8") as f:
            f.write("\n")
    return rows


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)
        f.flush()
        os.fsync(f.fileno())
