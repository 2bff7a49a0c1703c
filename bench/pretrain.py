"""Pretraining quality per CPU-second, and loop speed, each against a baseline measured in the same run.

1. Quality: tinyshakespeare split 90/10 by position (train.txt = the first 90%, val.txt = the rest). Each
   contender trains on train.txt for the same wall-clock budget and is scored here, in bits per character,
   on all of val.txt (sliding windows: every token scored once, with at least half a window of context):
     baseline  a plain char-level GPT in nanoGPT's "baby GPT" shape (4 layers, 4 heads, 128 wide, block 64,
               batch 12, AdamW 1e-3 cosine), written out below, trained for the budget;
     defaults  `llmctl pretrain --data train.txt --max-time 90s` and nothing else (Muon);
     adamw     the same with --optimizer adamw (AdamW against Muon at equal time);
     recipe    the hand-tuned flags that were bench/pretrain.py's recipe (BPE 2048, 4x128, context 128, lr 3e-3);
     best      the best flags found (BEST below);
     no-dropout  the defaults with --dropout 0 (only with --only: the same as defaults up to ~11 estimated
               passes over the corpus, where the chooser picks no dropout; try --budget 270).
2. Speed (--speed): tokens/s of llmctl's training loop against a minimal plain-PyTorch loop, same model and batch.

    python bench/pretrain.py                       # quality: five runs of --budget seconds (~10 min)
    python bench/pretrain.py --only best recipe    # a subset (the baseline always runs)
    python bench/pretrain.py --budget 270 --only defaults no-dropout   # the chosen dropout, ~15 passes
    python bench/pretrain.py --budget 60 --threads 1   # on a machine other jobs oversubscribe
    python bench/pretrain.py --speed               # loop speed only (about a minute)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
STEPS = 60
RECIPE = ["--tokenizer", "bpe", "--vocab-size", "2048", "--layers", "4", "--width", "128", "--heads", "4",
          "--context", "128", "--batch-size", "16", "--lr", "3e-3", "--min-lr", "3e-4", "--warmup-steps", "30",
          "--eval-every", "200", "--eval-batches", "20", "--save-every", "100000", "--optimizer", "adamw"]
# The best flags measured (bench/RESULTS.md, 2026-12-04): the recipe's tokenizer on a 3x96 model, 8 sequences
# a step, Muon, the rate decaying to zero, no evaluation inside the budget.
BEST = list(RECIPE)
for flag, value in (("--layers", "3"), ("--width", "96"), ("--heads", "3"), ("--batch-size", "8"),
                    ("--eval-every", "100000"), ("--optimizer", "muon"), ("--min-lr", "0")):
    BEST[BEST.index(flag) + 1] = value
CONTENDERS = {"defaults": [], "adamw": ["--optimizer", "adamw"], "recipe": RECIPE, "best": BEST,
              "no-dropout": ["--dropout", "0"]}
DEFAULT_RUN = ["defaults", "adamw", "recipe", "best"]  # no-dropout differs from defaults only past ~11 passes


# -- the baseline: a plain char-level GPT (nanoGPT's shape, our own code) ----------------------------------
class Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, c)
        x = x + self.proj(y)
        return x + self.mlp(self.ln2(x))


class BabyGPT(nn.Module):
    def __init__(self, vocab: int, block: int = 64, layers: int = 4, heads: int = 4, width: int = 128):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, width), nn.Embedding(block, width)
        self.blocks = nn.Sequential(*[Block(width, heads) for _ in range(layers)])
        self.ln, self.head = nn.LayerNorm(width), nn.Linear(width, vocab, bias=False)
        self.head.weight = self.tok.weight  # tied, as nanoGPT
        self.apply(lambda m: nn.init.normal_(m.weight, std=0.02) if isinstance(m, (nn.Linear, nn.Embedding)) else None)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.size(1)))
        return self.head(self.ln(self.blocks(x)))


def train_baseline(train_text: str, seconds: float, block: int = 64, batch: int = 12, lr: float = 1e-3):
    """Train for `seconds` of wall clock; returns (model, char -> id, steps)."""
    torch.manual_seed(1337)
    chars = sorted(set(train_text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in train_text], dtype=torch.long)
    model = BabyGPT(len(chars) + 1, block)  # the last id: a character the training text never had
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.99))
    start, step = time.perf_counter(), 0
    while (done := (time.perf_counter() - start) / seconds) < 1:
        for group in opt.param_groups:  # warmup 100 steps, cosine to lr/10 over the budget
            group["lr"] = min(1, (step + 1) / 100) * (lr / 10 + 0.45 * lr * (1 + math.cos(math.pi * done)))
        at = torch.randint(len(data) - block - 1, (batch,))
        x = torch.stack([data[i:i + block] for i in at])
        y = torch.stack([data[i + 1:i + block + 1] for i in at])
        loss = F.cross_entropy(model(x).view(-1, len(chars) + 1), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
    return model.eval(), stoi, step


# -- scoring: the same held-out text for everyone ---------------------------------------------------------
@torch.no_grad()
def bits_per_char(logits_of, ids: list[int], window: int, chars: int) -> float:
    """Sum of -log2 p over every token but the first (each scored once, with >= window/2 context), per char."""
    ids_t, total, scored_to, half = torch.tensor(ids), 0.0, 1, window // 2
    for start in range(0, max(1, len(ids) - 1), half):
        chunk = ids_t[start:start + window + 1]
        if len(chunk) < 2 or scored_to >= len(ids):
            break
        logp = torch.log_softmax(logits_of(chunk[:-1].unsqueeze(0))[0].float(), -1)
        targets = chunk[1:]
        keep = torch.arange(start + 1, start + len(chunk)) >= scored_to  # not scored by an earlier window
        total -= float(logp[torch.arange(len(targets)), targets][keep].sum())
        scored_to = start + len(chunk)
    return total / math.log(2) / chars


def score_baseline(model, stoi, val_text: str) -> float:
    ids = [stoi.get(c, len(stoi)) for c in val_text]
    return bits_per_char(model, ids, 64, len(val_text) - 1)


def score_llmctl(out: Path, val_text: str) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer(val_text, add_special_tokens=False)["input_ids"]
    first = len(tokenizer.decode(ids[:1]))
    context = model.config.max_position_embeddings
    return bits_per_char(lambda x: model(input_ids=x, use_cache=False).logits, ids, context, len(val_text) - first)


def run_llmctl(train: Path, val_text: str, budget: str, extra: list[str]) -> dict:
    out = Path(tempfile.mkdtemp(prefix="llmctl-bench-"))
    cmd = [sys.executable, "-m", "llmctl", "pretrain", "--data", str(train), "--out", str(out), "--max-time", budget,
           "--no-register", "--json", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the baseline's thread count
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode:
        raise SystemExit(done.stderr)
    summary = json.loads(done.stdout)
    chosen = json.loads((out / "llmctl-train.json").read_text())["config"].get("chosen", {})
    return {"flags": " ".join(extra) or "(none)", "bpc": round(score_llmctl(out, val_text), 4),
            "steps": summary["steps"], "tokens_per_s": summary["tokens_per_s"], "parameters": summary["parameters"],
            "chosen": {k: v.split(" (")[0] for k, v in chosen.items()}}


def quality(corpus: Path, seconds: float, only: list[str]) -> dict:
    text = corpus.read_text()
    cut = int(len(text) * 0.9)
    work = Path(tempfile.mkdtemp(prefix="llmctl-bench-split-"))
    (work / "train.txt").write_text(text[:cut])
    val_text = text[cut:]
    model, stoi, steps = train_baseline(text[:cut], seconds)
    report = {"budget_s": seconds, "val_chars": len(val_text),
              "baseline": {"bpc": round(score_baseline(model, stoi, val_text), 4), "steps": steps}}
    print(f"baseline (plain char GPT): {report['baseline']['bpc']} bits/char, {steps} steps", file=sys.stderr)
    for name in only:
        report[name] = run_llmctl(work / "train.txt", val_text, f"{seconds:g}s", CONTENDERS[name])
        report[name]["ratio_to_baseline"] = round(report[name]["bpc"] / report["baseline"]["bpc"], 3)
        print(f"{name}: {report[name]['bpc']} bits/char ({report[name]['ratio_to_baseline']}x the baseline), "
              f"{report[name]['steps']} steps", file=sys.stderr)
    if "defaults" in report and "adamw" in report:  # each probes the machine: shapes may differ under load
        report["muon_over_adamw_defaults"] = round(report["defaults"]["bpc"] / report["adamw"]["bpc"], 3)
    if "defaults" in report and "no-dropout" in report:
        report["defaults_over_no_dropout"] = round(report["defaults"]["bpc"] / report["no-dropout"]["bpc"], 3)
    if "defaults" in report and "recipe" in report:
        report["defaults_over_recipe"] = round(report["defaults"]["bpc"] / report["recipe"]["bpc"], 3)
    return report


# -- loop speed ----------------------------------------------------------------------------------------------
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", action="store_true", help="loop speed only")
    parser.add_argument("--corpus", type=Path, default=SHAKESPEARE)
    parser.add_argument("--budget", type=float, default=90, help="seconds of training for every contender")
    parser.add_argument("--only", nargs="+", choices=list(CONTENDERS), default=DEFAULT_RUN)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for every contender (1 on an oversubscribed machine: OpenMP barriers "
                             "stall when other jobs hold the cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.corpus.is_file():
        raise SystemExit(f"no corpus at {args.corpus} (pass --corpus FILE)")
    report = {"speed": speed(args.corpus)} if args.speed else quality(args.corpus, args.budget, args.only)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
