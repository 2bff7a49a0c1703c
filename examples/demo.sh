#!/usr/bin/env bash
# `make demo`: what llmctl is for, offline, on the embedded default model (SmolLM2-135M-Instruct).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1  # the demo uses what is embedded, never the network
llmctl() { .venv/bin/llmctl "$@"; }
step() { printf '\n\033[1m== %s\033[0m\n$ llmctl %s\n' "$1" "$2"; }

step "1. Prompt the default local model (the first run converts the bundled GGUF once, 20-40 s)" \
     'prompt -t 0 "What is the capital of France?"'
llmctl prompt -t 0 --max-tokens 60 "What is the capital of France?"

step "2. Next-token probabilities: what the model thinks comes next" \
     'prompt --raw --top-probs 10 --max-tokens 1 "The Eiffel Tower is located in"'
llmctl prompt --raw --top-probs 10 --max-tokens 1 "The Eiffel Tower is located in"

step "3. Sampling: temperature 1.0 with a seed is random but reproducible" \
     'prompt -t 1.0 --seed 7 --max-tokens 30 "Write one sentence about the sea."  (twice)'
llmctl prompt -t 1.0 --seed 7 --max-tokens 30 "Write one sentence about the sea."
llmctl prompt -t 1.0 --seed 7 --max-tokens 30 "Write one sentence about the sea."

step "4. Few-shot prompting from a JSONL file of examples" \
     'prompt -t 0 --shots examples/shots-capitals.jsonl --max-tokens 5 "Italy"'
llmctl prompt -t 0 --shots examples/shots-capitals.jsonl --max-tokens 5 "Italy"

step "5. For scripts: one JSON document on stdout" \
     'prompt -t 0 --max-tokens 8 --json "Say hello." | python3 -c ...'
llmctl prompt -t 0 --max-tokens 8 --json "Say hello." \
  | python3 -c 'import json,sys; d=json.load(sys.stdin); print({k: d[k] for k in ("text","finish_reason","usage")}, "tokens/s:", d["timings"].get("tokens_per_s"))'

step "6. Every exchange is logged" 'logs -n 3'
llmctl logs -n 3

step "6a. Tokens: how the model splits text (boundaries, ids, characters per token)" \
     'tokenize "The Eiffel Tower is located in"'
llmctl tokenize "The Eiffel Tower is located in"

step "6b. Temperature reshapes the next-token distribution: sharper at 0.2, flatter at 1.5 (entropy in bits)" \
     'next "The Eiffel Tower is located in" -t 0.2,1.0,1.5 --top 8'
llmctl next "The Eiffel Tower is located in" -t 0.2,1.0,1.5 --top 8

step "6c. Pretraining makes its own (input -> target) pairs from plain text; the loss shows which targets are hard" \
     'pretrain pairs "Every effort moves you forward"'
llmctl pretrain pairs "Every effort moves you forward"

step "7. Fine-tune SmolLM2 with LoRA on 150 pirate pairs (examples/pirate.jsonl), about two minutes" \
     'finetune --data examples/pirate.jsonl -m smollm2 --max-steps 20 --lr 1e-3 --out runs/pirate'
llmctl finetune --data examples/pirate.jsonl -m smollm2 --max-steps 20 --lr 1e-3 --eval-every 100 --out runs/pirate --name pirate

step "8. Before and after, on questions that are not in the data" 'prompt -t 0 "..."  then  prompt -m pirate -t 0 "..."'
for question in "What colour is a fire truck?" "Who wrote Hamlet?"; do
  printf '\n%s\n  smollm2: ' "$question"; llmctl prompt -t 0 --max-tokens 30 "$question"
  printf '  pirate:  '; llmctl prompt -m pirate -t 0 --max-tokens 30 "$question"
done

step "9. Side by side: the same questions to smollm2 and the pirate adapter (a judge model is optional)" \
     'eval compare -m smollm2 -m pirate -p examples/questions.txt --max-tokens 30'
llmctl eval compare -m smollm2 -m pirate -p examples/questions.txt --max-tokens 30

step "10. Serve the adapter over the OpenAI API and ask it like any OpenAI-compatible server" \
     'serve -m pirate --port 8765 &  then  prompt --base-url http://127.0.0.1:8765/v1 -m pirate "..."'
.venv/bin/llmctl serve -m pirate --port 8765 2>/dev/null &  # not the function: $! must be the server itself
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 120); do  # wait until it answers /health (loading takes a few seconds)
  .venv/bin/python -c 'import urllib.request as u; u.urlopen("http://127.0.0.1:8765/health")' 2>/dev/null && break
  sleep 0.5
done
OPENAI_API_KEY=none llmctl prompt --base-url http://127.0.0.1:8765/v1 -m pirate -t 0 --max-tokens 30 "What do bees make?"
kill -TERM $server; wait $server || true

step "11. Pretrain your own GPT: the tiny preset on the Python standard library, for one minute" \
     'pretrain --data python-stdlib --preset tiny --vocab-size 2048 --context 128 --lr 3e-3 --max-time 60s --out runs/pystd-gpt'
llmctl pretrain --data python-stdlib --preset tiny --vocab-size 2048 --context 128 --lr 3e-3 --warmup-steps 30 \
  --max-time 60s --eval-every 200 --out runs/pystd-gpt --name pystd-gpt

step "12. Sample from it: a base model, so a raw completion" 'prompt -m pystd-gpt -t 0.8 --seed 0 "def "'
llmctl prompt -m pystd-gpt -t 0.8 --seed 0 --max-tokens 80 "def "
llmctl models show pystd-gpt

step "13. Take the pirate adapter out of llmctl: one q8_0 GGUF file for llama.cpp, ollama and LM Studio, checked by a round trip" \
     'export pirate --to gguf --quant q8_0 --out runs/pirate-q8_0.gguf --name pirate-gguf --ollama pirate'
llmctl export pirate --to gguf --quant q8_0 --out runs/pirate-q8_0.gguf --name pirate-gguf --ollama pirate --force

step "14. The GGUF file is a registry model like any other" 'prompt -m pirate-gguf -t 0 "What do bees make?"'
llmctl prompt -m pirate-gguf -t 0 --max-tokens 30 "What do bees make?"

printf '\nNext: llmctl chat · llmctl models list · llmctl config show · llmctl --help\n'
