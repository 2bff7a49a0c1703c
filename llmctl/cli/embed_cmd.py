"""`llmctl embed`: sentence embeddings from a local model, as the server's /v1/embeddings makes them."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Annotated

import typer

from llmctl.cli.options import JsonOpt, ModelOpt, state
from llmctl.cli.output import err, out, print_json


def embed(
    ctx: typer.Context,
    text: Annotated[list[str], typer.Argument(help="Texts to embed (each one a vector).")],
    model: ModelOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Embed texts with a local model: mean of the last hidden states, L2-normalised.

    Examples: llmctl embed "a cat" "a kitten" · llmctl embed --json -m smollm2 "hello"
    """
    from llmctl.embeddings import check_inputs
    from llmctl.embeddings import embed as embed_texts
    from llmctl.prompting import open_backend, resolve_entry
    from llmctl.providers import require_local

    cfg = state(ctx).config({"model": model} if model else None).config
    texts = check_inputs(text)
    entry = resolve_entry(model or cfg.model)
    require_local(entry, "embeddings")
    with err.status(f"loading {entry.name}…", spinner="dots") if not json_out else nullcontext():
        backend = open_backend(entry, cfg)
    try:
        result = embed_texts(backend, texts)
    finally:
        backend.close()
    if json_out:
        print_json({"model": entry.name, "dimensions": len(result.vectors[0]), "embeddings": result.vectors,
                    "usage": {"prompt_tokens": result.prompt_tokens}})
        return
    for t, vector in zip(texts, result.vectors):
        head = ", ".join(f"{x:.4f}" for x in vector[:4])
        out.print(f"{t[:40]!r}: {len(vector)} dims [{head}, …]")
    if len(texts) > 1:  # what embeddings are for: how close the texts are
        out.print("cosine similarity to the first: " + ", ".join(
            f"{sum(a * b for a, b in zip(result.vectors[0], v)):.3f}" for v in result.vectors[1:]))
