"""Pretraining end to end on tiny models: outputs, registration, exact resume after SIGKILL,
divergence, several processes (torchrun, gloo) and every input error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llmctl.errors import TrainingError

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--tokenizer", "char", "--layers", "2", "--heads", "2", "--width", "32", "--context", "32",
        "--batch-size", "4", "--eval-batches", "2", "--log-every", "1", "--warmup-steps", "5"]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "verses.txt"
    lines = [f"ROMEO: line {i} of the play, spoken softly.\nJULIET: answer {i * 7 % 13}.\n" for i in range(1500)]
    path.write_text("".join(lines))
    return path



def assert_one_error_line(err: str, message: str) -> None:
    """Progress notes may come first; the failure itself is one line, last, with no traceback."""
    errors = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and err.strip().endswith(errors[0]), err
    assert "Traceback" not in err


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


def test_pretrain_outputs_a_registered_hf_model(cli, corpus_file, tmp_path):
    out = tmp_path / "shakes-gpt"
    r = cli("pretrain", "--data", str(corpus_file), "--out", str(out), *TINY, "--max-steps", "30",
            "--eval-every", "10", "--save-every", "10", "--json")
    assert r.code == 0, r.err
    summary = r.json()
    assert summary["steps"] == 30 and summary["tokens"] == 30 * 4 * 32
    assert summary["name"] == "shakes-gpt" and summary["final_val_loss"] < 4.0
    assert summary["val_bpc"] == pytest.approx(summary["final_val_loss"] / 0.6931 / (summary["val_bpc"] and 1) /
                                               (summary["final_val_loss"] / 0.6931 / summary["val_bpc"]), rel=1e-3)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "LlamaForCausalLM" and tokenizer.decode(tokenizer("ROMEO")["input_ids"]) == "ROMEO"
    assert not list(out.glob("*.bin")) and (out / "loss.png").stat().st_size > 1000
    record = json.loads((out / "llmctl-train.json").read_text())
    assert record["config"]["model"]["width"] == 32 and record["summary"]["steps"] == 30
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 31))
    assert [r["step"] for r in rows if "val_loss" in r] == [10, 20, 30]
    assert list((out / "tensorboard").iterdir())
    first, last = rows[0]["loss"], [r["loss"] for r in rows if "loss" in r][-1]
    assert last < first  # it learned something
    shown = cli("models", "show", "shakes-gpt", "--json").json()
    assert shown["chat_template"] == "none" and shown["info"]["training"]["steps"] == 30
    assert shown["info"]["parameters"] > 0 and shown["info"]["tokenizer"]["kind"] == "char"
    prompt = cli("prompt", "-m", "shakes-gpt", "--max-tokens", "20", "--seed", "0", "--json", "--show-prompt", "ROMEO:")
    doc = prompt.json()
    assert doc["rendered_prompt"] == {"text": "ROMEO:", "tokens": 6, "mode": "completion"}
    assert doc["usage"]["completion_tokens"] > 0


def test_rerun_reuses_shards_and_prepare_only(cli, corpus_file, tmp_path):
    out = tmp_path / "run"
    first = cli("pretrain", "--data", str(corpus_file), "--out", str(out), *TINY, "--prepare-only", "--json").json()
    assert first["prepared"] and not first["reused"] and not (out / "checkpoints").exists()
    again = cli("pretrain", "--data", str(corpus_file), "--out", str(out), *TINY, "--prepare-only", "--json").json()
    assert again["reused"] and again["train_tokens"] == first["train_tokens"]


RUN = [sys.executable, "-m", "llmctl", "pretrain", *TINY, "--max-steps", "150", "--save-every", "5",
       "--eval-every", "50", "--no-register", "--dropout", "0.1"]


def _env(tmp_path):
    return {**os.environ, "PYTHONPATH": str(ROOT), "LLMCTL_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}


def test_killed_run_resumes_to_the_same_weights(corpus_file, tmp_path):
    """SIGKILL mid-run, --resume auto: the final weights equal an uninterrupted run's, bit for bit."""
    env = _env(tmp_path)
    full, broken = tmp_path / "full", tmp_path / "broken"
    subprocess.run([*RUN, "--data", str(corpus_file), "--out", str(full)], env=env, check=True, capture_output=True)
    proc = subprocess.Popen([*RUN, "--data", str(corpus_file), "--out", str(broken)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = broken / "checkpoints" / "last"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if pointer.is_file() and int(pointer.read_text().strip().split("-")[1]) >= 20:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = int(pointer.read_text().strip().split("-")[1])
    assert killed_at < 150
    done = subprocess.run([*RUN, "--data", str(corpus_file), "--out", str(broken), "--resume", "auto", "--json"],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stderr and json.loads(done.stdout)["steps"] == 150
    a, b = weights(full), weights(broken)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = lambda p: [json.loads(l)["loss"] for l in (p / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    assert losses(full) == losses(broken)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(corpus_file, tmp_path, monkeypatch):
    from llmctl.pretrain.config import PretrainConfig
    from llmctl.pretrain.model import preset
    from llmctl.pretrain.run import pretrain
    from llmctl.training import task
    from llmctl.training.checkpoint import find_checkpoint
    from llmctl.training.config import TrainConfig

    real, calls = task.lm_loss, {"n": 0}

    def poisoned(model, batch):
        calls["n"] += 1
        loss = real(model, batch)
        return loss * float("nan") if calls["n"] > 8 else loss

    monkeypatch.setattr(task, "lm_loss", poisoned)
    out = tmp_path / "nan-run"
    config = PretrainConfig(data=[str(corpus_file)], out=out, tokenizer="char", register=False,
                            model=preset("tiny", layers=1, width=32, heads=2, context=16),
                            train=TrainConfig(max_steps=50, batch_size=2, save_every=3, eval_every=100))
    with pytest.raises(TrainingError, match="the loss became nan at step"):
        pretrain(config)
    last = find_checkpoint(out / "checkpoints")
    assert last is not None and json.loads((last / "state.json").read_text())["step"] <= 8
    assert all(torch.isfinite(t).all() for t in weights(last).values())


def test_two_processes_match_one_with_the_same_global_batch(corpus_file, tmp_path):
    env = _env(tmp_path)
    common = ["--data", str(corpus_file), *TINY[:-8], "--eval-batches", "2", "--log-every", "1", "--warmup-steps", "5",
              "--max-steps", "6", "--eval-every", "100", "--save-every", "100", "--no-register", "--json"]
    single = subprocess.run([sys.executable, "-m", "llmctl", "pretrain", *common, "--batch-size", "8",
                             "--out", str(tmp_path / "one")], env=env, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    torchrun = Path(sys.executable).with_name("torchrun")
    double = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "llmctl", "pretrain",
                             *common, "--batch-size", "4", "--out", str(tmp_path / "two")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = json.loads(single.stdout), json.loads(double.stdout)
    assert two["processes"] == 2 and one["tokens"] == two["tokens"]
    losses = lambda p: [json.loads(l)["loss"] for l in (p / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=2e-4)
    assert two["final_val_loss"] == pytest.approx(one["final_val_loss"], abs=2e-4)


@pytest.mark.parametrize("extra, architecture", [(["--experts", "4", "--experts-per-token", "2"], "MixtralForCausalLM"),
                                                 (["--no-rope", "--untied"], "GPT2LMHeadModel")])
def test_other_architectures(cli, corpus_file, tmp_path, extra, architecture):
    out = tmp_path / "arch"
    r = cli("pretrain", "--data", str(corpus_file), "--out", str(out), *TINY, *extra, "--max-steps", "3",
            "--eval-every", "3", "--no-register", "--json")
    assert r.code == 0, r.err
    from transformers import AutoModelForCausalLM

    assert type(AutoModelForCausalLM.from_pretrained(out)).__name__ == architecture


@pytest.mark.parametrize("make, args, message", [
    (lambda d: None, [], "the corpus is empty"),
    (lambda d: (d / "a.bin").write_bytes(b"\x00\xff" * 50), [], "all 1 input files were unreadable"),
    (lambda d: (d / "a.txt").write_text("tiny corpus " * 20), ["--tokenizer", "bpe", "--vocab-size", "5000"],
     "larger than this corpus supports"),
    (lambda d: (d / "a.txt").write_text("short text\n" * 5), ["--tokenizer", "char", "--context", "512"],
     "too small to split"),
    (lambda d: (d / "a.txt").write_text("x" * 30000), ["--preset", "huge"], "unknown preset 'huge'"),
    (lambda d: (d / "a.txt").write_text("x" * 30000), ["--max-time", "soon"], "is not a duration"),
    (lambda d: (d / "a.txt").write_text("x" * 30000), ["--width", "30", "--heads", "4"], "not divisible"),
    (lambda d: (d / "a.txt").write_text("x" * 30000), ["--lr", "-1"], "need 0 < --lr"),
])
def test_input_errors_are_one_line_and_leave_nothing(cli, tmp_path, make, args, message):
    data = tmp_path / "data"
    data.mkdir()
    make(data)
    out = tmp_path / "out"
    r = cli("pretrain", "--data", str(data), "--out", str(out), "--max-steps", "2", *args)
    assert r.code == 2, r.err
    assert_one_error_line(r.err, message)
    assert not list(out.rglob("*.bin")) and not list(out.rglob("manifest.json"))


def test_context_longer_than_the_data(cli, tmp_path):
    data = tmp_path / "a.txt"
    data.write_text("".join(f"row {i}\n" for i in range(800)))
    r = cli("pretrain", "--data", str(data), "--out", str(tmp_path / "o"), "--tokenizer", "char", "--context", "3000",
            "--max-steps", "2")
    assert r.code == 2
    assert_one_error_line(r.err, "is longer than the validation data")


def test_borrowed_tokenizer_and_token_budget(cli, corpus_file, tmp_path, tiny_chat_model):
    out = tmp_path / "borrowed"
    r = cli("pretrain", "--data", str(corpus_file), "--out", str(out), *TINY[2:], "--tokenizer", str(tiny_chat_model),
            "--max-tokens", "1000", "--eval-every", "100", "--no-register", "--json")
    assert r.code == 0, r.err
    summary = r.json()
    assert summary["steps"] == 8 and summary["tokens"] == 8 * 4 * 32  # the first step past 1000 tokens
    from transformers import AutoTokenizer

    assert len(AutoTokenizer.from_pretrained(out)) == len(AutoTokenizer.from_pretrained(tiny_chat_model))


def test_no_disk_space_for_shards_leaves_nothing(corpus_file, tmp_path, monkeypatch):
    import errno

    from llmctl.errors import UsageError
    from llmctl.pretrain.data import CorpusSpec
    from llmctl.pretrain.prepare import prepare_data

    class FullDisk:
        def __init__(self, path, mode):
            self.file = open(path, mode)

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.file, name)

    monkeypatch.setattr("llmctl.pretrain.shards.open", FullDisk, raising=False)
    data = tmp_path / "data"
    with pytest.raises(UsageError, match="no disk space left for token shards"):
        prepare_data(CorpusSpec([str(corpus_file)]), "char", 0, data, 1, 0.1)
    assert not list(data.glob("*.bin")) and not list(data.glob(".*.tmp")) and not (data / "manifest.json").exists()


def test_the_cli_passes_only_what_was_given(cli, corpus_file, monkeypatch):
    """Python callers of PretrainConfig get exactly the command's defaults, and --help shows them."""
    from llmctl.pretrain import run
    from llmctl.pretrain.config import PretrainConfig

    seen = []
    monkeypatch.setattr(run, "pretrain", lambda config, **kwargs: seen.append(config) or {"prepared": True})
    assert cli("pretrain", "--data", str(corpus_file), "--json").code == 0
    assert seen[0].to_dict() == PretrainConfig(data=[str(corpus_file)]).to_dict()
    assert cli("pretrain", "--data", str(corpus_file), "--preset", "small", "--width", "96", "--json").code == 0
    assert seen[1].preset == "small" and seen[1].model.width == 96 and seen[1].model.layers == 6
    shown = cli("pretrain", "--help").out
    assert "[default: chosen from the budget]" in shown and "[default: runs/gpt]" in shown
    assert "--optimizer" in shown and "--qk-norm" in shown and "--tokenizer-sample" in shown
