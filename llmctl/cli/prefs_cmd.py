"""`llmctl data prefs`: a DPO preference file (prompt, chosen, rejected) from saved eval judge/compare runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmctl.cli.options import JsonOpt
from llmctl.cli.output import err, out, print_json


def prefs(
    runs: Annotated[list[str], typer.Argument(metavar="RUN", help="Saved eval runs: ids (see `llmctl eval list`) or directories.")],
    output: Annotated[Path, typer.Option("--out", "-o", help="Preference file to write (JSONL).")],
    min_margin: Annotated[float, typer.Option("--min-margin", min=0.0, help="Judge runs: skip pairs whose mean scores differ by less.")] = 0.0,
    source: Annotated[str, typer.Option("--source", help="auto (a person's verdict where there is one, else the judge's), judge, or human.")] = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Preference pairs for `llmctl finetune --method dpo`: from judge runs the higher mean score is chosen
    (answers to the same prompt, in one run or several), from compare runs the judged winner; ties skipped."""
    from llmctl.data.prefs import build_prefs

    report = build_prefs(runs, output, min_margin, source)
    if json_out:
        print_json(report)
        return
    out.print(f"wrote [bold]{report['pairs']}[/] preference pairs to {report['out']}")
    err.print(f"skipped: {report['ties_skipped']} ties, {report['below_margin_skipped']} below --min-margin, "
              f"{report['failures_skipped']} failed judgments, {report['duplicates_skipped']} duplicates; "
              f"{report['unpaired_prompts']} prompts had a single answer")
