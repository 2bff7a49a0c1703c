"""LoRA fine-tuning speed and memory: `llmctl finetune` against transformers.Trainer + peft, padding-free.

Same model (SmolLM2-135M-Instruct, the embedded default), same data (../shared/data/alpaca_seed_tasks.jsonl,
tokenized and masked identically), same rank, targets, sequence length, batch and steps: llmctl's own
defaults (FinetuneConfig), which the Trainer side copies. Each side runs
in its own process so peak memory (max RSS) is its own. Printed as ratios; goal: >= 1.3x the tokens/s
at no more than half the memory. The baseline is Trainer with padding-free batches
(DataCollatorWithFlattening: one flattened row, positions restarting per example, as llmctl packs);
the old padded baseline (DataCollatorForSeq2Seq, each batch padded to its longest) is a second row.

    python bench/finetune.py [--steps 20] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llmctl.finetune.config import FinetuneConfig

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT.parent / "shared" / "data" / "alpaca_seed_tasks.jsonl"
DEFAULTS = FinetuneConfig(data=[SEEDS])  # what `llmctl finetune` trains with unless told otherwise
MAX_LENGTH = 512
WARMUP = 5  # a short run: both sides warm up over the same few steps


def _examples(tokenizer):
    from llmctl.finetune.data import load_examples
    from llmctl.finetune.tokenize import encode_all

    examples, _ = load_examples([SEEDS])
    return encode_all(tokenizer, examples, MAX_LENGTH, True, [])


def worker_llmctl(steps: int, batch: int) -> dict:
    from llmctl.finetune.config import FinetuneTrainConfig
    from llmctl.finetune.run import finetune
    from llmctl.finetune.task import FinetuneTask

    seen = {"tokens": 0}
    real = FinetuneTask.train_batch

    def counting(self, *args):
        out = real(self, *args)
        seen["tokens"] += int(out["input_ids"].numel())
        return out

    FinetuneTask.train_batch = counting
    out = Path(tempfile.mkdtemp(prefix="bench-llmctl-"))
    # `llmctl finetune`'s own defaults (those of FinetuneConfig), except what both sides must share
    summary = finetune(FinetuneConfig(
        data=[SEEDS], base="smollm2", out=out, max_length=MAX_LENGTH, eval_split=0.05, register=False,
        skip_bad_rows=True,
        train=FinetuneTrainConfig(max_steps=steps, batch_size=batch, warmup_steps=WARMUP, eval_every=10**9,
                                  save_every=10**9, eval_batches=1)))
    return {"seconds": summary["seconds"], "tokens": seen["tokens"]}


def worker_trainer(steps: int, batch: int, padded: bool = False) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq,
                              DataCollatorWithFlattening, Trainer, TrainerCallback, TrainingArguments)

    from llmctl.embedded import locate_weights

    source, _ = locate_weights("HuggingFaceTB/SmolLM2-135M-Instruct", offline=True)
    tokenizer = AutoTokenizer.from_pretrained(source)
    items = _examples(tokenizer)
    rows = [{"input_ids": t.ids, "labels": t.labels, "attention_mask": [1] * len(t.ids)} for t in items]
    torch.manual_seed(DEFAULTS.train.seed)
    lora = LoraConfig(task_type="CAUSAL_LM", r=DEFAULTS.rank, lora_alpha=DEFAULTS.alpha, lora_dropout=DEFAULTS.dropout,
                      target_modules="all-linear")  # llmctl's default targets: every linear layer
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32), lora)
    seen = {"tokens": 0}

    class Count(TrainerCallback):
        pass

    if padded:
        collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    else:  # padding-free: its own shift of labels per example, so give it the unshifted rows
        rows = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows]
        collator = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)

    def counting_collator(features):
        batch_out = collator(features)
        seen["tokens"] += sum(len(f["input_ids"]) - 1 for f in features)  # real tokens, as llmctl counts them
        return batch_out

    args = TrainingArguments(output_dir=tempfile.mkdtemp(prefix="bench-trainer-"), per_device_train_batch_size=batch,
                             max_steps=steps, learning_rate=DEFAULTS.train.lr, warmup_steps=WARMUP,
                             weight_decay=DEFAULTS.train.weight_decay, lr_scheduler_type="cosine",
                             logging_steps=10**6, save_strategy="no", report_to=[], use_cpu=True,
                             dataloader_num_workers=0, seed=DEFAULTS.train.seed, remove_unused_columns=False)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows), data_collator=counting_collator,
                      callbacks=[Count()])
    start = time.perf_counter()
    trainer.train()
    return {"seconds": time.perf_counter() - start, "tokens": seen["tokens"]}


def run_worker(kind: str, steps: int, batch: int) -> dict:
    """One side in its own process, so its peak memory is its own."""
    done = subprocess.run([sys.executable, __file__, "--worker", kind, "--steps", str(steps), "--batch", str(batch)],
                          capture_output=True, text=True, cwd=ROOT, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode:
        raise SystemExit(f"{kind} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=("llmctl", "trainer", "trainer-padded"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=DEFAULTS.train.batch_size)
    args = parser.parse_args()
    if args.worker:
        if args.worker == "llmctl":
            result = worker_llmctl(args.steps, args.batch)
        else:
            result = worker_trainer(args.steps, args.batch, padded=args.worker == "trainer-padded")
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    if not SEEDS.is_file():
        raise SystemExit(f"no data at {SEEDS}")
    runs = {kind: run_worker(kind, args.steps, args.batch) for kind in ("trainer", "trainer-padded", "llmctl")}
    ours = runs["llmctl"]
    report = {**runs}
    for kind in ("trainer", "trainer-padded"):
        theirs = runs[kind]
        report[f"vs_{kind}"] = {
            "tokens_per_s_ratio": round((ours["tokens"] / ours["seconds"]) / (theirs["tokens"] / theirs["seconds"]), 3),
            "peak_memory_ratio": round(ours["peak_rss_mb"] / theirs["peak_rss_mb"], 3)}
    print(json.dumps(report, indent=2))
    for kind, label in (("trainer", "padding-free"), ("trainer-padded", "padded")):
        r = report[f"vs_{kind}"]
        print(f"llmctl finetune: {r['tokens_per_s_ratio']}x the tokens/s of Trainer+peft ({label}) at "
              f"{r['peak_memory_ratio']}x its peak memory", file=sys.stderr)


if __name__ == "__main__":
    main()
