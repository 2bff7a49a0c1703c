"""`llmctl data`: make and check training data: self-instruct generation, distillation, preference
pairs, inspection."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)
