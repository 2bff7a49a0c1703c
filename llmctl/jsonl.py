"""Reading JSONL input files with errors that name the file and line (shots, QA sets, training data)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
    rows = []
    # Split on "\n" only: str.splitlines() also breaks at U+2028/U+2029/NEL, which JSON strings may hold.
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as e:
                raise UsageError(f"{path}:{number}: not valid JSON ({e.msg})", hint=hint) from None
    return rows
