"""Real Python processes released at the same moment, for tests of first-use races between processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Prepended to every script: `released()` reports this process ready, then returns only once the test
# says go, so imports (the slow part) are behind every process before any of them starts the real work.
GATE = """
import os as _os, sys as _sys, time as _time
def released():
    gate = _sys.argv[1]
    open(_os.path.join(gate, f"ready-{_os.getpid()}"), "w").close()
    while not _os.path.exists(_os.path.join(gate, "go")):
        _time.sleep(0.001)
"""


def run_released_together(script: str, n: int, gate: Path, env: dict[str, str] | None = None,
                          timeout: float = 120.0) -> list[tuple[int, str]]:
    """Run `script` in n processes (argv: gate, worker index) and release them together at its
    `released()` call; returns each one's (exit code, stderr)."""
    gate.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    procs = [subprocess.Popen([sys.executable, "-c", GATE + script, str(gate), str(i)], env=env,
                              stderr=subprocess.PIPE) for i in range(n)]
    try:
        deadline = time.monotonic() + timeout
        while len(list(gate.glob("ready-*"))) < n:
            early = [p for p in procs if p.poll() is not None]
            if early or time.monotonic() > deadline:  # one died before the gate: do not wait forever
                break
            time.sleep(0.005)
        (gate / "go").touch()
        results = []
        for p in procs:
            _, err = p.communicate(timeout=timeout)  # communicate: a full stderr pipe cannot block the child
            results.append((p.returncode, err.decode()))
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
