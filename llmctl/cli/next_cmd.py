"""`llmctl next`: the next-token distribution after a text, at several temperatures, step by step."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Optional

import typer

from llmctl.cli.options import JsonOpt, ModelOpt, state
from llmctl.cli.output import err, out, print_json
from llmctl.errors import UsageError


def parse_temperatures(text: str) -> list[float]:
    """'0.2,1.0,1.5' -> [0.2, 1.0, 1.5]."""
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--temperature {text!r} is not a list of numbers", hint="e.g. --temperature 0.2,1.0,1.5") from None


def next_token(
    ctx: typer.Context,
    text: Annotated[Optional[str], typer.Argument(help="The text to continue (as is, no chat template). Also read from stdin.")] = None,
    model: ModelOpt = None,
    top: Annotated[int, typer.Option("--top", "-k", min=1, max=50, help="How many of the likeliest tokens to show.")] = 10,
    temperatures: Annotated[str, typer.Option("--temperature", "-t", help="Temperatures to compare, comma-separated; 0 = greedy.")] = "1.0",
    steps: Annotated[int, typer.Option("--steps", min=1, max=64, help="Repeat along the greedy continuation, one token at a time.")] = 1,
    png: Annotated[Optional[Path], typer.Option("--png", help="Also draw the distributions as a chart in this .png file.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Show the next-token distribution after TEXT, side by side per temperature, with its entropy.

    Local models only (a remote model gives no logits). Examples:
    llmctl next "The Eiffel Tower is located in" -t 0.2,1.0,1.5 · llmctl next "Once upon a" --steps 8 --png next.png
    """
    from llmctl.inspect.nexttoken import next_tokens
    from llmctl.prompting import read_prompt_text

    body = read_prompt_text(text, "next")
    temps = parse_temperatures(temperatures)
    if png is not None:
        from llmctl.inspect.plots import check_png_path

        png = check_png_path(png)
    cfg = state(ctx).config({"model": model}).config
    with err.status(f"loading {cfg.model}…", spinner="dots") if not json_out else nullcontext():
        result = next_tokens(cfg.model, body, temps, top, steps, cfg)
    if png is not None:
        from llmctl.inspect.plots import next_token_figure, save_png

        save_png(next_token_figure(result), png)
    if json_out:
        print_json({**result.to_dict(), "png": str(png) if png else None})
        return
    from rich.markup import escape

    from llmctl.cli.render import next_steps_table, next_token_table

    if len(result.steps) == 1:
        out.print(next_token_table(result.steps[0], result.model))
    else:
        out.print(next_steps_table(result))
        out.print(f"\n[dim]text:[/] {escape(result.text)}[bold green]{escape(result.continuation)}[/]"
                  + (" [dim](end of text)[/]" if result.stopped_at_eos else ""))
    if png is not None:
        err.print(f"[dim]chart written to {png}[/]")
