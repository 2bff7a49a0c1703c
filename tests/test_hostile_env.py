"""A hostile place is a clean error, never exit 1 ("internal error"): LLMCTL_HOME that is a file or sits
under one, a config file that is a folder, a registry of the wrong shape, a disk that fills up. Real
`python -m llmctl` processes with LLMCTL_HOME set.

A read-only home cannot be made with chmod when the tests run as root (root writes anyway), so the two
stand-ins used work for every user: a home *under a regular file* (every write fails with ENOTDIR, as
on a read-only mount) and a file size limit (RLIMIT_FSIZE, set in the child), under which writes fail
with EFBIG part-way, as on a full disk.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from llmctl.errors import EXIT_MODEL, EXIT_STORAGE, EXIT_USAGE

ROOT = Path(__file__).resolve().parent.parent


def llmctl_process(home: Path, *args: str, fsize: int | None = None, cwd: Path | None = None,
                   timeout: int = 180) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMCTL_", "OPENAI_"))}
    env.update(LLMCTL_HOME=str(home), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")

    def limit() -> None:  # in the child only: a "disk" that takes `fsize` bytes per file
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run([sys.executable, "-m", "llmctl", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=cwd or next(p for p in home.parents if p.is_dir()), preexec_fn=limit if fsize else None)


def one_error(r: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """Exit `code`, one `error:` line naming each needle, no traceback, no 'internal error'."""
    assert r.returncode == code, (r.returncode, r.stderr)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("args", [("models", "list"), ("models", "add", "x", "openai:gpt-4o-mini"),
                                  ("config", "set", "model", "x"), ("logs",)])
def test_home_that_is_a_file(tmp_path, args):
    home = tmp_path / "home"
    home.write_text("not a folder")
    line = one_error(llmctl_process(home, *args), EXIT_STORAGE, str(home))
    assert f"LLMCTL_HOME is {home}" in line or "log database" in line


@pytest.mark.parametrize("args", [("models", "add", "x", "openai:gpt-4o-mini"), ("config", "set", "model", "x"),
                                  ("logs",)])
def test_home_that_cannot_be_written(tmp_path, args):
    """A home under a regular file: as unwritable as a read-only mount, for root too."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    home = blocker / "home"
    one_error(llmctl_process(home, *args), EXIT_STORAGE, "Not a directory")


def test_full_disk_while_logging_names_the_cause(tmp_path):
    home = tmp_path / "home"
    line = one_error(llmctl_process(home, "logs", fsize=2000), EXIT_STORAGE, "log database", "File too large")
    assert "move it aside" not in line  # the database is fine; the disk is not


def test_chmod_read_only_home_when_not_root(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes to a 0500 folder anyway; the ENOTDIR and RLIMIT_FSIZE tests stand in for it")
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o500)
    try:
        one_error(llmctl_process(home, "models", "add", "x", "openai:gpt-4o-mini"), EXIT_STORAGE, "Permission denied")
    finally:
        home.chmod(0o700)


def test_config_that_is_a_folder(tmp_path):
    home, folder = tmp_path / "home", tmp_path / "settings"
    folder.mkdir()
    one_error(llmctl_process(home, "--config", str(folder), "config", "show"), EXIT_USAGE, str(folder), "is a folder")
    (home / "config.toml").mkdir(parents=True)
    for args in (("config", "show"), ("config", "set", "model", "x")):
        one_error(llmctl_process(home, *args), EXIT_USAGE, str(home / "config.toml"), "is a folder")


@pytest.mark.parametrize("content, problem", [
    ([], "expected an object"),
    ({"models": []}, "'models' must be an object"),
    ({"models": {}, "aliases": ["a"]}, "'aliases' must be an object"),
    ({"models": {"a": 3}}, "model 'a' must be an object"),
    ({"models": {"a": {"name": "a"}}}, "model 'a' has no 'provider'"),
    ({"models": {"a": {"name": "a", "provider": 5, "source": "x"}}}, "'provider' must be a string"),
    ({"models": {"a": {"name": "a", "provider": "hf", "source": "x", "context_length": "8k"}}},
     "'context_length' must be a number or null"),
    ({"models": {"a": {"name": "a", "provider": "hf", "source": "x", "lineage": []}}}, "'lineage' must be an object"),
    ({"models": {}, "aliases": {"b": 1}}, "alias 'b' must name a model"),
])
def test_registry_of_the_wrong_shape(tmp_path, content, problem):
    home = tmp_path / "home"
    home.mkdir()
    (home / "registry.json").write_text(json.dumps(content))
    for args in (("models", "list"), ("models", "add", "x", "openai:gpt-4o-mini"), ("prompt", "-m", "a", "hi")):
        one_error(llmctl_process(home, *args), EXIT_MODEL, "registry.json", problem)


def test_registry_that_is_a_folder(tmp_path):
    home = tmp_path / "home"
    (home / "registry.json").mkdir(parents=True)
    one_error(llmctl_process(home, "models", "list"), EXIT_STORAGE, "registry.json", "Is a directory")


CORPUS = "".join(f"ROMEO: line {i} of the play, spoken softly.\nJULIET: answer {i * 7 % 13}.\n" for i in range(400))
TINY = ["--tokenizer", "char", "--layers", "2", "--heads", "2", "--width", "32", "--context", "32",
        "--batch-size", "4", "--eval-batches", "1", "--eval-every", "100", "--save-every", "5", "--no-register"]


def test_full_disk_during_training_keeps_the_last_good_checkpoint(tmp_path):
    home, out, corpus = tmp_path / "home", tmp_path / "run", tmp_path / "verses.txt"
    corpus.write_text(CORPUS)
    first = llmctl_process(home, "pretrain", "--data", str(corpus), "--out", str(out), *TINY, "--max-steps", "5")
    assert first.returncode == 0, first.stderr
    checkpoints = out / "checkpoints"
    assert (checkpoints / "last").read_text() == "step-0000005\n"
    weights = (checkpoints / "step-0000005" / "model.safetensors").read_bytes()
    # The weights file is larger than the limit, the log rows are not: the disk "fills up" at the step-10 save.
    assert len(weights) > 60_000
    full = llmctl_process(home, "pretrain", "--data", str(corpus), "--out", str(out), *TINY, "--max-steps", "10",
                          "--resume", "auto", fsize=60_000)
    line = one_error(full, EXIT_STORAGE, "step-0000010", "File too large", "last good checkpoint")
    assert str(checkpoints) in line
    assert (checkpoints / "last").read_text() == "step-0000005\n"
    assert (checkpoints / "step-0000005" / "model.safetensors").read_bytes() == weights
    left = {p.name for p in checkpoints.iterdir()} - {"last", "best"}
    assert left == {"step-0000005"}  # no .step-0000010.tmp, no partial step-0000010
    resumed = llmctl_process(home, "pretrain", "--data", str(corpus), "--out", str(out), *TINY, "--max-steps", "10",
                             "--resume", "auto", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert (checkpoints / "last").read_text() == "step-0000010\n"
