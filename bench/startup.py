"""Start-up cost of `llmctl --help` against the floor: `python -c "import typer, rich"`.

Both are measured in the same run (median of several), and printed as a ratio: absolute times on
shared machines mean little. Commands that need no model must not import torch, transformers or
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


def median_seconds(cmd: list[str]) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def heavy_imports(args: list[str]) -> list[str]:
    code = PROBE.format(args=args, heavy=HEAVY)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return eval(done.stderr.strip().splitlines()[-1])  # our own repr() of a list of names


def main() -> None:
    baseline = median_seconds([sys.executable, "-c", "import typer, rich"])
    llmctl = median_seconds([sys.executable, "-m", "llmctl", "--help"])
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
