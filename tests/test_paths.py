"""Where files go: the platform's config, cache and data dirs; LLMCTL_HOME as one folder; an old home kept."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from llmctl.embedded import conversion_dir
from llmctl.evaluate.runs import RunWriter
from llmctl.logs import LogStore
from llmctl.registry import Registry, make_entry

REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture
def platform(tmp_path, monkeypatch) -> dict[str, Path]:
    """LLMCTL_HOME unset; the XDG dirs (what platformdirs follows on Linux) point into tmp_path."""
    if not sys.platform.startswith("linux"):
        pytest.skip("XDG variables steer platformdirs on Linux only")
    monkeypatch.delenv("LLMCTL_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    dirs = {kind: tmp_path / "xdg" / kind for kind in ("config", "data", "cache")}
    for kind, path in dirs.items():
        monkeypatch.setenv(f"XDG_{kind.upper()}_HOME", str(path))
    return {kind: path / "llmctl" for kind, path in dirs.items()}


def write_every_kind(cli) -> dict[str, Path]:
    """Write each kind of file through the real code; returns where each went."""
    assert cli("config", "set", "sampling.temperature", "0.3").code == 0
    registry = Registry()
    registry.add(make_entry("m", "openai:x"))
    return {
        "config": Path(cli("config", "path", "--json").json()["user"]),
        "registry": registry.path,
        "logs": LogStore().path,
        "eval run": RunWriter("judge").directory,
        "converted weights": conversion_dir(REPO),
    }


def test_each_kind_of_file_lands_in_its_platform_dir(cli, platform):
    written = write_every_kind(cli)
    assert written["config"] == platform["config"] / "config.toml" and written["config"].is_file()
    assert written["registry"] == platform["data"] / "registry.json" and written["registry"].is_file()
    assert written["logs"] == platform["data"] / "logs.db" and written["logs"].is_file()
    assert written["eval run"].parent == platform["data"] / "evals" and written["eval run"].is_dir()
    assert written["converted weights"] == platform["cache"] / "converted" / "HuggingFaceTB--SmolLM2-135M-Instruct"
    assert cli("config", "get", "sampling.temperature").out.strip() == "0.3"
    assert sorted(p.name for p in platform["data"].iterdir()) == ["evals", "logs.db", "logs.db.lock",
                                                                   "registry.json", "registry.json.lock"]


def test_llmctl_home_holds_everything_in_one_folder(cli, platform, tmp_path, monkeypatch):
    home = tmp_path / "one-home"
    monkeypatch.setenv("LLMCTL_HOME", str(home))
    written = write_every_kind(cli)
    assert written == {
        "config": home / "config.toml",
        "registry": home / "registry.json",
        "logs": home / "logs.db",
        "eval run": home / "evals" / written["eval run"].name,
        "converted weights": home / "cache" / "converted" / "HuggingFaceTB--SmolLM2-135M-Instruct",
    }
    assert not (tmp_path / "xdg").exists()  # nothing in the platform's dirs


def test_an_old_home_keeps_its_config_and_cache(cli, platform):
    # What versions before the split left in the data dir: settings and a 20-second conversion.
    old_config = platform["data"] / "config.toml"
    old_config.parent.mkdir(parents=True)
    old_config.write_text("[sampling]\ntemperature = 0.7\n")
    old_conversion = platform["data"] / "cache" / "converted" / "HuggingFaceTB--SmolLM2-135M-Instruct"
    old_conversion.mkdir(parents=True)

    assert cli("config", "get", "sampling.temperature").out.strip() == "0.7"
    assert cli("config", "path", "--json").json()["user"] == str(old_config)
    assert conversion_dir(REPO) == old_conversion
    assert cli("config", "set", "sampling.top_k", "5").code == 0  # changes go to the file in use
    assert cli("config", "get", "sampling.temperature").out.strip() == "0.7"
    assert cli("config", "get", "sampling.top_k", "--json").json()["source"] == str(old_config)
    assert not platform["config"].exists() and not platform["cache"].exists()


def test_llmctl_cache_dir_overrides_both_layouts(platform, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMCTL_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert conversion_dir(REPO).parent.parent == tmp_path / "elsewhere"
    monkeypatch.setenv("LLMCTL_HOME", str(tmp_path / "one-home"))
    assert conversion_dir(REPO).parent.parent == tmp_path / "elsewhere"
