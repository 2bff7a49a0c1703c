#!/usr/bin/env bash
# The CI job of the README's GitHub Actions workflow, run locally: a short fine-tune, then gates that fail
# the job (exit code 6) when the fine-tuned model is below a bar, worse than its base, or changed by merging.
# Reports land in $REPORTS: JUnit XML for the CI's test view, JSON for anything else.
#
#   examples/ci.sh                                   # SmolLM2 + examples/pirate.jsonl, about 3 minutes on a CPU
#   MODEL=path/to/model TRAIN=train.jsonl QUESTIONS=qa.jsonl MAX_STEPS=2 examples/ci.sh
set -euo pipefail

MODEL=${MODEL:-smollm2}                            # base model: registry name, hf:REPO or a directory
TRAIN=${TRAIN:-examples/pirate.jsonl}              # fine-tuning data
QUESTIONS=${QUESTIONS:-examples/ci-questions.jsonl}  # {question, answer} rows for `eval exact`
MAX_STEPS=${MAX_STEPS:-20}
FAIL_UNDER=${FAIL_UNDER:-contains=0.5}             # the bar the candidate must clear
MAX_DROP=${MAX_DROP:-contains=0.25}                # how much worse than the base model it may be
OUT=${OUT:-runs/ci}
REPORTS=${REPORTS:-reports}
LLMCTL=${LLMCTL:-llmctl}                           # e.g. ".venv/bin/llmctl" or "python -m llmctl"
PYTHON=${PYTHON:-python3}

mkdir -p "$REPORTS" "$OUT"
echo "== fine-tune $MODEL on $TRAIN ($MAX_STEPS steps)"
$LLMCTL finetune --data "$TRAIN" -m "$MODEL" --max-steps "$MAX_STEPS" --out "$OUT/adapter" --name ci-candidate \
  --json > "$REPORTS/finetune.json"

echo "== the base model's score: the baseline"
$LLMCTL eval exact -m "$MODEL" -d "$QUESTIONS" --json > "$REPORTS/baseline.json"
baseline=$($PYTHON -c 'import json, sys; print(json.load(open(sys.argv[1]))["id"])' "$REPORTS/baseline.json")

echo "== gate the candidate: --fail-under $FAIL_UNDER, --max-drop $MAX_DROP against $baseline"
$LLMCTL eval exact -m ci-candidate -d "$QUESTIONS" --fail-under "$FAIL_UNDER" \
  --baseline "$baseline" --max-drop "$MAX_DROP" --junit "$REPORTS/eval-exact.xml"

echo "== merge, and check the merged model answers exactly like the adapter"
$LLMCTL finetune merge ci-candidate --out "$OUT/merged" --name ci-candidate-merged --json > "$REPORTS/merge.json"
$LLMCTL eval lineage ci-candidate-merged -p "$QUESTIONS" --max-tokens 8 \
  --fail-under agreement=1.0 --fail-over max_logit_diff=0.001 --junit "$REPORTS/eval-lineage.xml"
echo "== all gates passed"
