"""Start-up stays cheap: the root help imports no command module and no rich help renderer.

Timings on a shared machine are noise, so this checks what makes start-up slow (bench/startup.py
measures it); the torch/transformers/openai budget per command is in test_cli_models_config.py.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from llmctl.cli.main import COMMANDS, app

ROOT = Path(__file__).resolve().parent.parent
# Each of these costs more to import than typer itself, or pulls in command modules that do.
SLOW_TO_IMPORT = ("typer.rich_utils", "rich.console", "rich.markdown", "pygments", "llmctl.config")


def modules_loaded_by(args: list[str]) -> set[str]:
    code = ("import sys\nfrom llmctl.cli.main import run\ntry:\n    run(%r)\nexcept SystemExit:\n    pass\n"
            "print(' '.join(sys.modules), file=sys.stderr)" % args)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    return set(done.stderr.strip().splitlines()[-1].split())


@pytest.mark.parametrize("args", [["--help"], ["--version"], []], ids=" ".join)
def test_root_help_imports_no_command_module(args):
    loaded = modules_loaded_by(args)
    assert not [m for m in loaded if m.startswith("llmctl.cli.") and m.endswith("_cmd")]
    assert not [m for m in SLOW_TO_IMPORT if m in loaded]


def test_a_command_loads_only_its_own_module():
    loaded = modules_loaded_by(["models", "--help"])
    assert "llmctl.cli.models_cmd" in loaded
    assert not [m for m in loaded if m.endswith("_cmd") and m != "llmctl.cli.models_cmd"]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_the_table_help_is_the_command_help(name):
    """The root lists commands from main.COMMANDS without loading them: that help must not drift."""
    root = typer.main.get_command(app)
    command = root.get_command(typer.Context(root), name)
    first_paragraph = " ".join(inspect.cleandoc(command.help).split("\n\n")[0].split())
    assert first_paragraph == COMMANDS[name].help
