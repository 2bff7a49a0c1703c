"""The end of every eval command: check the gates on the run's metrics, save the verdicts with the run, and
write the CI reports (JUnit XML, GitHub step summary). The caller shows the result, then `raise_if_failed`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmctl.evaluate.gates import GateResult, GateSpec, check_known, evaluate_gates, parse_gates, run_metrics
from llmctl.evaluate.reports import Case, append_step_summary, check_report_path, gate_cases, write_junit


@dataclass
class CIOptions:
    """What a command was asked to check and report, parsed and checked before any work is done."""

    gates: GateSpec = field(default_factory=lambda: GateSpec([]))
    junit: Path | None = None

    @classmethod
    def parse(cls, fail_under: list[str] | None = None, fail_over: list[str] | None = None,
              baseline: str | None = None, max_drop: list[str] | None = None,
              junit: Path | None = None) -> "CIOptions":
        check_report_path(junit)
        return cls(parse_gates(fail_under, fail_over, baseline, max_drop), junit)

    def check_metrics_known(self, names: list[str], what: str) -> None:
        """For commands that know their metric names up front: a typo fails before the run."""
        check_known(self.gates, names, what)


def conclude(run, options: CIOptions, cases: list[Case] | None = None,
             metrics: dict[str, Any] | None = None) -> list[GateResult]:
    """Gate verdicts on the run's metrics, saved in its summary (`metrics`, `gates`), and the reports written."""
    from llmctl.evaluate.runs import save_summary

    metrics = run_metrics(run.summary) if metrics is None else metrics
    what = f"eval {run.kind}"
    results = evaluate_gates(options.gates, metrics, what) if not options.gates.empty else []
    run.summary.update(metrics=metrics, gates=[r.to_dict() for r in results])
    save_summary(run)
    if options.junit:
        write_junit(options.junit, f"llmctl {what} ({', '.join(run.summary.get('models') or []) or run.id})",
                    (cases or []) + gate_cases(results))
    append_step_summary(f"llmctl {what}: {', '.join(run.summary.get('models') or [])} ({run.id})", metrics, results)
    return results
