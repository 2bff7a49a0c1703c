"""Pretraining speed and quality, each against a baseline measured in the same run.

1. Speed: tokens/s of llmctl's training loop (accelerate, schedules, checkpoints off the hot path)
   against a minimal plain-PyTorch loop on the identical model, data and batch. Goal >= 1.0 on CPU.
2. Quality per CPU-second: `llmctl pretrain --max-time 90s` on tinyshakespeare, validation bits per
   character, against nanoGPT's char-level "baby GPT" CPU recipe (2.72 bits/char in 90 s on this
   kind of 2-core machine, ../shared/data/README.md).

    python bench/pretrain.py                 # both
    python bench/pretrain.py --speed-only    # 1 only (about a minute)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
NANOGPT_BPC = 2.72  # nats 1.886 / ln 2, measured on this machine class (shared/data/README.md)
STEPS = 60


def plain_loop(model, task, steps: int, lr: float) -> float:
    """The floor: forward, loss, backward, clip, AdamW step. Nothing else."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        batch = task.train_batch(step, 0, 0, 1)
        logits = model(input_ids=batch["input_ids"]).logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), batch["labels"].view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def speed(corpus: Path) -> dict:
    from llmctl.pretrain.data import CorpusSpec
    from llmctl.pretrain.model import build_model, preset
    from llmctl.pretrain.prepare import prepare_data
    from llmctl.pretrain.run import PretrainTask
    from llmctl.training.config import TrainConfig
    from llmctl.training.loop import Trainer

    work = Path(tempfile.mkdtemp(prefix="llmctl-bench-"))
    tokenizer, manifest, _ = prepare_data(CorpusSpec([str(corpus)]), "char", 0, work / "data", 1337, 0.1)
    gpt = preset("tiny", context=128)
    train = TrainConfig(max_steps=STEPS, batch_size=16, eval_every=10**9, save_every=10**9, log_every=10, warmup_steps=5)
    task = PretrainTask(work / "data", manifest, tokenizer, gpt.context, train)
    tokens = STEPS * train.batch_size * gpt.context
    results = {"plain_s": [], "llmctl_s": []}
    for _ in range(3):  # alternate, so drift on a noisy machine hits both
        results["plain_s"].append(plain_loop(build_model(gpt, manifest.vocab_size, manifest.eot_id, 0), task, STEPS, 1e-3))
        trainer = Trainer(build_model(gpt, manifest.vocab_size, manifest.eot_id, 0), task, train, work / "run",
                          tokens_per_step=train.batch_size * gpt.context)
        trainer.setup()
        trainer.train()
        results["llmctl_s"].append(trainer.history["seconds"])  # the training steps, as for the plain loop
        trainer.cleanup("bench")
    plain, ours = min(results["plain_s"]), min(results["llmctl_s"])
    return {"tokens": tokens, "plain_tokens_per_s": round(tokens / plain), "llmctl_tokens_per_s": round(tokens / ours),
            "ratio": round(plain / ours, 3)}


def quality(corpus: Path, extra: list[str]) -> dict:
    out = Path(tempfile.mkdtemp(prefix="llmctl-shakespeare-"))
    cmd = [sys.executable, "-m", "llmctl", "pretrain", "--data", str(corpus), "--out", str(out), "--max-time", "90s",
           "--no-register", "--json", *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(done.stderr)
    summary = json.loads(done.stdout)
    return {"command": " ".join(cmd[2:]), "val_bpc": summary["val_bpc"], "nanogpt_bpc": NANOGPT_BPC,
            "ratio_vs_nanogpt": round(NANOGPT_BPC / summary["val_bpc"], 3), "steps": summary["steps"],
            "tokens_per_s": summary["tokens_per_s"]}


# The recipe reported in the README: what gives the best bits/char in 90 s on 2 CPU cores.
RECIPE = ["--tokenizer", "bpe", "--vocab-size", "2048", "--preset", "tiny", "--layers", "4", "--width", "128",
          "--heads", "4", "--context", "128", "--batch-size", "16", "--lr", "3e-3", "--min-lr", "3e-4",
          "--warmup-steps", "30", "--eval-every", "200", "--eval-batches", "20", "--save-every", "100000"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed-only", action="store_true")
    parser.add_argument("--corpus", type=Path, default=SHAKESPEARE)
    args = parser.parse_args()
    if not args.corpus.is_file():
        raise SystemExit(f"no corpus at {args.corpus} (pass --corpus FILE)")
    report = {"speed": speed(args.corpus)}
    print(f"loop speed: llmctl/plain = {report['speed']['ratio']}", file=sys.stderr)
    if not args.speed_only:
        report["quality"] = quality(args.corpus, RECIPE)
        print(f"90 s on tinyshakespeare: {report['quality']['val_bpc']} bits/char vs nanoGPT {NANOGPT_BPC} "
              f"({report['quality']['ratio_vs_nanogpt']}x better)", file=sys.stderr)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
