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


def iter_json_array(path: Path, missing: str, chunk: int = 1 << 20) -> Iterator[tuple[int, Any]]:
    """(element number from 1, element) for each element of a file holding one JSON array, read a megabyte at
    a time: memory follows the largest element, not the file. An error names the line it is on."""
    try:
        f = open(path, encoding="utf-8", newline="")  # line ends as they are: "\r\n" counts one line
    except FileNotFoundError:
        raise UsageError(missing) from None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    with f:
        yield from _array_elements(path, _Buffered(path, f, chunk))


class _Buffered:
    """The unread rest of a text file, as much of it in `text` as the reader has asked for, and the line
    its start is on (the lines of text already dropped are counted, not kept)."""

    def __init__(self, path: Path, file, chunk: int):
        self.path, self.file, self.chunk = path, file, chunk
        self.text, self.pos, self.line, self.ended = "", 0, 1, False

    def more(self) -> bool:
        """Read as much again as is held (at least a chunk), so an element read over and over while it grows
        costs twice its length in parsing, not its length squared. False at the end of the file."""
        if self.ended:
            return False
        if self.pos > len(self.text) // 2:  # drop what was read: the buffer stays near the largest element
            self.line += self.text.count("\n", 0, self.pos)
            self.text, self.pos = self.text[self.pos:], 0
        try:
            piece = self.file.read(max(self.chunk, len(self.text) - self.pos))
        except UnicodeDecodeError as e:
            raise UsageError(f"{self.path}:{self.line_at(len(self.text))}: not UTF-8 text ({e.reason})") from None
        self.text += piece
        self.ended = not piece
        return bool(piece)

    def line_at(self, pos: int) -> int:
        return self.line + self.text.count("\n", 0, pos)

    def next_char(self) -> str:
        """The next character that is not white space ("" at the end), left unread."""
        while True:
            while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.text) or not self.more():
                return self.text[self.pos:self.pos + 1]

    def error(self, pos: int, why: str) -> UsageError:
        return UsageError(f"{self.path}:{self.line_at(pos)}: {why}", hint="a JSON array of objects, or JSONL")


_DECODER = json.JSONDecoder()


def _array_elements(path: Path, buf: _Buffered) -> Iterator[tuple[int, Any]]:
    if buf.next_char() != "[":
        raise buf.error(buf.pos, "not valid JSON (expected a JSON array)")
    buf.pos += 1
    number = 0
    while True:
        char = buf.next_char()
        if char == "]" and number == 0:
            break
        if number:  # after an element: "," and the next, or "]"
            if char == "]":
                break
            if char != ",":
                raise buf.error(buf.pos, "not valid JSON (Expecting ',' delimiter)" if char else "not valid JSON (the array never ends)")
            buf.pos += 1
            buf.next_char()
        number += 1
        yield number, _element(buf)
    buf.pos += 1
    if buf.next_char():
        raise buf.error(buf.pos, "not valid JSON (Extra data after the array)")


def _element(buf: _Buffered) -> Any:
    """One element, reading more of the file while what is held ends inside it (then parsing it again)."""
    while True:
        try:
            value, end = _DECODER.raw_decode(buf.text, buf.pos)
        except json.JSONDecodeError as e:
            # Text that ends inside the element fails at (or, for a string, from) its end: read on.
            if (e.pos >= len(buf.text) - 8 or e.msg.startswith("Unterminated string")) and not buf.ended:
                buf.more()
                continue
            raise buf.error(e.pos, f"not valid JSON ({e.msg})") from None
        except RecursionError:
            raise buf.error(buf.pos, "JSON nested too deeply to read") from None
        if end < len(buf.text) or buf.ended:  # a number at the very end may go on in the next piece
            buf.pos = end
            return value
        buf.more()


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
