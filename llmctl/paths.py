"""Where llmctl keeps its files: one function per kind of file.

LLMCTL_HOME set: everything in that one folder. Otherwise the platform's folders (platformdirs): settings
in the user config dir, re-creatable files in the user cache dir, the registry, the log and eval runs in
the user data dir. Versions before that split kept everything in the data dir; such a config file or
cache found there stays in use, so an upgrade loses no setting and converts no weights a second time.
"""

from __future__ import annotations

import os
from pathlib import Path

APP = "llmctl"
CONFIG_FILE = "config.toml"
CACHE_SUBDIR = "cache"


def llmctl_home() -> Path:
    """The registry, the log and eval runs: LLMCTL_HOME, else the user data dir (e.g. ~/.local/share/llmctl)."""
    env = os.environ.get("LLMCTL_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs  # here, not at the top: start-up with LLMCTL_HOME set does not pay for it

    return Path(platformdirs.user_data_dir(APP, appauthor=False))


def _home_is_set() -> bool:
    return bool(os.environ.get("LLMCTL_HOME"))


def user_config_path() -> Path:
    """The user's config.toml: in LLMCTL_HOME, else the user config dir (e.g. ~/.config/llmctl)."""
    in_home = llmctl_home() / CONFIG_FILE
    if _home_is_set() or in_home.is_file():  # the second: a file written by an earlier version
        return in_home
    import platformdirs

    return Path(platformdirs.user_config_dir(APP, appauthor=False)) / CONFIG_FILE


def registry_path() -> Path:
    return llmctl_home() / "registry.json"


def logs_db_path() -> Path:
    return llmctl_home() / "logs.db"


def eval_runs_dir() -> Path:
    """Saved eval runs, a folder each."""
    return llmctl_home() / "evals"


def cache_dir() -> Path:
    """Converted model weights and other re-creatable files: LLMCTL_CACHE_DIR, else LLMCTL_HOME/cache,
    else the user cache dir (e.g. ~/.cache/llmctl)."""
    env = os.environ.get("LLMCTL_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    in_home = llmctl_home() / CACHE_SUBDIR
    if _home_is_set() or in_home.is_dir():  # the second: a cache (converted weights) from an earlier version
        return in_home
    import platformdirs

    return Path(platformdirs.user_cache_dir(APP, appauthor=False))
