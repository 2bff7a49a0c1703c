"""The inspection commands' help, as registered with the lines main.py takes from tests/inspect_helpers.py."""

from __future__ import annotations

import inspect

import pytest

from tests.inspect_helpers import COMMANDS, cli  # noqa: F401 (the cli fixture, with the inspection commands)

PATHS = [["tokenize"], ["next"], ["inspect"], ["inspect", "experts"], ["inspect", "attention"], ["pretrain"],
         ["pretrain", "pairs"]]


@pytest.mark.parametrize("path", PATHS, ids=" ".join)
def test_help(cli, path):
    shown = cli(*path, "--help")
    assert shown.code == 0 and shown.out.startswith(f"Usage: llmctl {' '.join(path)} ")
    assert "<bool>" not in shown.out and "BOOLEAN" not in shown.out and "...}" not in shown.out


@pytest.mark.parametrize("name", ["tokenize", "next"])
def test_the_table_help_is_the_command_help(name):
    command = COMMANDS[name].build(name)
    assert " ".join(inspect.cleandoc(command.help).split("\n\n")[0].split()) == COMMANDS[name].help


def test_bare_inspect_and_pretrain_print_their_help(cli):
    for group in ("inspect", "pretrain"):
        shown = cli(group)
        assert shown.code == 2 and shown.out.startswith("Usage: ") and "Commands:" in shown.out
    assert "pairs" in cli("pretrain", "--help").out
