"""`llmctl serve`: registry models over the OpenAI HTTP API, on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from llmctl.cli.options import state
from llmctl.cli.output import err


def serve(
    ctx: typer.Context,
    model: Annotated[list[str], typer.Option("--model", "-m", help="Model to serve (repeatable); clients use this name.")],
    host: Annotated[str, typer.Option("--host", help="Address to bind. 0.0.0.0 exposes it to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8000,
    api_key: Annotated[Optional[str], typer.Option("--api-key", help="Require 'Authorization: Bearer KEY' (or set LLMCTL_SERVE_API_KEY).")] = None,
    max_queue: Annotated[int, typer.Option("--max-queue", min=1, help="Requests admitted at once; more get 503.")] = 16,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="Requests a local model decodes together (1 = one at a time).")] = 8,
) -> None:
    """Serve models over the OpenAI API: /v1/chat/completions, /v1/completions, /v1/models, /health."""
    from llmctl.serve.run import open_models, serve_until_stopped
    from llmctl.serve.server import ModelServer

    cfg = state(ctx).config().config
    key = api_key or os.environ.get("LLMCTL_SERVE_API_KEY")
    backends = open_models(model, cfg, loading=lambda ref: err.status(f"loading {ref}…"))
    server = ModelServer(backends, host, port, key, max_queue, cfg.sampling.max_tokens, max_batch)
    err.print(f"serving {', '.join(backends)} at [bold]{server.url}[/]" + (" (API key required)" if key else "")
              + " — Ctrl-C to stop")
    serve_until_stopped(server, backends)
