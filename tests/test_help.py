"""Every command's --help, bare groups, "did you mean", and shell completion through the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from llmctl.cli.main import app

ROOT = Path(__file__).resolve().parent.parent


def command_paths(group, path=()):
    """Every command and subcommand under `group`, as argument lists."""
    ctx = typer.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        yield [*path, name]
        if hasattr(command, "list_commands"):
            yield from command_paths(command, (*path, name))


ALL_COMMANDS = list(command_paths(typer.main.get_command(app)))


def llmctl_process(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmctl", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **env})


def test_the_walk_finds_every_command():
    assert ["prompt"] in ALL_COMMANDS and ["eval", "exact"] in ALL_COMMANDS and ["data", "prefs"] in ALL_COMMANDS
    assert len(ALL_COMMANDS) >= 33


@pytest.mark.parametrize("path", [[], *ALL_COMMANDS], ids=lambda p: " ".join(p) or "root")
def test_help_shows_no_placeholder_after_a_flag(cli, path):
    shown = cli(*path, "--help")
    assert shown.code == 0 and shown.out.startswith(f"Usage: {' '.join(['llmctl', *path])} ")
    assert "<bool>" not in shown.out and "BOOLEAN" not in shown.out
    assert "...}" not in shown.out  # a metavar "X..." on a list argument reads "{X...}..."


def test_root_help_lists_every_command_with_its_whole_first_line(cli):
    shown = cli("--help").out
    listing = " ".join(shown.split("Commands:")[1].split())
    for name in ("prompt", "chat", "pretrain", "serve", "eval", "finetune", "data", "models", "config", "logs"):
        assert f" {name} " in f" {listing} "
    assert "Type /help inside for commands (/system, /set, /reset, /save, /load, /exit)." in listing
    assert "--install-completion" in shown and "--show-completion" in shown


@pytest.mark.parametrize("group", [[], ["eval"], ["data"], ["models"], ["config"]], ids=lambda p: " ".join(p) or "root")
def test_a_bare_group_prints_its_help_and_exits_2(cli, group):
    shown = cli(*group)
    assert shown.code == 2 and shown.out.startswith("Usage: ") and "Commands:" in shown.out
    assert shown.err == ""


def test_a_mistyped_command_gets_a_suggestion(cli):
    shown = cli("promt")
    assert shown.code == 2 and "No such command 'promt'. Did you mean 'prompt'?" in shown.err


def test_show_completion_prints_a_bash_script():
    # Typer's own switch to name the shell instead of detecting the one we run under.
    done = llmctl_process("--show-completion", "bash", _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    assert done.returncode == 0, done.stderr
    assert "_llmctl_completion()" in done.stdout and "_LLMCTL_COMPLETE=complete_bash" in done.stdout
    assert "complete -o default -F _llmctl_completion llmctl" in done.stdout


def test_install_completion_writes_the_script_under_home(tmp_path):
    done = llmctl_process("--install-completion", "bash", HOME=str(tmp_path),
                          _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    assert done.returncode == 0, done.stderr
    assert "_llmctl_completion()" in (tmp_path / ".bash_completions" / "llmctl.sh").read_text()
    assert ".bash_completions/llmctl.sh" in (tmp_path / ".bashrc").read_text()


@pytest.mark.parametrize("words, expected", [
    ("llmctl mo", {"models"}),
    ("llmctl data ", {"generate", "distill", "inspect", "prefs"}),
    ("llmctl prompt --te", {"--temperature"}),
    ("llmctl eval exact --max-t", {"--max-tokens"}),
])
def test_completion_lists_lazily_loaded_commands_and_options(words, expected):
    # What the installed bash script asks: the words so far and the index of the one being completed.
    done = llmctl_process(_LLMCTL_COMPLETE="complete_bash", COMP_WORDS=words, COMP_CWORD=str(len(words.split(" ")) - 1))
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == expected


def test_a_command_registered_directly_on_a_lazy_root_is_kept():
    from typer.testing import CliRunner

    from llmctl.cli.lazy_group import LazyGroup
    from llmctl.cli.main import COMMANDS

    class Root(LazyGroup):
        table = {"models": COMMANDS["models"]}

    root = typer.Typer(cls=Root, rich_markup_mode=None, add_completion=False)
    root.callback()(lambda: None)

    @root.command("hello")
    def hello() -> None:
        """Say hello."""
        print("hello there")

    runner = CliRunner()
    listing = runner.invoke(root, ["--help"]).output
    assert "models  List, show, add, alias" in listing and "hello   Say hello." in listing
    assert runner.invoke(root, ["hello"]).output == "hello there\n"
    assert runner.invoke(root, ["models", "--help"]).output.startswith("Usage: root models ")
