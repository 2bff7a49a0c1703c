"""Shared fixtures: every test gets its own LLMCTL_HOME and working directory, and no network."""

from __future__ import annotations

import os

import pytest

from tests.cli_helpers import llmctl
from tests.tiny_models import build_base_model, build_chat_model


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """A fresh LLMCTL_HOME and cwd per test; no user config, no keys, no Hub."""
    for name in list(os.environ):
        if name.startswith(("LLMCTL_", "OPENAI_")):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    monkeypatch.setenv("LLMCTL_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return home


@pytest.fixture(scope="session")
def tiny_chat_model(tmp_path_factory):
    return build_chat_model(tmp_path_factory.mktemp("tiny-chat"))


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory):
    return build_base_model(tmp_path_factory.mktemp("tiny-base"))


@pytest.fixture
def cli(capsys, monkeypatch):
    """The real CLI, in-process: cli("prompt", "-m", ...) -> Result(code, out, err)."""
    return lambda *args, stdin="": llmctl(capsys, monkeypatch, *args, stdin=stdin)
