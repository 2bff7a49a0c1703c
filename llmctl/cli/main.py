"""The `llmctl` root command: registers the command groups and turns errors into exit codes."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from llmctl import __version__
from llmctl.cli import chat_cmd, config_cmd, data_cmd, eval_cmd, finetune_cmd, logs_cmd, models_cmd, prefs_cmd, pretrain_cmd, prompt_cmd, serve_cmd
from llmctl.cli.options import AppState

app = typer.Typer(
    name="llmctl",
    help="Prompt, fine-tune and pretrain language models. Every command takes --help.",
    no_args_is_help=True,
    add_completion=False,
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


app.command("prompt")(prompt_cmd.prompt)
app.command("chat")(chat_cmd.chat)
app.command("pretrain")(pretrain_cmd.pretrain)
app.command("serve")(serve_cmd.serve)
app.add_typer(eval_cmd.app, name="eval", help="Test models: perplexity, exact match, LLM as a judge, side-by-side comparison.")
app.add_typer(finetune_cmd.app, name="finetune", help="LoRA fine-tuning of a local model (supervised, --method dpo, --method distill); `finetune merge` folds an adapter in.")
app.add_typer(data_cmd.app, name="data", help="Make and check training data: generate, distill, prefs, inspect.")
app.add_typer(models_cmd.app, name="models", help="List, show, add, alias and remove registry models.")
app.add_typer(config_cmd.app, name="config", help="Show, get and set configuration.")
app.add_typer(logs_cmd.app, name="logs", help="Browse the log of prompts and responses.")
data_cmd.app.command("prefs")(prefs_cmd.prefs)


def _debugging(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("LLMCTL_DEBUG", "") not in ("", "0")


def run(argv: list[str] | None = None) -> None:
    """Entry point: one clear line on stderr and a documented exit code for every failure."""
    from llmctl.cli.output import error_line
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
    except Exception as e:  # a bug: short message unless debugging
        if _debugging(argv):
            raise
        error_line(f"internal error: {type(e).__name__}: {e} (run with --debug for the traceback and please report it)")
        code = EXIT_INTERNAL
    sys.exit(code if isinstance(code, int) else 0)
