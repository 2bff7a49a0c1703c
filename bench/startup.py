"""Start-up cost of `llmctl --help` against the floor: `python -c "import typer, rich"`.

Both are measured in the same run, alternately (median of several, after one warm-up run each so
that neither pays for compiling .pyc files), and printed as a ratio: absolute times on shared
machines mean little, and alternating spreads a busy moment over both. Commands that need no model must not import torch, transformers or
openai; this also reports whether they did.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

RUNS = 9
HEAVY = ("torch", "transformers", "openai")
PROBE = ("import sys\nfrom llmctl.cli.main import run\ntry:\n    run({args!r})\nexcept SystemExit:\n    pass\n"
         "sys.stderr.write(repr([m for m in {heavy!r} if m in sys.modules]))")


def seconds(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def median_seconds(*cmds: list[str]) -> list[float]:
    """The median time of each command, the commands run in turn."""
    for cmd in cmds:
        seconds(cmd)
    times = [[seconds(cmd) for cmd in cmds] for _ in range(RUNS)]
    return [statistics.median(column) for column in zip(*times)]


def heavy_imports(args: list[str]) -> list[str]:
    code = PROBE.format(args=args, heavy=HEAVY)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return eval(done.stderr.strip().splitlines()[-1])  # our own repr() of a list of names


def main() -> None:
    baseline, llmctl = median_seconds([sys.executable, "-c", "import typer, rich"], [sys.executable, "-m", "llmctl", "--help"])
    result = {
        "baseline_s": round(baseline, 4),
        "llmctl_help_s": round(llmctl, 4),
        "ratio": round(llmctl / baseline, 2),
        "heavy_imports": {" ".join(a): heavy_imports(a) for a in (["--help"], ["models", "list"], ["config", "show"], ["logs"])},
    }
    print(json.dumps(result, indent=2))
    print(f"llmctl --help takes {result['ratio']}x the time of importing typer and rich "
          f"({llmctl * 1000:.0f} ms vs {baseline * 1000:.0f} ms, median of {RUNS})", file=sys.stderr)


if __name__ == "__main__":
    main()
