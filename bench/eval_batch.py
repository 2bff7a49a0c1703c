"""`eval exact` with batched local decoding against one question at a time, in the same run: the same model
loaded once per mode, the same 32 questions, greedy; prints both times, the speed-up and whether every
answer is the same.

    python bench/eval_batch.py [--model smollm2] [--questions 32] [--batch-size 8] [--max-tokens 24]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from llmctl.config import Config
from llmctl.evaluate.exact import exact_match

SUBJECTS = ["France", "Japan", "Italy", "Spain", "Germany", "Canada", "Egypt", "Brazil", "Kenya", "India",
            "Peru", "Norway", "Chile", "Greece", "Poland", "Mexico"]
CAPITALS = ["Paris", "Tokyo", "Rome", "Madrid", "Berlin", "Ottawa", "Cairo", "Brasília", "Nairobi", "New Delhi",
            "Lima", "Oslo", "Santiago", "Athens", "Warsaw", "Mexico City"]


def questions(n: int) -> list[dict]:
    """Capitals, then sums: short, checkable questions of mixed lengths."""
    rows = [{"question": f"What is the capital of {s}? Answer with the city only.", "answer": c}
            for s, c in zip(SUBJECTS, CAPITALS)]
    rows += [{"question": f"What is {a} + {a + 7}? Answer with the number only.", "answer": str(2 * a + 7)}
             for a in range(1, n)]
    return rows[:n]


def timed(model: str, data: Path, batch_size: int, max_tokens: int, home: Path) -> tuple[float, dict]:
    start = time.perf_counter()
    run = exact_match(model, data, max_tokens, None, Config(), batch_size=batch_size,
                      save_dir=home / f"batch-{batch_size}")
    return time.perf_counter() - start, run.summary["metrics"] | {"answers": [r["response"] for r in run.rows]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=24)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        data = home / "qa.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in questions(args.questions)))
        print(f"eval exact, {args.model}, {args.questions} questions, --max-tokens {args.max_tokens}, greedy",
              flush=True)
        timed(args.model, data, args.batch_size, 2, home / "warm")  # load once: conversion caches, page cache
        one_s, one = timed(args.model, data, 1, args.max_tokens, home)
        print(f"one at a time (--batch-size 1): {one_s:7.2f} s  exact_match {one['exact_match']:.3f}", flush=True)
        batch_s, batched = timed(args.model, data, args.batch_size, args.max_tokens, home)
        print(f"batched (--batch-size {args.batch_size}):{'':<{max(0, 8 - len(str(args.batch_size)))}}"
              f"{batch_s:7.2f} s  exact_match {batched['exact_match']:.3f}")
    same = sum(a == b for a, b in zip(one["answers"], batched["answers"]))
    print(f"speed-up {one_s / batch_s:.2f}x; identical answers: {same}/{len(one['answers'])}")


if __name__ == "__main__":
    main()
