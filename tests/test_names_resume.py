"""Names are checked before any work, and `--resume auto` with nothing to resume says so instead of quietly
starting again. Real `python -m llmctl` processes: the base model and data given do not exist, so a name
error (rather than "unknown model" or "no such file") shows the check came first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmctl.errors import UsageError
from llmctl.registry import check_name

ROOT = Path(__file__).resolve().parent.parent
BAD_NAMES = ["../../x", "x\n", "a/b", "-x", ".hidden", "", "x" * 129, "openai:x"]


def llmctl_process(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMCTL_", "OPENAI_"))}
    env.update(LLMCTL_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "llmctl", *args], env=env, capture_output=True, text=True,
                          timeout=180, cwd=tmp_path)


def one_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused(name):
    with pytest.raises(UsageError, match="invalid model name"):
        check_name(name)


def test_a_trailing_newline_is_shown_not_printed():
    with pytest.raises(UsageError) as info:
        check_name("ok\n")
    assert "\n" not in info.value.message and "'ok\\n'" in info.value.message


@pytest.mark.parametrize("name", ["../../x", "x\n"])
def test_every_command_that_names_checks_the_name_first(tmp_path, name):
    out = tmp_path / "run"
    one_error(llmctl_process(tmp_path, "finetune", "-m", "no-such-model", "--data", "missing.jsonl", "--out", str(out),
                             "--name", name), "invalid model name")
    one_error(llmctl_process(tmp_path, "pretrain", "--data", "missing.txt", "--out", str(out), "--name", name),
              "invalid model name")
    assert not out.exists()  # nothing written before the check
    one_error(llmctl_process(tmp_path, "export", "no-such-model", "--out", str(tmp_path / "m.gguf"), "--name", name),
              "invalid model name")
    one_error(llmctl_process(tmp_path, "models", "add", name, "openai:gpt-4o-mini"), "invalid model name")
    assert not (tmp_path / "home" / "registry.json").exists()


def test_resume_auto_with_nothing_to_resume_says_so(tmp_path):
    out = tmp_path / "fresh-run"
    for args in (("pretrain", "--data", "missing.txt"), ("finetune", "-m", "no-such-model", "--data", "missing.jsonl")):
        line = one_error(llmctl_process(tmp_path, *args, "--out", str(out), "--resume", "auto"),
                         "--resume auto: no checkpoint in", "drop --resume to start a new run")
        assert str(out / "checkpoints") in line
    assert not out.exists()


def test_resume_auto_after_a_checkpoint_goes_on(tmp_path):
    """The other side: with a checkpoint there, --resume auto continues from it (as before)."""
    corpus = tmp_path / "verses.txt"
    corpus.write_text("".join(f"ROMEO: line {i}, softly.\nJULIET: answer {i % 13}.\n" for i in range(300)))
    tiny = ["--tokenizer", "char", "--layers", "1", "--heads", "2", "--width", "16", "--context", "16",
            "--batch-size", "2", "--eval-batches", "1", "--eval-every", "100", "--no-register", "--json"]
    out = tmp_path / "run"
    first = llmctl_process(tmp_path, "pretrain", "--data", str(corpus), "--out", str(out), *tiny, "--max-steps", "3")
    assert first.returncode == 0, first.stderr
    again = llmctl_process(tmp_path, "pretrain", "--data", str(corpus), "--out", str(out), *tiny, "--max-steps", "5",
                           "--resume", "auto")
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stderr and json.loads(again.stdout)["steps"] == 5
