"""The inspection groups called bare print their help (their --help is checked with every command's in test_help)."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("group", ["inspect", "pretrain"])
def test_a_bare_group_prints_its_help(cli, group):
    shown = cli(group)
    assert shown.code == 2 and shown.out.startswith(f"Usage: llmctl {group} ") and "Commands:" in shown.out


def test_pretrain_lists_pairs_and_still_trains_from_its_own_flags(cli):
    shown = cli("pretrain", "--help").out
    assert "pairs" in shown and "--data" in shown and "--experts" in shown
    listed = cli("inspect", "--help").out.split("Commands:")[1]
    assert "experts" in listed and "attention" in listed
