"""`llmctl inspect`: a model's insides on a short text: expert routing and attention weights."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Optional

import typer

from llmctl.cli.options import JsonOpt, ModelOpt, state
from llmctl.cli.output import err, out, print_json

app = typer.Typer(no_args_is_help=True)

TextArg = Annotated[Optional[str], typer.Argument(help="A short text (as is, no chat template). Also read from stdin.")]
PngOpt = Annotated[Optional[Path], typer.Option("--png", help="Also draw it as a heat map in this .png file.")]


def _png_path(png: Path | None) -> Path | None:
    if png is None:
        return None
    from llmctl.inspect.plots import check_png_path

    return check_png_path(png)  # before loading: a bad path fails in a second, not after the model


def _write(figure_of, result, png: Path | None) -> None:
    if png is not None:
        from llmctl.inspect.plots import save_png

        save_png(figure_of(result), png)


@app.command("experts")
def experts(
    ctx: typer.Context,
    text: TextArg = None,
    model: ModelOpt = None,
    png: PngOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Which experts a mixture-of-experts model routes each token to, per layer.

    Needs a local MoE model: one pretrained with `llmctl pretrain --experts N`, or a Mixtral.
    Example: llmctl inspect experts -m my-moe "def add(a, b):" --png experts.png
    """
    from llmctl.inspect.experts import expert_routing
    from llmctl.inspect.plots import routing_figure
    from llmctl.prompting import read_prompt_text

    body = read_prompt_text(text, "inspect experts")
    png = _png_path(png)
    cfg = state(ctx).config({"model": model}).config
    with err.status(f"loading {cfg.model}…", spinner="dots") if not json_out else nullcontext():
        routing = expert_routing(cfg.model, body, cfg)
    _write(routing_figure, routing, png)
    if json_out:
        print_json({**routing.to_dict(), "png": str(png) if png else None})
        return
    from llmctl.cli.render import expert_load_table, routing_table

    out.print(routing_table(routing))
    out.print(expert_load_table(routing))
    if png is not None:
        err.print(f"[dim]heat map written to {png}[/]")


@app.command("attention")
def attention(
    ctx: typer.Context,
    text: TextArg = None,
    model: ModelOpt = None,
    layer: Annotated[Optional[int], typer.Option("--layer", help="Layer, from 0. [default: the last]")] = None,
    head: Annotated[Optional[int], typer.Option("--head", help="Head, from 0. [default: the mean of all heads]")] = None,
    png: PngOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """The attention weights of a short text in one layer and head, as shaded cells or a heat map.

    Local models only. Example: llmctl inspect attention "The cat sat on the mat" --layer 3 --png attention.png
    """
    from llmctl.inspect.attention import attention_map
    from llmctl.inspect.plots import attention_figure
    from llmctl.prompting import read_prompt_text

    body = read_prompt_text(text, "inspect attention")
    png = _png_path(png)
    cfg = state(ctx).config({"model": model}).config
    with err.status(f"loading {cfg.model}…", spinner="dots") if not json_out else nullcontext():
        amap = attention_map(cfg.model, body, layer, head, cfg)
    _write(attention_figure, amap, png)
    if json_out:
        print_json({**amap.to_dict(), "png": str(png) if png else None})
        return
    from llmctl.cli.render import attention_grid

    out.print(attention_grid(amap))
    if png is not None:
        err.print(f"[dim]heat map written to {png}[/]")
