"""Serving throughput: requests/s and time to first token at 1, 4 and 16 concurrent clients
against `llmctl serve` with continuous batching (--max-batch 16) and without (1), and the same model's
generation called in-process one request after another, in the same run; then the tokens/s of
constrained decoding (a JSON schema) against free decoding, in-process. Every request asks its own
question (see Prompts), so the server's prefix cache can reuse only what real users' prompts share.

The server runs as its own process, as it would for users: in one process, a second thread running
torch makes both threads' OpenMP pools compete for the cores, which would slow either side unfairly.

    python bench/serve.py [--model smollm2] [--requests 16] [--max-tokens 16] [--prefix-cache MB]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai

from llmctl.backends.base import GenerationRequest, Message, SamplingParams
from llmctl.config import Config
from llmctl.prompting import open_backend, resolve_entry

PROMPT = "Write one sentence about the sea."
MODEL_NAME = "smollm2"  # set from --model: the server knows the model by the name it was given
ADJECTIVES = ("the old", "a quiet", "a red", "the frozen", "a tiny", "the busy", "a broken", "the golden",
              "a lonely", "the northern", "a wooden", "the hidden", "a noisy", "the ancient", "a bright")
NOUNS = ("sea", "harbour", "kite", "river", "garden", "violin", "mountain", "library", "lantern", "forest",
         "bridge", "market", "comet", "orchard", "train")


class Prompts:
    """Every request of a run its own question, as a service's users ask: they share only the chat
    template's system prompt and "Write one sentence about " (a server may cache what prompts share,
    so repeating one prompt would flatter it). 225 questions, in a fixed shuffled order."""

    def __init__(self):
        import random

        self.questions = [f"Write one sentence about {a} {n}." for a in ADJECTIVES for n in NOUNS]
        random.Random(0).shuffle(self.questions)
        self.next = 0
        self.lock = threading.Lock()

    def take(self) -> str:
        with self.lock:
            self.next += 1
            return self.questions[(self.next - 1) % len(self.questions)]


PROMPTS = Prompts()


def in_process(backend, requests: int, max_tokens: int) -> dict:
    start, firsts = time.perf_counter(), []
    for _ in range(requests):
        t0 = time.perf_counter()
        response = backend.generate(GenerationRequest([Message("user", PROMPTS.take())],
                                                      SamplingParams(temperature=0, max_tokens=max_tokens)))
        first = None
        for _ in response:  # consume it all: leaving the loop early would stop the generation
            first = first or time.perf_counter() - t0
        firsts.append(first)
    seconds = time.perf_counter() - start
    return {"requests_per_s": round(requests / seconds, 3), "ttft_s": round(statistics.median(firsts), 3)}


SCHEMA = {"type": "object", "additionalProperties": False, "required": ["sentence", "words"],
          "properties": {"sentence": {"type": "string"}, "words": {"type": "integer"}}}


def constrained_vs_free(backend, requests: int, max_tokens: int) -> dict:
    """Tokens/s in-process, free and under a JSON schema (same prompt, sampling at temperature 1)."""
    fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA}}
    out = {}
    for name, extra in (("free", {}), ("constrained", {"response_format": fmt})):
        tokens, seconds = 0, 0.0
        for seed in range(requests):
            request = GenerationRequest([Message("user", PROMPT + " Answer in JSON.")],
                                        SamplingParams(temperature=1.0, seed=seed, max_tokens=max_tokens), **extra)
            t0 = time.perf_counter()
            response = backend.generate(request)
            response.text()
            seconds += time.perf_counter() - t0
            tokens += response.usage["completion_tokens"]
        out[name] = {"tokens_per_s": round(tokens / seconds, 2), "tokens": tokens}
    out["slowdown"] = round(out["free"]["tokens_per_s"] / out["constrained"]["tokens_per_s"], 3)
    return out


def over_http(url: str, clients: int, requests: int, max_tokens: int) -> dict:
    # One client object per concurrent user, made before the clock starts and kept (its connections
    # too), as an application keeps its client: making one costs tens of milliseconds of the bench's
    # own CPU, which 16 threads would pay again before every request, on the server's cores.
    pool_of_clients = queue.SimpleQueue()
    for _ in range(clients):
        pool_of_clients.put(openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=600))

    def one(_):
        c = pool_of_clients.get()
        try:
            return ask(c)
        finally:
            pool_of_clients.put(c)

    def ask(c):
        t0 = time.perf_counter()
        stream = c.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": PROMPTS.take()}],
                                           temperature=0, max_tokens=max_tokens, stream=True)
        first = None
        for _ in stream:
            first = first or time.perf_counter() - t0
        return first

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        firsts = list(pool.map(one, range(requests)))
    seconds = time.perf_counter() - start
    return {"requests_per_s": round(requests / seconds, 3), "ttft_s": round(statistics.median(firsts), 3)}


class served:
    """`llmctl serve -m MODEL` in its own process on a free loopback port; stopped with SIGTERM."""

    def __init__(self, model: str, max_batch: int, prefix_cache_mb: float | None = None):
        self.model, self.max_batch = model, max_batch
        self.extra = [] if prefix_cache_mb is None else ["--prefix-cache", str(prefix_cache_mb)]

    def __enter__(self) -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.proc = subprocess.Popen([sys.executable, "-m", "llmctl", "serve", "-m", self.model, "--port", str(port),
                                      "--max-batch", str(self.max_batch), "--max-queue", "64", *self.extra],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                return f"http://127.0.0.1:{port}/v1"
            except OSError:
                if self.proc.poll() is not None:
                    sys.exit(f"llmctl serve exited with {self.proc.returncode}")
                time.sleep(0.5)
        sys.exit("llmctl serve did not come up")

    def __exit__(self, *exc) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def shared_adapters(model: str, count: int) -> dict:
    """Memory of `count` LoRA adapters served on one copy of their base, against the base alone:
    parameter bytes (each tensor once) and the process's resident memory."""
    import tempfile

    import torch
    from peft import LoraConfig, get_peft_model

    from llmctl.loading import load_local
    from llmctl.registry import ModelEntry
    from llmctl.serve.run import open_shared

    base_rss = rss_mib()
    local = load_local(resolve_entry(model), Config())
    one_rss = rss_mib() - base_rss
    one_bytes = sum(p.numel() * p.element_size() for p in local.model.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        entries = {}
        for i in range(count):
            torch.manual_seed(i)
            peft = get_peft_model(local.model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
            peft.save_pretrained(f"{tmp}/a{i}")
            local.model = peft.unload()  # the bare base again for the next adapter
            entries[f"a{i}"] = ModelEntry(f"a{i}", "hf", f"{tmp}/a{i}", base=model, adapter=f"{tmp}/a{i}")
        del local, peft
        before = rss_mib()
        backends = open_shared(entries, Config())
        shared_rss = rss_mib() - before
    seen = {p.data_ptr(): p.numel() * p.element_size() for b in backends.values() for p in b.model.parameters()}
    return {"adapters": count, "one_model_param_mib": round(one_bytes / 2**20, 1),
            "shared_param_mib": round(sum(seen.values()) / 2**20, 1),
            "param_ratio": round(sum(seen.values()) / one_bytes, 3),
            "one_model_rss_mib": round(one_rss, 1), "shared_rss_mib": round(shared_rss, 1),
            "rss_ratio": round(shared_rss / one_rss, 3), "model_copies": len({id(b.model) for b in backends.values()})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--max-batches", default="1,16", help="Server --max-batch values to run, comma-separated.")
    parser.add_argument("--adapters", type=int, default=0, help="Only measure the memory of N adapters on one base.")
    parser.add_argument("--prefix-cache", type=float, default=None, metavar="MB",
                        help="The servers' --prefix-cache (default: theirs; 0 turns it off).")
    args = parser.parse_args()
    if args.adapters:
        print(json.dumps(shared_adapters(args.model, args.adapters), indent=2))
        return
    global MODEL_NAME
    MODEL_NAME = args.model
    backend = open_backend(resolve_entry(args.model), Config())
    in_process(backend, 1, args.max_tokens)  # warm-up, so neither side pays for first-call costs
    before = in_process(backend, args.requests, args.max_tokens)
    runs = {}
    for max_batch in map(int, args.max_batches.split(",")):
        with served(args.model, max_batch, args.prefix_cache) as url:
            over_http(url, 1, 1, args.max_tokens)  # warm-up
            for clients in (1, 4, 16):
                runs[f"http_batch{max_batch}_{clients}_clients"] = over_http(url, clients, args.requests, args.max_tokens)
    after = in_process(backend, args.requests, args.max_tokens)
    baseline = (before["requests_per_s"] + after["requests_per_s"]) / 2  # the machine may drift during the run
    report = {"in_process": {"before": before, "after": after, "requests_per_s": round(baseline, 3)}}
    for name, result in runs.items():
        report[name] = dict(result, throughput_ratio=round(result["requests_per_s"] / baseline, 3))
    one, sixteen = report["http_batch16_1_clients"], report["http_batch16_16_clients"]
    report["ttft_16_over_1_client"] = round(sixteen["ttft_s"] / one["ttft_s"], 3)
    report["constrained"] = constrained_vs_free(backend, 4, 48)
    print(json.dumps(report, indent=2))
    print("requests/s over HTTP relative to in-process: "
          + ", ".join(f"{k}: {v['throughput_ratio']}" for k, v in report.items() if k.startswith("http_")), file=sys.stderr)


if __name__ == "__main__":
    main()
