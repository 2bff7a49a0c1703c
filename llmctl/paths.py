"""Where llmctl keeps its files: LLMCTL_HOME and what lives under it."""

from __future__ import annotations

import os
from pathlib import Path


def llmctl_home() -> Path:
    """LLMCTL_HOME, else the platform's user data dir (e.g. ~/.local/share/llmctl)."""
    env = os.environ.get("LLMCTL_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("llmctl", appauthor=False))


def user_config_path() -> Path:
    return llmctl_home() / "config.toml"


def registry_path() -> Path:
    return llmctl_home() / "registry.json"


def logs_db_path() -> Path:
    return llmctl_home() / "logs.db"


def cache_dir() -> Path:
    """Converted model weights and other re-creatable files (LLMCTL_CACHE_DIR overrides)."""
    env = os.environ.get("LLMCTL_CACHE_DIR")
    return Path(env).expanduser() if env else llmctl_home() / "cache"
