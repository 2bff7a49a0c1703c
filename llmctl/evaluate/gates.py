"""Gates that turn an eval into a CI check: bounds on a run's metrics (`--fail-under`, `--fail-over`) and
the largest drop allowed against a saved baseline run (`--baseline RUN --max-drop`).

Every run kind names its figures as flat metrics (see `run_metrics`): `exact_match`, `perplexity`, a judge
criterion's mean, `win_rate:MODEL`, `acc:TASK`, `agreement`... A failed gate raises GateFailed (exit code 6)
after the run is saved, so a CI job fails and the run can still be inspected or used as the next baseline.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from llmctl.errors import EXIT_GATE, LlmctlError, UsageError

# Metrics where a smaller value is better: a "drop" in quality is a rise in these.
LOWER_IS_BETTER = ("loss", "perplexity", "bits_per_char", "bits_per_byte", "max_logit_diff", "mean_logit_diff")


class GateFailed(LlmctlError):
    """One or more gates failed; the message names each metric, its value and its bound."""

    exit_code = EXIT_GATE


@dataclass
class Gate:
    kind: str  # "fail-under", "fail-over" or "max-drop"
    metric: str
    bound: float

    @property
    def label(self) -> str:
        return f"--{self.kind} {self.metric}={self.bound:g}"


@dataclass
class GateResult:
    gate: str  # the flag as given, e.g. "--fail-under exact_match=0.6"
    kind: str
    metric: str
    value: float | None
    bound: float
    baseline: float | None
    passed: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lower_is_better(metric: str) -> bool:
    return metric.split(":", 1)[0] in LOWER_IS_BETTER


def parse_gate(kind: str, text: str) -> Gate:
    """`METRIC=VALUE` (the metric may hold ':' as in `win_rate:MODEL`); one clear line when it is malformed."""
    metric, sep, value = text.rpartition("=")
    if not sep or not metric.strip():
        raise UsageError(f"--{kind} {text!r}: expected METRIC=VALUE", hint=f"e.g. --{kind} exact_match=0.6")
    try:
        bound = float(value)
    except ValueError:
        raise UsageError(f"--{kind} {text!r}: the bound {value!r} is not a number") from None
    if not math.isfinite(bound) or (kind == "max-drop" and bound < 0):
        raise UsageError(f"--{kind} {text!r}: the bound must be a finite number" +
                         (" of at least 0" if kind == "max-drop" else ""))
    return Gate(kind, metric.strip(), bound)


@dataclass
class GateSpec:
    """The gates one command was given, parsed before any work is done."""

    gates: list[Gate]
    baseline: str | None = None

    @property
    def empty(self) -> bool:
        return not self.gates


def parse_gates(fail_under: list[str] | None, fail_over: list[str] | None, baseline: str | None = None,
                max_drop: list[str] | None = None) -> GateSpec:
    gates = [parse_gate("fail-under", t) for t in fail_under or []]
    gates += [parse_gate("fail-over", t) for t in fail_over or []]
    drops = [parse_gate("max-drop", t) for t in max_drop or []]
    if drops and not baseline:
        raise UsageError("--max-drop needs --baseline RUN (the saved run to compare against)")
    if baseline and not drops:
        raise UsageError("--baseline needs at least one --max-drop METRIC=DELTA")
    if baseline:
        from llmctl.evaluate.runs import find_run_dir

        find_run_dir(baseline)  # a missing baseline fails before the run, not after it
    return GateSpec(gates + drops, baseline)


def check_known(spec: GateSpec, metrics: list[str], what: str) -> None:
    """A usage error for a gate on a metric this run does not measure, listing those it does."""
    unknown = sorted({g.metric for g in spec.gates} - set(metrics))
    if unknown:
        listed = ", ".join(metrics) if metrics else "none (it measures nothing to gate on)"
        raise UsageError(f"unknown metric {', '.join(unknown)} for {what}; its metrics are: {listed}")


def baseline_metrics(ref: str) -> tuple[str, dict[str, float]]:
    from llmctl.evaluate.runs import load_run

    run = load_run(ref)
    return run.id, run_metrics(run.summary)


def evaluate_gates(spec: GateSpec, metrics: dict[str, float | None], what: str) -> list[GateResult]:
    """Every gate's verdict on these metrics (a metric measured as None, e.g. no judged answers, fails)."""
    check_known(spec, list(metrics), what)
    base_id, base = baseline_metrics(spec.baseline) if spec.baseline else ("", {})
    missing = [g.metric for g in spec.gates if g.kind == "max-drop" and base.get(g.metric) is None]
    if missing:
        raise UsageError(f"the baseline run {base_id} did not measure {', '.join(sorted(set(missing)))}",
                         hint="its metrics are: " + (", ".join(k for k, v in base.items() if v is not None) or "none"))
    return [check_gate(g, metrics[g.metric], base.get(g.metric), base_id) for g in spec.gates]


def check_gate(gate: Gate, value: float | None, baseline: float | None, base_id: str) -> GateResult:
    def result(passed: bool, message: str, bound: float = gate.bound) -> GateResult:
        return GateResult(gate.label, gate.kind, gate.metric, value, bound, baseline, passed, message)

    if value is None:
        return result(False, f"{gate.metric} was not measured (no usable results)")
    if gate.kind == "fail-under":
        return result(value >= gate.bound, f"{gate.metric} = {value:g}, must be at least {gate.bound:g}")
    if gate.kind == "fail-over":
        return result(value <= gate.bound, f"{gate.metric} = {value:g}, must be at most {gate.bound:g}")
    drop = (value - baseline) if lower_is_better(gate.metric) else (baseline - value)
    limit = baseline + gate.bound if lower_is_better(gate.metric) else baseline - gate.bound
    word = "at most" if lower_is_better(gate.metric) else "at least"
    # Compared with a little slack: 0.7 - 0.1 is 0.5999999999999999 in floating point.
    return result(drop <= gate.bound + 1e-9, f"{gate.metric} = {value:g}, baseline {baseline:g} ({base_id}): "
                                             f"must be {word} {limit:g} (a drop of {drop:g}, "
                                             f"{gate.bound:g} allowed)", round(limit, 10))


def raise_if_failed(results: list[GateResult]) -> None:
    failed = [r for r in results if not r.passed]
    if failed:
        raise GateFailed(f"{len(failed)} of {len(results)} gates failed: " + "; ".join(r.message for r in failed))


# -- the metrics of each kind of run -------------------------------------------------------------------

def run_metrics(summary: dict[str, Any]) -> dict[str, float | None]:
    """A saved run's figures as flat metrics, the names gates and baselines use."""
    if isinstance(summary.get("metrics"), dict):
        return dict(summary["metrics"])
    kind = summary.get("kind")
    if kind == "judge":
        return judge_metrics(summary)
    if kind == "compare":
        return compare_metrics(summary)
    return {}


def judge_metrics(summary: dict[str, Any]) -> dict[str, float | None]:
    """A judge run: each criterion's mean score (1-10); scored by hand (`--human`), the person's means."""
    human = summary.get("human") if summary.get("judge") == "human" else None
    scores = human if isinstance(human, dict) and "models" not in human else summary.get("scores") or {}
    return {name: figures.get("mean") for name, figures in scores.items()}


def compare_metrics(summary: dict[str, Any]) -> dict[str, float | None]:
    """A judged compare run: `win_rate:MODEL` for every model, and `win_rate` for the last model given
    (the candidate, by convention `-m baseline -m candidate`)."""
    per_model = (summary.get("results") or {}).get("models") or {}
    if not per_model:
        return {}
    metrics = {f"win_rate:{m}": per_model[m].get("win_rate") for m in summary.get("models", []) if m in per_model}
    metrics["win_rate"] = per_model.get(summary["models"][-1], {}).get("win_rate")
    return metrics


def compare_metric_names(models: list[str]) -> list[str]:
    return ["win_rate"] + [f"win_rate:{m}" for m in models]
