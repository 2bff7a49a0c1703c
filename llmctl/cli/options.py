"""Options shared by several commands, defined once (typer `Annotated` aliases)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

if TYPE_CHECKING:
    from llmctl.config import ResolvedConfig

ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help="Model: registry name or alias, openai:MODEL, hf:REPO_OR_PATH, or a model directory. Default: config 'model' (smollm2).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout and nothing else.")]
SystemOpt = Annotated[Optional[str], typer.Option("--system", "-s", help="System prompt.")]
TemperatureOpt = Annotated[Optional[float], typer.Option("--temperature", "-t", min=0.0, max=2.0, help="Sampling temperature; 0 = greedy. [default: 0.7]")]
TopPOpt = Annotated[Optional[float], typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling mass. [default: 1.0]")]
TopKOpt = Annotated[Optional[int], typer.Option("--top-k", min=0, help="Sample only from the k likeliest tokens; 0 = off. [default: 0]")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", min=0, help="Seed: the same seed gives the same output (0 is a seed too).")]
MaxTokensOpt = Annotated[Optional[int], typer.Option("--max-tokens", min=1, help="Most tokens to generate. [default: 256]")]
StopOpt = Annotated[Optional[list[str]], typer.Option("--stop", help="Stop when this text is generated (repeatable).")]
RepetitionOpt = Annotated[Optional[float], typer.Option("--repetition-penalty", min=0.01, max=10.0, help="Penalise tokens already seen; 1 = off. [default: 1.0]")]
BaseUrlOpt = Annotated[Optional[str], typer.Option("--base-url", help="OpenAI-compatible server URL (vLLM, ollama, llama.cpp, llmctl serve).")]
TimeoutOpt = Annotated[Optional[float], typer.Option("--timeout", min=0.1, help="Seconds to wait for a remote response. [default: 60]")]
RetriesOpt = Annotated[Optional[int], typer.Option("--retries", min=0, max=20, help="Retries with backoff on 429/5xx/connection errors. [default: 2]")]


class AppState:
    """What the root command parsed: passed to subcommands through the typer context."""

    def __init__(self, config_file: Path | None = None, debug: bool = False):
        self.config_file = config_file
        self.debug = debug
        self._warned: set[str] = set()

    def config(self, flags: dict | None = None) -> ResolvedConfig:
        from llmctl.config import resolve_config  # the root parses this state for every command, --help too

        resolved = resolve_config(flags, self.config_file)
        for key, why in resolved.ignored.items():  # said once per command, however often it resolves
            if key not in self._warned:
                from llmctl.cli.output import warn

                warn(f"{key} not applied: {why}")
                self._warned.add(key)
        return resolved


def state(ctx: typer.Context) -> AppState:
    root = ctx.find_root()
    return root.obj if isinstance(root.obj, AppState) else AppState()
