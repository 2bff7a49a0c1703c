#!/usr/bin/env bash
# The GPU check of issue #12, on one CUDA GPU with no network, in under 8 minutes; prints one table:
#   gpt2-124m pretraining, bf16, 200 steps: tokens/s and MFU
#   SmolLM2-135M LoRA with packing: tokens/s, peak GPU memory, attention implementation,
#     against transformers.Trainer + peft (padding-free batches) on the same data
#   QLoRA, 20 steps (bitsandbytes)
#   one request to `llmctl serve`
# Needs: CUDA, the SmolLM2 weights that llmctl embeds (no download), ../shared/data/alpaca_seed_tasks.jsonl.
# Exit codes: 0 all rows ran; 3 no CUDA GPU here; 1 a row failed (its log is named).
#
#   bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 LLMCTL_HOME="${LLMCTL_HOME:-$(mktemp -d)}"
WORK=$(mktemp -d -t gpu-check-XXXX)
DATA=../shared/data/alpaca_seed_tasks.jsonl

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); this check needs one" >&2
  exit 3
fi
[ -f "$DATA" ] || { echo "gpu_check: no data at $DATA" >&2; exit 1; }
ROWS="$WORK/rows.tsv"
: > "$ROWS"
failed=0

row() { printf '%s\t%s\n' "$1" "$2" >> "$ROWS"; }
fail() { row "$1" "FAILED (log: $2)"; failed=1; }

# 1. pretraining: gpt2-124m shape, bf16, 200 steps, on the built-in corpus (no network)
log="$WORK/pretrain.log"
if timeout 180 "$PY" -m llmctl pretrain --data python-stdlib --preset gpt2-124m --tokenizer bpe --vocab-size 8192 \
     --precision bf16 --batch-size 16 --max-steps 200 --eval-every 1000 --save-every 1000 --log-every 50 \
     --no-register --json --out "$WORK/gpt2" > "$WORK/pretrain.json" 2> "$log"; then
  row "pretrain gpt2-124m bf16 200 steps" "$("$PY" -c 'import json,sys; s=json.load(open(sys.argv[1]))
print(f"{s[\"tokens_per_s\"]:,.0f} tok/s, MFU {s.get(\"mfu\", \"n/a (GPU not in the table)\")}")' "$WORK/pretrain.json")"
else
  fail "pretrain gpt2-124m bf16 200 steps" "$log"
fi

# 2. LoRA with packing against Trainer + peft (padding-free), same data, same steps, each in its own process
cat > "$WORK/lora.py" <<'EOF'
import json, sys, tempfile, time
from pathlib import Path
import torch

side, data, steps = sys.argv[1], Path(sys.argv[2]), 60
torch.cuda.reset_peak_memory_stats()
if side == "llmctl":
    from llmctl.finetune.config import FinetuneConfig, FinetuneTrainConfig
    from llmctl.finetune.run import finetune
    from llmctl.finetune import models
    seen = {}
    real_add = models.add_lora
    def spying(model, *a, **k):
        seen["attn"] = model.config._attn_implementation
        return real_add(model, *a, **k)
    import llmctl.finetune.run as run
    run.add_lora = spying
    s = finetune(FinetuneConfig(data=[data], base="smollm2", out=Path(tempfile.mkdtemp()), register=False,
                                skip_bad_rows=True, max_length=512,
                                train=FinetuneTrainConfig(max_steps=steps, batch_size=8, eval_every=10**9,
                                                          save_every=10**9, eval_batches=1)))
    tps, attn = s["tokens_per_s"], seen.get("attn")
else:
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorWithFlattening, Trainer,
                              TrainingArguments)
    from llmctl.embedded import locate_weights
    from llmctl.finetune.data import load_examples
    from llmctl.finetune.tokenize import encode_all
    source, _ = locate_weights("HuggingFaceTB/SmolLM2-135M-Instruct", offline=True)
    tok = AutoTokenizer.from_pretrained(source)
    items = encode_all(tok, load_examples([data])[0], 512, True, [])
    rows = [{"input_ids": t.ids, "labels": t.labels} for t in items]
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16)
    attn = model.config._attn_implementation
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, target_modules="all-linear"))
    tokens = {"n": 0}
    flat = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)
    def collate(features):
        tokens["n"] += sum(len(f["input_ids"]) for f in features)
        return flat(features)
    args = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=8, max_steps=steps, bf16=True,
                             learning_rate=2e-4, logging_steps=10**6, save_strategy="no", report_to=[],
                             remove_unused_columns=False)
    t0 = time.perf_counter()
    Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows), data_collator=collate).train()
    tps = tokens["n"] / (time.perf_counter() - t0)
print(json.dumps({"tokens_per_s": tps, "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "attn": attn}))
EOF
for side in llmctl trainer; do
  log="$WORK/lora-$side.log"
  if timeout 150 "$PY" "$WORK/lora.py" "$side" "$DATA" > "$WORK/lora-$side.json" 2> "$log"; then
    row "LoRA SmolLM2 packed: $side" "$("$PY" -c 'import json,sys; s=json.loads(open(sys.argv[1]).read().splitlines()[-1])
print(f"{s[\"tokens_per_s\"]:,.0f} tok/s, peak {s[\"peak_gib\"]:.2f} GiB, attention {s[\"attn\"]}")' "$WORK/lora-$side.json")"
  else
    fail "LoRA SmolLM2 packed: $side" "$log"
  fi
done

# 3. QLoRA: 4-bit base through bitsandbytes, 20 steps
log="$WORK/qlora.log"
if timeout 120 "$PY" -m llmctl finetune --qlora --data "$DATA" -m smollm2 --max-steps 20 --eval-every 1000 \
     --save-every 1000 --no-register --json --out "$WORK/qlora" > "$WORK/qlora.json" 2> "$log"; then
  row "QLoRA SmolLM2 20 steps" "$("$PY" -c 'import json,sys; s=json.load(open(sys.argv[1]))
print(f"{s[\"tokens_per_s\"]:,.0f} tok/s, val loss {s[\"val_loss_before\"]} -> {s[\"val_loss_after\"]}")' "$WORK/qlora.json")"
else
  fail "QLoRA SmolLM2 20 steps" "$log"
fi

# 4. one request to the server
log="$WORK/serve.log"
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$PY" -m llmctl serve -m smollm2 --port "$PORT" > "$log" 2>&1 &
SERVER=$!
answer=""
for _ in $(seq 1 90); do
  answer=$(curl -s -m 30 "http://127.0.0.1:$PORT/v1/chat/completions" -H 'content-type: application/json' \
    -d '{"model": "smollm2", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}' 2>/dev/null) \
    && [ -n "$answer" ] && break
  sleep 1
done
kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null
if echo "$answer" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"][:40])' \
     > "$WORK/serve.txt" 2>/dev/null; then
  row "serve: one chat request" "ok: $(tr '\n' ' ' < "$WORK/serve.txt")"
else
  fail "serve: one chat request" "$log"
fi

echo
"$PY" -c 'import torch; print("GPU:", torch.cuda.get_device_name(), "| torch", torch.__version__)'
column -t -s $'\t' "$ROWS" 2>/dev/null || cat "$ROWS"
exit $failed
