"""`llmctl eval`: perplexity on text and exact-match accuracy on question-answer sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmctl.cli.options import JsonOpt, state
from llmctl.cli.output import err, out, print_json

app = typer.Typer(no_args_is_help=True)


@app.command("perplexity")
def perplexity(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="Local model: registry name, directory, adapter, pretrained GPT.")],
    data: Annotated[list[str], typer.Option("--data", "-d", help="Text file, directory, JSONL/CSV/Parquet, or python-stdlib.")],
    text_field: Annotated[str, typer.Option("--text-field")] = "text",
    window: Annotated[Optional[int], typer.Option("--window", min=2, help="Tokens per window (default: the context).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Loss, perplexity, bits per character and per byte, with a sliding window over long texts."""
    from llmctl.evaluate.perplexity import perplexity as run

    with err.status(f"scoring with {model}…"):
        doc = run(model, data, text_field, window, state(ctx).config().config)
    if json_out:
        print_json(doc)
        return
    out.print(f"[bold]{model}[/] on {doc['documents']} documents ({doc['tokens']:,} tokens, window {doc['window']}):")
    out.print(f"loss {doc['loss']:.4f} nats/token · perplexity {doc['perplexity']:.3f} · "
              f"{doc['bits_per_char']:.4f} bits/char · {doc['bits_per_byte']:.4f} bits/byte")


@app.command("exact")
def exact(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="Any registry model (local or remote).")],
    data: Annotated[Path, typer.Option("--data", "-d", help="JSONL of {question, answer} (answer: string or list).")],
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1)] = 32,
    system: Annotated[Optional[str], typer.Option("--system", "-s")] = None,
    save: Annotated[Optional[Path], typer.Option("--save", help="Write every question, answer and verdict as JSONL.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Exact-match and contains accuracy (greedy answers, SQuAD-style normalisation)."""
    from rich.table import Table

    from llmctl.evaluate.exact import exact_match
    from llmctl.fsutil import atomic_write_text

    with err.status(f"asking {model}…"):
        doc = exact_match(model, data, max_tokens, system, state(ctx).config().config)
    if save:
        import json

        atomic_write_text(save, "".join(json.dumps(r) + "\n" for r in doc["results"]))
    if json_out:
        print_json(doc)
        return
    table = Table(show_edge=False, pad_edge=False)
    for column in ("question", "expected", "answer", "exact", "contains"):
        table.add_column(column, overflow="fold")
    for r in doc["results"]:
        table.add_row(r["question"], " | ".join(r["answers"]), r["response"].strip()[:80], "✓" if r["exact"] else "·",
                      "✓" if r["contains"] else "·")
    out.print(table)
    out.print(f"[bold]{model}[/]: exact match {doc['exact_match']:.1%} · contains {doc['contains']:.1%} "
              f"of {doc['questions']} questions")
