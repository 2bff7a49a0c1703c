"""`llmctl logs`: browse what was asked and answered (newest first)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from llmctl.cli.options import JsonOpt
from llmctl.cli.output import fmt_value, out, print_json
from llmctl.logs import LogStore

app = typer.Typer(invoke_without_command=True)


def _short(text: str | None, width: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


@app.callback()
def list_logs(ctx: typer.Context,
              count: Annotated[int, typer.Option("-n", "--count", min=1, help="How many entries.")] = 10,
              json_out: JsonOpt = False) -> None:
    """List the most recent prompts and responses. `llmctl logs show ID` shows one in full."""
    if ctx.invoked_subcommand:
        return
    rows = LogStore().recent(count)
    if json_out:
        print_json(rows)
        return
    if not rows:
        out.print("no log entries yet")
        return
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False)
    for column in ("id", "time (UTC)", "model", "prompt", "response", "tokens"):
        table.add_column(column, no_wrap=column not in ("prompt", "response"), overflow="fold")
    for r in rows:
        table.add_row(str(r["id"]), r["created"][5:16].replace("T", " "), r["model"], _short(r["prompt"], 40),
                      _short(r["response"], 60), f"{fmt_value(r['prompt_tokens'])}+{fmt_value(r['completion_tokens'])}")
    out.print(table)


@app.command("show")
def show(response_id: Annotated[int, typer.Argument(metavar="ID", help="Entry id from `llmctl logs`.")],
         json_out: JsonOpt = False) -> None:
    """Show one entry in full: messages, parameters, response, usage and timings."""
    row = LogStore().get(response_id)
    if json_out:
        print_json(row)
        return
    out.print(f"[bold]#{row['id']}[/]  {row['created']}  model [bold]{row['model']}[/] ({row['provider']})"
              f"  conversation {row['conversation_id']}")
    if row["system"]:
        out.print(f"[dim]system:[/] {row['system']}")
    out.print("[dim]prompt:[/]")
    out.print(row["prompt"], markup=False)
    out.print("[dim]response:[/]")
    out.print(row["response"], markup=False)
    out.print(f"[dim]params:[/] {json.dumps(row['params'])}")
    out.print(f"[dim]finish:[/] {row['finish_reason']}  [dim]tokens:[/] {row['prompt_tokens']} prompt + "
              f"{row['completion_tokens']} completion  [dim]timings:[/] {json.dumps(row['timings'])}")
    out.print(f"[dim]rendered prompt sha256:[/] {row['prompt_hash']}")
