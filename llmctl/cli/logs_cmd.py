"""`llmctl logs`: browse what was asked and answered (newest first)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.text import Text

from llmctl.cli.options import JsonOpt
from llmctl.cli.output import fmt_value, out, print_json
from llmctl.logs import LogStore

app = typer.Typer(invoke_without_command=True)


def _short(text: str | None, width: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _tokens(row: dict) -> str:
    if row["prompt_tokens"] is None and row["completion_tokens"] is None:
        return "-"
    return f"{fmt_value(row['prompt_tokens'])}+{fmt_value(row['completion_tokens'])}"


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
        # Text(), not str: a prompt about "[bold]" or "[/]" is content, not rich markup.
        table.add_row(str(r["id"]), r["created"][5:16].replace("T", " "), Text(r["model"]),
                      Text(_short(r["prompt"], 40)), Text(_short(r["response"], 60)), _tokens(r))
    out.print(table)


def _section(title: str, body: str) -> None:
    """Text the user or model wrote, under its own heading (it may span lines)."""
    out.print(Text(f"{title}:", style="dim"))
    out.print(Text(body))


def _field(title: str, value: str) -> None:
    out.print(Text.assemble((f"{title}: ", "dim"), value))


@app.command("show")
def show(response_id: Annotated[int, typer.Argument(metavar="ID", help="Entry id from `llmctl logs`.")],
         json_out: JsonOpt = False) -> None:
    """Show one entry in full: messages, parameters, response, usage and timings."""
    row = LogStore().get(response_id)
    if json_out:
        print_json(row)
        return
    out.print(Text.assemble((f"#{row['id']}", "bold"), f"  {row['created']}  model ", (row["model"], "bold"),
                            f" ({fmt_value(row['provider'])})  conversation {row['conversation_id']}"))
    if row["system"]:
        _section("system", row["system"])
    messages = row.get("messages") or []
    # The messages sent differ from system + prompt when there were shots or earlier turns: show them then.
    if len(messages) > 1 + bool(row["system"]):
        _section("messages sent", "\n".join(f"[{m.get('role')}] {m.get('content')}" for m in messages))
    _section("prompt", row["prompt"])
    _section("response", row["response"])
    _field("params", json.dumps(row["params"], ensure_ascii=False))
    _field("usage", f"{fmt_value(row['prompt_tokens'])} prompt + {fmt_value(row['completion_tokens'])} "
                    f"completion tokens, finish reason {fmt_value(row['finish_reason'])}")
    _field("timings", json.dumps(row["timings"]) if row["timings"] else "-")
    _field("rendered prompt sha256", fmt_value(row["prompt_hash"]))
