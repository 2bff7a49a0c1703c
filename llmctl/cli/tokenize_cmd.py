"""`llmctl tokenize`: how a model splits text into tokens, with their ids."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llmctl.cli.options import JsonOpt, ModelOpt, SystemOpt, state
from llmctl.cli.output import out, print_json


def tokenize(
    ctx: typer.Context,
    text: Annotated[Optional[str], typer.Argument(help="The text. Also read from stdin when piped (both: joined).")] = None,
    model: ModelOpt = None,
    chat: Annotated[bool, typer.Option("--chat", help="Tokenize the whole chat prompt TEXT becomes (template and special tokens).")] = False,
    system: SystemOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show how a model splits text into tokens: boundaries, ids, count, characters per token.

    Local models only (a remote model's tokenizer is on its server).
    Examples: llmctl tokenize "The Eiffel Tower is located in" · llmctl tokenize --chat "Hi" ·
    cat notes.txt | llmctl tokenize --json
    """
    from llmctl.inspect.tokens import tokenize as run_tokenize
    from llmctl.prompting import read_prompt_text

    body = read_prompt_text(text, "tokenize")
    cfg = state(ctx).config({"model": model}).config
    result = run_tokenize(cfg.model, body, chat=chat, system=system, config=cfg)
    if json_out:
        print_json(result.to_dict())
        return
    from llmctl.cli.render import token_strip

    out.print(token_strip(result.tokens, boundaries=out.color_system is None))
    out.print(f"[dim]ids:[/] {[t.id for t in result.tokens]}")
    special = sum(t.special for t in result.tokens)
    n = len(result.tokens)
    out.print(f"{n} token{'s' if n != 1 else ''} · {len(result.text)} characters · "
              f"{result.chars_per_token:.2f} characters per token"
              + (f" · {special} special [bold white on magenta](marked)[/]" if special else "")
              + f" · {result.model}" + (" · chat prompt" if chat else ""))
