"""`llmctl chat`: an interactive conversation in the terminal."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from llmctl.cli.options import (BaseUrlOpt, MaxTokensOpt, ModelOpt, RepetitionOpt, RetriesOpt, SeedOpt, StopOpt,
                                SystemOpt, TemperatureOpt, TimeoutOpt, TopKOpt, TopPOpt, state)
from llmctl.cli.output import err


def _enable_line_editing() -> None:
    try:  # arrow keys and history for input(); not available on every platform
        import readline  # noqa: F401
    except ImportError:
        pass


def chat(
    ctx: typer.Context,
    model: ModelOpt = None,
    system: SystemOpt = None,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    top_k: TopKOpt = None,
    seed: SeedOpt = None,
    max_tokens: MaxTokensOpt = None,
    stop: StopOpt = None,
    repetition_penalty: RepetitionOpt = None,
    base_url: BaseUrlOpt = None,
    timeout: TimeoutOpt = None,
    retries: RetriesOpt = None,
    no_log: Annotated[bool, typer.Option("--no-log", help="Do not record this conversation in the log.")] = False,
    continue_: Annotated[bool, typer.Option("--continue", "-c", help="Continue the most recent conversation.")] = False,
) -> None:
    """Chat with a model. Type /help inside for commands (/system, /set, /reset, /save, /load, /exit)."""
    from llmctl.chat import ChatSession, run_repl
    from llmctl.logs import LogStore
    from llmctl.prompting import open_backend, sampling_overrides, sampling_params, start_session

    cfg = state(ctx).config(sampling_overrides(temperature, top_p, top_k, seed, max_tokens, repetition_penalty,
                                               timeout, retries, system, model)).config
    store = LogStore() if cfg.log.enabled and not no_log else None
    conversation, entry = start_session(cfg, continue_, model_given=model is not None,
                                        system_given=system is not None, base_url=base_url)
    with err.status(f"loading {entry.name}…", spinner="dots"):
        backend = open_backend(entry, cfg)
    session = ChatSession(backend, entry, sampling_params(cfg, stop), conversation, store)
    err.print(f"[bold]{entry.name}[/] — /help for commands, /exit or Ctrl-D to leave"
              + (f" · continuing {len(conversation.turns)} turns" if conversation.turns else ""))
    _enable_line_editing()

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    try:
        run_repl(session, input, write, lambda text: err.print(text, markup=False, highlight=False))
    finally:
        backend.close()
