"""`llmctl serve`: registry models over the OpenAI HTTP API, on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmctl.cli.options import state
from llmctl.cli.output import err


def serve(
    ctx: typer.Context,
    model: Annotated[list[str], typer.Option("--model", "-m", help="Model to serve (repeatable); clients use this name.")],
    host: Annotated[str, typer.Option("--host", help="Address to bind. 0.0.0.0 exposes it to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8000,
    api_key: Annotated[Optional[str], typer.Option("--api-key", help="Require 'Authorization: Bearer KEY'. Visible in the process list: prefer LLMCTL_SERVE_API_KEY or --api-key-file.")] = None,
    api_key_file: Annotated[Optional[Path], typer.Option("--api-key-file", help="Read the required API key from this file (first line).")] = None,
    protect_health: Annotated[bool, typer.Option("--protect-health", help="Require the API key on /health too.")] = False,
    max_queue: Annotated[int, typer.Option("--max-queue", min=1, help="Requests admitted at once; more get 503.")] = 16,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="Requests a local model decodes together (1 = one at a time).")] = 8,
    max_tokens_limit: Annotated[int, typer.Option("--max-tokens-limit", min=1, help="Cap on any request's max_tokens (the model's context caps it too).")] = 4096,
    cors: Annotated[Optional[list[str]], typer.Option("--cors", help="Allow browser requests from this origin (repeatable); off by default.")] = None,
    access_log: Annotated[bool, typer.Option("--access-log", help="Log every request to stderr.")] = False,
    shutdown_timeout: Annotated[float, typer.Option("--shutdown-timeout", min=0, help="On SIGTERM, seconds running requests get to finish before they end as 'interrupted'.")] = 30.0,
    read_timeout: Annotated[float, typer.Option("--read-timeout", min=0.1, help="Seconds a client has to send a request's headers, and then its body.")] = 30.0,
    keep_alive_timeout: Annotated[float, typer.Option("--keep-alive-timeout", min=0.1, help="Seconds an idle keep-alive connection stays open.")] = 5.0,
    max_connections: Annotated[int, typer.Option("--max-connections", min=1, help="Open connections at most; more are closed at once.")] = 1024,
    prefix_cache: Annotated[float, typer.Option("--prefix-cache", min=0, metavar="MB", help="Memory per local model for the keys and values of recent prompts: a prompt that begins like one of them (a system prompt, an agent's tools) is computed only from where they differ. 0 turns it off.")] = 256,
) -> None:
    """Serve models over the OpenAI API: /v1/chat/completions, /v1/completions, /v1/models, /health.

    Also /v1/embeddings (local models) and /metrics (Prometheus text format)."""
    from llmctl.serve.run import open_models, required_api_key, serve_until_stopped
    from llmctl.serve.server import ModelServer

    cfg = state(ctx).config().config
    key = required_api_key(api_key, api_key_file)
    backends = open_models(model, cfg, loading=lambda ref: err.status(f"loading {ref}…"))
    server = ModelServer(backends, host, port, key, max_queue, cfg.sampling.max_tokens, max_batch, protect_health,
                         max_tokens_limit=max_tokens_limit, cors=cors, access_log=access_log,
                         shutdown_timeout=shutdown_timeout, read_timeout=read_timeout,
                         keep_alive_timeout=keep_alive_timeout, max_connections=max_connections,
                         prefix_cache_mb=prefix_cache)
    err.print(f"serving {', '.join(backends)} at [bold]{server.url}[/]" + (" (API key required)" if key else "")
              + " — Ctrl-C to stop")
    serve_until_stopped(server, backends)
