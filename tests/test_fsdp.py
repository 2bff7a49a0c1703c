"""Fully sharded training (FSDP2) on real processes: torchrun, two CPU processes over gloo. The same
losses as one process with the same global batch, the same final model (gathered whole, loadable by
plain transformers / peft), sharded checkpoints that survive a SIGKILL and resume to the same end,
and one clear line for a model it cannot shard."""

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

from llmctl.training.config import TrainConfig
from tests.tiny_models import build_chat_model

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
LIMIT = 240  # seconds for one multi-process run, even on two busy cores

PRETRAIN = ["pretrain", "--preset", "tiny", "--tokenizer", "char", "--layers", "2", "--heads", "2", "--width", "32",
            "--context", "32", "--eval-batches", "2", "--log-every", "1", "--warmup-steps", "5", "--eval-every", "100",
            "--no-register", "--json"]
# Muon orthogonalises whole matrices, so sharded training is AdamW's (where the option exists)
PRETRAIN += ["--optimizer", "adamw"] if hasattr(TrainConfig(), "optimizer") else []
EXAMPLES = [{"instruction": f"Name item {i}.", "input": "", "output": f"Ahoy! Item {i} be treasure."} for i in range(40)]


def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "LLMCTL_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1"}


def one_process(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmctl", *args], env=env(tmp_path), capture_output=True, text=True,
                          timeout=LIMIT, cwd=tmp_path)


def two_processes(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "llmctl", *args],
                          env=env(tmp_path), capture_output=True, text=True, timeout=LIMIT, cwd=tmp_path)


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-5) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=1e-4, msg=name)


def model_weights(path: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).state_dict()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "verses.txt"
    path.write_text("".join(f"ROMEO: line {i} of the play, spoken softly.\nJULIET: answer {i * 7 % 13}.\n"
                            for i in range(1500)))
    return path


def test_pretraining_sharded_on_two_processes_equals_one(corpus, tmp_path):
    common = [*PRETRAIN, "--data", str(corpus), "--max-steps", "5", "--save-every", "3"]
    single = one_process([*common, "--batch-size", "8", "--out", str(tmp_path / "one")], tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    double = two_processes([*common, "--batch-size", "4", "--fsdp", "--out", str(tmp_path / "two")], tmp_path)
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = json.loads(single.stdout), json.loads(double.stdout)
    assert two["processes"] == 2 and two["tokens"] == one["tokens"]
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=2e-4)
    assert two["final_val_loss"] == pytest.approx(one["final_val_loss"], abs=2e-4)
    # the checkpoint is sharded (each rank wrote its part), the saved model is whole
    last = tmp_path / "two" / "checkpoints" / (tmp_path / "two" / "checkpoints" / "last").read_text().strip()
    assert (last / "sharded" / ".metadata").is_file() and not (last / "model.safetensors").exists()
    same_weights(model_weights(tmp_path / "two"), model_weights(tmp_path / "one"))


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> Path:
    return build_chat_model(tmp_path_factory.mktemp("chat"))


def test_lora_sharded_on_two_processes_equals_one(chat_model, tmp_path):
    data = tmp_path / "examples.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    # dropout 0: LoRA dropout draws differ with the split of the batch; examples differ in length,
    # so this also checks that each token weighs the same however the step is split
    common = ["finetune", "--data", "examples.jsonl", "-m", str(chat_model), "--rank", "4", "--lr", "1e-2",
              "--dropout", "0", "--max-steps", "4", "--save-every", "2", "--eval-every", "100", "--no-register",
              "--json"]
    single = one_process([*common, "--batch-size", "4", "--out", "one"], tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    double = two_processes([*common, "--batch-size", "2", "--fsdp", "--out", "two"], tmp_path)
    assert double.returncode == 0, double.stderr[-3000:]
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=2e-4)
    assert json.loads(double.stdout)["val_loss_after"] == pytest.approx(json.loads(single.stdout)["val_loss_after"],
                                                                       abs=2e-4)
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    same_weights(load_file(tmp_path / "two" / "adapter_model.safetensors"),
                 load_file(tmp_path / "one" / "adapter_model.safetensors"))
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(chat_model), tmp_path / "two")
    assert any("lora_A" in name for name, _ in merged.named_parameters())


def _kill_after_checkpoint(args: list[str], tmp_path: Path, checkpoints: Path, step: int) -> None:
    """Start a two-process run and SIGKILL the whole group once a checkpoint at `step` or later is named."""
    proc = subprocess.Popen([TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "llmctl", *args],
                            env=env(tmp_path), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + LIMIT
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            last = checkpoints / "last"
            if last.is_file() and int(last.read_text().strip().split("-")[1]) >= step:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()


def test_sharded_run_killed_mid_run_resumes_to_the_same_end(corpus, tmp_path):
    common = [*PRETRAIN, "--data", str(corpus), "--max-steps", "40", "--save-every", "2", "--batch-size", "4",
              "--fsdp"]
    full = two_processes([*common, "--out", str(tmp_path / "full")], tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]
    broken = tmp_path / "broken"
    _kill_after_checkpoint([*common, "--out", str(broken)], tmp_path, broken / "checkpoints", 4)
    killed_at = int((broken / "checkpoints" / "last").read_text().strip().split("-")[1])
    assert killed_at < 40 and not (broken / "config.json").exists()  # really mid-run
    resumed = two_processes([*common, "--out", str(broken), "--resume", "auto"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout)["steps"] == 40
    assert losses(broken)[-1] == pytest.approx(losses(tmp_path / "full")[-1], abs=1e-6)
    same_weights(model_weights(broken), model_weights(tmp_path / "full"), atol=1e-6)


def test_a_layer_class_the_model_lacks_is_one_line_and_writes_nothing(corpus, tmp_path):
    out = tmp_path / "bad"
    r = two_processes([*PRETRAIN, "--data", str(corpus), "--max-steps", "2", "--batch-size", "4", "--fsdp",
                       "--fsdp-layers", "NoSuchBlock", "--out", str(out)], tmp_path)
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors and all("this model has no layer class 'NoSuchBlock' to shard" in line for line in errors)
    assert not (out / "checkpoints").exists() and not (out / "config.json").exists()


def test_fsdp_on_one_process_says_how_to_launch(corpus, tmp_path):
    r = one_process([*PRETRAIN, "--data", str(corpus), "--max-steps", "2", "--fsdp", "--out", str(tmp_path / "x")],
                    tmp_path)
    assert r.returncode == 2
    assert "--fsdp shards the model over several processes, and this is one" in r.stderr
    assert not (tmp_path / "x" / "checkpoints").exists()


# -- bad input: one line, exit 2, nothing written ---------------------------------------------------
def _finetune_args(model, tmp_path, *extra):
    data = tmp_path / "examples.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES[:10]))
    return ("finetune", "--data", str(data), "-m", str(model), "--max-steps", "1", "--out", str(tmp_path / "run"),
            *extra)


@pytest.mark.parametrize("extra, setup, message", [
    (["--batch-size", "4", "--grad-accum", "4"], None, "one step takes 16 examples"),
    (["--fsdp-layers", "X"], lambda mp: mp.setenv("ACCELERATE_USE_DEEPSPEED", "true"),
     "DeepSpeed (from the accelerate config) is not supported"),
])
def test_bad_training_input_is_one_line_and_writes_nothing(cli, tiny_chat_model, tmp_path, monkeypatch, extra, setup,
                                                           message):
    if setup:
        setup(monkeypatch)
    r = cli(*_finetune_args(tiny_chat_model, tmp_path, *extra))
    assert r.code == 2, r.err
    errors = [line for line in r.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "adapter_model.safetensors").exists()


def test_compile_without_a_compiler_is_one_line(cli, corpus, tmp_path, monkeypatch):
    import shutil

    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name in ("g++", "c++", "clang++") else real(name, *a, **k))
    out = tmp_path / "c"
    r = cli(*PRETRAIN, "--data", str(corpus), "--max-steps", "1", "--compile", "--out", str(out))
    assert r.code == 2, r.err
    assert "--compile needs a C++ compiler on CPUs" in r.err
    assert not (out / "checkpoints").exists()


def test_an_accelerate_fsdp_config_turns_sharding_on_by_itself(chat_model, tmp_path):
    (tmp_path / "fsdp.yaml").write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: FSDP\nfsdp_config:\n  fsdp_version: 2\n"
        "  fsdp_transformer_layer_cls_to_wrap: LlamaDecoderLayer\nmixed_precision: 'no'\nnum_machines: 1\n"
        "num_processes: 2\nuse_cpu: true\nmachine_rank: 0\nrdzv_backend: static\nsame_network: true\n")
    data = tmp_path / "examples.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    common = ["finetune", "--data", "examples.jsonl", "-m", str(chat_model), "--rank", "4", "--lr", "1e-2",
              "--dropout", "0", "--max-steps", "2", "--save-every", "2", "--eval-every", "100", "--no-register"]
    single = one_process([*common, "--batch-size", "4", "--out", "one"], tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    launched = subprocess.run([accelerate, "launch", "--config_file", "fsdp.yaml", "-m", "llmctl", *common,
                               "--batch-size", "2", "--out", "two"], env=env(tmp_path), capture_output=True, text=True,
                              timeout=LIMIT, cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert (tmp_path / "two" / "checkpoints" / "step-0000002" / "sharded").is_dir()  # no --fsdp given
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=2e-4)
