"""examples/ci.sh, the README's CI workflow run locally, on a tiny model in a subprocess: gates that pass
leave JUnit reports and exit 0; a bar the model cannot clear fails the script with the gate's exit code."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from llmctl.errors import EXIT_GATE

ROOT = Path(__file__).resolve().parent.parent


def run_ci(tmp_path, model, **settings) -> subprocess.CompletedProcess:
    env = {**os.environ, "LLMCTL_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "MODEL": str(model),
           "TRAIN": str(ROOT / "examples" / "pirate.jsonl"), "QUESTIONS": str(ROOT / "examples" / "ci-questions.jsonl"),
           "MAX_STEPS": "1", "OUT": str(tmp_path / "runs"), "REPORTS": str(tmp_path / "reports"),
           "LLMCTL": f"{sys.executable} -m llmctl", "PYTHON": sys.executable, **settings}
    env.pop("GITHUB_STEP_SUMMARY", None)
    tmp_path.mkdir(exist_ok=True)
    return subprocess.run(["bash", str(ROOT / "examples" / "ci.sh")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)


def test_ci_example_passes_and_fails_on_a_tiny_model(tmp_path, tiny_chat_model):
    done = run_ci(tmp_path, tiny_chat_model, FAIL_UNDER="exact_match=0", MAX_DROP="exact_match=0")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all gates passed" in done.stdout
    exact = ET.parse(tmp_path / "reports" / "eval-exact.xml").getroot().find("testsuite")
    assert exact.get("tests") == "10"  # 8 questions + 2 gates
    gates = [c for c in exact.findall("testcase") if c.get("classname") == "gates"]
    assert [c.get("name") for c in gates] == ["--fail-under exact_match=0", "--max-drop exact_match=0"]
    assert all(c.find("failure") is None for c in gates)
    lineage = ET.parse(tmp_path / "reports" / "eval-lineage.xml").getroot().find("testsuite")
    assert lineage.get("tests") == "2" and lineage.get("failures") == "0"

    failed = run_ci(tmp_path / "again", tiny_chat_model, FAIL_UNDER="exact_match=1.01", MAX_DROP="exact_match=0")
    assert failed.returncode == EXIT_GATE, failed.stdout + failed.stderr
    assert "must be at least 1.01" in failed.stderr and "all gates passed" not in failed.stdout
