"""Prometheus metrics for `/metrics`, written in the text exposition format (no client library).

Counters by label, gauges read when scraped, and histograms with fixed buckets: enough for request
rates by route and status, tokens in and out, queue depth, batch size, time to first token and the
time between tokens.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from typing import Callable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    escaped = (f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34)).replace(chr(10), " ")}"'
               for k, v in labels)
    return "{" + ",".join(escaped) + "}"


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets, self.counts, self.sum, self.count = buckets, [0] * len(buckets), 0.0, 0

    def observe(self, value: float) -> None:
        at = bisect_left(self.buckets, value)
        if at < len(self.counts):
            self.counts[at] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, n in zip(self.buckets, self.counts):
            running += n
            out.append(f'{name}_bucket{{le="{bound}"}} {running}')
        out += [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.sum}", f"{name}_count {self.count}"]
        return out


class Metrics:
    """What the server counts; `render()` is the body of GET /metrics."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple, int] = {}
        self.tokens = {"prompt": 0, "completion": 0, "cached_prompt": 0}
        self.histograms = {"llmctl_time_to_first_token_seconds": Histogram(LATENCY_BUCKETS),
                           "llmctl_time_per_output_token_seconds": Histogram(LATENCY_BUCKETS),
                           "llmctl_batch_size": Histogram(BATCH_BUCKETS)}
        self.gauges: dict[str, Callable[[], dict[str, float]]] = {}

    def request(self, route: str, status: int) -> None:
        with self.lock:
            key = (("route", route), ("status", str(status)))
            self.requests[key] = self.requests.get(key, 0) + 1

    def usage(self, prompt: int, completion: int, cached: int = 0) -> None:
        with self.lock:
            self.tokens["prompt"] += prompt
            self.tokens["completion"] += completion
            self.tokens["cached_prompt"] += cached  # prompt tokens read from the prefix cache, not computed

    def observe(self, name: str, value: float) -> None:
        with self.lock:
            self.histograms[{"ttft": "llmctl_time_to_first_token_seconds",
                             "per_token": "llmctl_time_per_output_token_seconds",
                             "batch_size": "llmctl_batch_size"}[name]].observe(value)

    def render(self) -> str:
        with self.lock:
            out = ["# HELP llmctl_requests_total HTTP requests answered, by route and status.",
                   "# TYPE llmctl_requests_total counter"]
            out += [f"llmctl_requests_total{_labels(k)} {v}" for k, v in sorted(self.requests.items())]
            out += ["# HELP llmctl_tokens_total Tokens read (prompt; cached_prompt: of those, read from the prefix"
                    " cache) and generated (completion).",
                    "# TYPE llmctl_tokens_total counter"]
            out += [f'llmctl_tokens_total{{kind="{k}"}} {v}' for k, v in self.tokens.items()]
            for name, read in self.gauges.items():
                out += [f"# TYPE {name} gauge"]
                out += [f"{name}{_labels((('model', model),))} {value}" for model, value in read().items()]
            for name, histogram in self.histograms.items():
                out += [f"# TYPE {name} histogram", *histogram.lines(name)]
        return "\n".join(out) + "\n"
