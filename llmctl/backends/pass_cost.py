"""What one forward pass costs on this model and device, learnt from the passes the server runs.

A pass over n token positions takes about `fixed + per_position * n` seconds: `fixed` is reading every
weight once and launching every layer's kernels, whatever n is; `per_position` is the arithmetic. Their
ratio decides two things when many prompts arrive at once:

- How to prefill them. Rows get their first token when their pass ends, so one big pass makes
  everybody wait for all the arithmetic, and many small ones repeat `fixed` each. With passes of
  s_1..s_g positions, the j-th ends at j * fixed + per_position * (s_1 + ... + s_j); the total wait of
  the positions in them is least when each pass is `fixed / per_position` positions smaller than the
  one before (equal marginal cost), and `split` tries every g with such sizes and keeps the best. On a
  GPU `per_position` is tiny next to `fixed` until thousands of positions, so one pass wins; on a CPU,
  where prefill is compute-bound from a few dozen positions, it is not: on 2 cores 15 prompts of ~8 new
  tokens each went in passes of ~10 and ~5 rows, the first ten seeing their first token ~25% sooner
  than in one pass and the last five ~20% later.
- Whether computing a beginning several new prompts share in a pass of its own pays: it must save more
  positions than that pass's `fixed` is worth.

The fit is least squares over the most recent passes (decode steps give small n, prefills large ones);
until their sizes differ enough to tell the two terms apart there is no estimate, and callers do what
they would without one: everything in one pass.
"""

from __future__ import annotations

import math
import threading
from collections import deque

WINDOW = 64  # recent passes the fit uses: the machine's load changes, old passes stop saying much
MIN_SPREAD = 2.0  # the largest pass in the window must be this many times the smallest to fit two terms


class PassCost:
    def __init__(self) -> None:
        self.samples: deque[tuple[int, float]] = deque(maxlen=WINDOW)
        self.lock = threading.Lock()  # recorded by the batcher's thread, read by /health

    def record(self, positions: int, seconds: float) -> None:
        with self.lock:
            self.samples.append((positions, seconds))

    def fit(self) -> tuple[float, float] | None:
        """(fixed seconds, seconds per position), or None while the passes seen cannot tell them apart."""
        with self.lock:
            samples = list(self.samples)
        if len(samples) < 4:
            return None
        xs = [float(n) for n, _ in samples]
        if max(xs) < MIN_SPREAD * min(xs):
            return None
        mean_x, mean_y = sum(xs) / len(xs), sum(t for _, t in samples) / len(samples)
        sxx = sum((x - mean_x) ** 2 for x in xs)
        slope = sum((x - mean_x) * (t - mean_y) for x, (_, t) in zip(xs, samples)) / sxx
        fixed = mean_y - slope * mean_x
        if slope <= 0 or fixed <= 0:  # noise (a busy machine) made a line that means nothing
            return None
        return fixed, slope

    def split(self, positions: int) -> list[float]:
        """The sizes, in positions, of the passes to prefill `positions` in for the least total wait
        (see the module's docstring); [positions] (one pass) without an estimate."""
        fit = self.fit()
        if fit is None or positions <= 0:
            return [float(positions)]
        fixed, per_position = fit
        step = fixed / per_position
        best, best_wait = [float(positions)], math.inf
        for count in range(1, positions + 1):
            sizes = [positions / count + step * ((count + 1) / 2 - j) for j in range(1, count + 1)]
            if sizes[-1] <= 0:
                break  # more passes would need one of fewer than no positions
            ends, wait, done = 0.0, 0.0, 0.0
            for j, size in enumerate(sizes, start=1):
                done += size
                ends = j * fixed + per_position * done
                wait += size * ends
            if wait < best_wait:
                best, best_wait = sizes, wait
        return best

    def positions_worth_a_pass(self) -> float | None:
        """How many positions a pass of its own must save to pay for its fixed cost (None: unknown)."""
        fit = self.fit()
        return None if fit is None else fit[0] / fit[1]

    def summary(self) -> dict[str, float] | None:
        fit = self.fit()
        return None if fit is None else {"fixed_ms": round(fit[0] * 1e3, 2), "per_position_ms": round(fit[1] * 1e3, 3)}
