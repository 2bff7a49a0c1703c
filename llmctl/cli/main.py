"""The `llmctl` root command: registers the command groups and turns errors into exit codes."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from llmctl import __version__
from llmctl.cli.lazy_group import LazyCommand, LazyGroup
from llmctl.cli.options import AppState

# Every command, in --help order. A command's module is imported only when it runs, shows its help
# or is completed; the help here is what the root's --help lists (tests check it against the module).
COMMANDS = {
    "prompt": LazyCommand("llmctl.cli.prompt_cmd:prompt", "Send a prompt to a model and stream the response."),
    "chat": LazyCommand("llmctl.cli.chat_cmd:chat", "Chat with a model. Type /help inside for commands (/system, /set, /reset, /save, /load, /exit)."),
    "pretrain": LazyCommand("llmctl.cli.pretrain_cmd:app", "Pretrain a GPT on your text: tokenizer, token shards, self-supervised next-token training; `pretrain pairs` shows the pairs it learns from."),
    "serve": LazyCommand("llmctl.cli.serve_cmd:serve", "Serve models over the OpenAI API: /v1/chat/completions, /v1/completions, /v1/models, /health."),
    "eval": LazyCommand("llmctl.cli.eval_cmd:app", "Test models: perplexity, exact match, LLM as a judge, comparison, lm-eval benchmarks, lineage; gates for CI."),
    "finetune": LazyCommand("llmctl.cli.finetune_cmd:app", "LoRA fine-tuning of a local model (supervised, --method dpo, --method distill); `finetune merge` folds an adapter in."),
    "data": LazyCommand("llmctl.cli.data_cmd:app", "Make and check training data: generate, distill, prefs, inspect.",
                        subcommands=(("prefs", "llmctl.cli.prefs_cmd:prefs"),)),
    "embed": LazyCommand("llmctl.cli.embed_cmd:embed", "Embed texts with a local model: mean of the last hidden states, L2-normalised."),
    "export": LazyCommand("llmctl.cli.export_cmd:export", "Export a model to one GGUF file for llama.cpp, ollama and LM Studio, checked by a round trip."),
    "tokenize": LazyCommand("llmctl.cli.tokenize_cmd:tokenize", "Show how a model splits text into tokens: boundaries, ids, count, characters per token."),
    "next": LazyCommand("llmctl.cli.next_cmd:next_token", "Show the next-token distribution after TEXT, side by side per temperature, with its entropy."),
    "inspect": LazyCommand("llmctl.cli.inspect_cmd:app", "Look inside a model on a short text: expert routing and attention weights."),
    "models": LazyCommand("llmctl.cli.models_cmd:app", "List, show, add, alias and remove registry models."),
    "config": LazyCommand("llmctl.cli.config_cmd:app", "Show, get and set configuration."),
    "logs": LazyCommand("llmctl.cli.logs_cmd:app", "Browse the log of prompts and responses."),
}


class RootGroup(LazyGroup):
    """The root group over COMMANDS."""

    table = COMMANDS


app = typer.Typer(
    name="llmctl",
    help="Prompt, fine-tune and pretrain language models. Every command takes --help.",
    cls=RootGroup,
    no_args_is_help=True,
    # Plain help: typer's rich help renderer costs more to import than typer itself, and shows a
    # <bool> placeholder after every flag.
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"llmctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[Optional[Path], typer.Option("--config", help="Extra config file (TOML), above user and project files.")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    ctx.obj = AppState(config_file=config, debug=debug)


def _debugging(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("LLMCTL_DEBUG", "") not in ("", "0")


def error_line(message: str) -> None:
    # Imported on the way out: rich's console takes a third of the time `llmctl --help` may take.
    from llmctl.cli.output import error_line as print_error

    print_error(message)


def _internal(e: BaseException) -> str:
    return f"internal error: {type(e).__name__}: {e} (run with --debug for the traceback and please report it)"


def run(argv: list[str] | None = None) -> None:
    """Entry point: one clear line on stderr and a documented exit code for every failure."""
    from llmctl.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE, LlmctlError

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        code = app(args=argv, standalone_mode=False, prog_name="llmctl")
        if code == EXIT_INTERRUPTED:  # typer catches Ctrl-C itself and returns 130 silently
            error_line("interrupted")
    except typer.Exit as e:
        code = e.exit_code
    except LlmctlError as e:
        if _debugging(argv):
            raise
        error_line(str(e))
        code = e.exit_code
    except (typer.Abort, KeyboardInterrupt):  # Ctrl-C
        error_line("interrupted")
        code = EXIT_INTERRUPTED
    except typer.TyperException as e:  # bad flags and arguments, as typer reports them
        ctx = getattr(e, "ctx", None)
        where = f"{ctx.command_path}: " if ctx else ""
        hint = f" (see '{ctx.command_path} --help')" if ctx else ""
        if e.format_message().strip():  # empty when a group was called bare and has shown its help
            error_line(f"{where}{e.format_message()}{hint}")
        code = EXIT_USAGE
    except BrokenPipeError:  # `llmctl ... | head`: the reader left, which is not an error
        sys.stderr.close()
        code = 0
    except OSError as e:  # the file system refused (not a folder, read-only, disk full): the place, not a bug
        from llmctl.errors import storage_error

        if _debugging(argv):
            raise
        found = storage_error(e)
        error_line(str(found) if found else _internal(e))
        code = found.exit_code if found else EXIT_INTERNAL
    except Exception as e:  # a bug: short message unless debugging
        if _debugging(argv):
            raise
        error_line(_internal(e))
        code = EXIT_INTERNAL
    sys.exit(code if isinstance(code, int) else 0)
