"""Run the real CLI entry point in-process: the same error handling and exit codes as the script."""

from __future__ import annotations

import io
import json
import sys
from dataclasses import dataclass

import pytest

from llmctl.cli.main import run


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


def llmctl(capsys, monkeypatch, *args: str, stdin: str = "") -> Result:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(list(args))
    captured = capsys.readouterr()
    return Result(exit_info.value.code, captured.out, captured.err)


def write_jsonl(path, rows):
    """Rows as a JSONL file; returns the path."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def assert_resume_is_exact(cli, monkeypatch, tmp_path, task_class, args: list[str]) -> None:
    """A fine-tuning run interrupted by Ctrl-C at step 4 and resumed ends with the same adapter weights,
    to the bit, as one that ran straight through. `args`: the `llmctl finetune` flags, without --out."""
    import torch
    from safetensors.torch import load_file

    assert cli("finetune", *args, "--out", str(tmp_path / "full")).code == 0
    real = task_class.train_batch

    def interrupted(self, step, micro, rank, world):
        if step == 4:
            raise KeyboardInterrupt
        return real(self, step, micro, rank, world)

    monkeypatch.setattr(task_class, "train_batch", interrupted)
    assert cli("finetune", *args, "--out", str(tmp_path / "broken")).code == 130
    monkeypatch.setattr(task_class, "train_batch", real)
    resumed = cli("finetune", *args, "--out", str(tmp_path / "broken"), "--resume", "auto", "--json")
    assert resumed.code == 0 and "resuming from" in resumed.err and "step 4" in resumed.err
    a = load_file(tmp_path / "full" / "adapter_model.safetensors")
    b = load_file(tmp_path / "broken" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
