"""Run the real CLI entry point in-process: the same error handling and exit codes as the script."""

from __future__ import annotations

import io
import json
import sys
from dataclasses import dataclass

import pytest

from llmctl.cli.main import run


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


def llmctl(capsys, monkeypatch, *args: str, stdin: str = "") -> Result:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(list(args))
    captured = capsys.readouterr()
    return Result(exit_info.value.code, captured.out, captured.err)


def write_jsonl(path, rows):
    """Rows as a JSONL file; returns the path."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
