"""Rendering shared by all commands: stdout for results (and --json), stderr for everything else."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape

# Progress, tables meant for people, warnings and errors go to stderr when a command prints
# machine-readable output; results go to stdout. Scripts read stdout, people read both.
out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)


def print_json(obj: Any) -> None:
    """One JSON document on stdout, nothing else."""
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, indent=2, default=str) + "\n")
    sys.stdout.flush()


def error_line(message: str) -> None:
    # escape: a message may quote user text such as "[/]" that rich would read as markup
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(message)}")


def fmt_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
