"""Two "machines" on this one: two torchrun agents, one process each, meeting through a c10d
rendezvous on 127.0.0.1 exactly as two hosts would (--nnodes 2 --rdzv-backend c10d). The losses
equal one process with the same global batch, with DDP and with FSDP."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from tests.test_fsdp import LIMIT, PRETRAIN, TORCHRUN, corpus, env, losses, model_weights, one_process, same_weights  # noqa: F401


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(args: list[str], tmp_path, run_id: str) -> list[subprocess.CompletedProcess]:
    launch = [TORCHRUN, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
              "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "--rdzv-id", run_id, "--max-restarts", "0",
              "-m", "llmctl", *args]
    nodes = [subprocess.Popen(launch, env=env(tmp_path), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = []
    for node in nodes:
        try:
            out, err = node.communicate(timeout=LIMIT)
        except subprocess.TimeoutExpired:
            for n in nodes:
                n.kill()
            raise
        results.append(subprocess.CompletedProcess(launch, node.returncode, out, err))
    return results


@pytest.mark.parametrize("sharding", [[], ["--fsdp"]], ids=["ddp", "fsdp"])
def test_two_nodes_match_one_process(corpus, tmp_path, sharding):
    common = [*PRETRAIN, "--data", str(corpus), "--max-steps", "4", "--save-every", "2"]
    single = one_process([*common, "--batch-size", "8", "--out", str(tmp_path / "one")], tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    nodes = two_nodes([*common, "--batch-size", "4", *sharding, "--out", str(tmp_path / "two")], tmp_path,
                      f"llmctl-test-{tmp_path.name}")
    for node in nodes:
        assert node.returncode == 0, node.stderr[-3000:]
    summaries = [json.loads(node.stdout) for node in nodes if node.stdout.strip()]
    assert len(summaries) == 1 and summaries[0]["processes"] == 2  # only the global rank 0 reports
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=2e-4)
    same_weights(model_weights(tmp_path / "two"), model_weights(tmp_path / "one"))
