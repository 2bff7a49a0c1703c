"""Serving throughput: requests/s and time to first token at 1, 4 and 16 concurrent clients
against `llmctl serve` with batching (--max-batch 8) and without (1), and the same model's generation
called in-process one request after another, in the same run.

    python bench/serve.py [--model smollm2] [--requests 16] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai

from llmctl.backends.base import GenerationRequest, Message, SamplingParams
from llmctl.config import Config
from llmctl.prompting import open_backend, resolve_entry
from llmctl.serve.server import ModelServer

PROMPT = "Write one sentence about the sea."


def in_process(backend, requests: int, max_tokens: int) -> dict:
    start, firsts = time.perf_counter(), []
    for _ in range(requests):
        t0 = time.perf_counter()
        response = backend.generate(GenerationRequest([Message("user", PROMPT)], SamplingParams(temperature=0, max_tokens=max_tokens)))
        first = None
        for _ in response:  # consume it all: leaving the loop early would stop the generation
            first = first or time.perf_counter() - t0
        firsts.append(first)
    seconds = time.perf_counter() - start
    return {"requests_per_s": round(requests / seconds, 3), "ttft_s": round(statistics.median(firsts), 3)}


def over_http(url: str, clients: int, requests: int, max_tokens: int) -> dict:
    def one(_):
        c = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
        t0 = time.perf_counter()
        stream = c.chat.completions.create(model="m", messages=[{"role": "user", "content": PROMPT}], temperature=0,
                                           max_tokens=max_tokens, stream=True)
        first = None
        for _ in stream:
            first = first or time.perf_counter() - t0
        return first

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        firsts = list(pool.map(one, range(requests)))
    seconds = time.perf_counter() - start
    return {"requests_per_s": round(requests / seconds, 3), "ttft_s": round(statistics.median(firsts), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    backend = open_backend(resolve_entry(args.model), Config())
    in_process(backend, 1, args.max_tokens)  # warm-up, so neither side pays for first-call costs
    baseline = in_process(backend, args.requests, args.max_tokens)
    report = {"in_process": baseline}
    for max_batch in (1, 8):
        server = ModelServer({"m": backend}, "127.0.0.1", 0, max_queue=64, max_batch=max_batch)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        for clients in (1, 4, 16):
            result = over_http(server.url, clients, args.requests, args.max_tokens)
            result["throughput_ratio"] = round(result["requests_per_s"] / baseline["requests_per_s"], 3)
            report[f"http_batch{max_batch}_{clients}_clients"] = result
        server.shutdown()
        server.server_close()
    print(json.dumps(report, indent=2))
    print("requests/s over HTTP relative to in-process: "
          + ", ".join(f"{k}: {v['throughput_ratio']}" for k, v in report.items() if k != "in_process"), file=sys.stderr)


if __name__ == "__main__":
    main()
