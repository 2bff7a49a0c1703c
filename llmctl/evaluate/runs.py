"""Saved eval runs: a directory per run with results.jsonl (a row per prompt or answer, appended as each
finishes) and summary.json (written atomically), for `eval show`, `--human` and `data prefs`."""

from __future__ import annotations

import json
import secrets
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from llmctl.errors import LlmctlError, UsageError
from llmctl.fsutil import atomic_write_json, atomic_write_text, private_dir, private_file
from llmctl.jsonl import append_jsonl, jsonl_line
from llmctl.paths import eval_runs_dir

RESULTS = "results.jsonl"
SUMMARY = "summary.json"


def evals_dir() -> Path:
    return eval_runs_dir()


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id(kind: str) -> str:
    """`judge-20261124-153012-ab12`: sortable by time, unique across runs started the same second."""
    return f"{kind}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


@dataclass
class Run:
    directory: Path
    summary: dict[str, Any]
    rows: list[dict[str, Any]]

    @property
    def id(self) -> str:
        return self.summary.get("id") or self.directory.name

    @property
    def kind(self) -> str:
        return self.summary.get("kind", "")


class RunWriter:
    """Creates a run directory and appends whole rows to its results as they finish, so a killed run keeps
    every finished row; the summary is replaced atomically."""

    def __init__(self, kind: str, save: Path | None = None):
        self.id = new_run_id(kind)
        self.started_ns = time.time_ns()  # orders runs started within the same second ("created" has seconds)
        self.directory = Path(save) if save else evals_dir() / self.id
        if (self.directory / RESULTS).exists():
            raise UsageError(f"--save {self.directory} already holds an eval run", hint="choose another directory")
        try:
            private_dir(self.directory)  # prompts and answers: owner-only, like the log
            private_file(self.directory / RESULTS)
        except OSError as e:
            raise UsageError(f"cannot create the run directory {self.directory}: {e}") from None

    def append(self, row: dict[str, Any]) -> None:
        append_jsonl(self.directory / RESULTS, row)  # a crash can at worst lose the line being written

    def full_summary(self, summary: dict[str, Any]) -> dict[str, Any]:
        """The summary as saved: with the run's id and start (a later save of the Run keeps them)."""
        return {"id": self.id, "started_ns": self.started_ns, **summary}

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.directory / SUMMARY, self.full_summary(summary))


def run_settings(settings: Any, answering: Any) -> dict[str, Any]:
    """The judge and answer settings as saved in a summary (the criteria are saved as the rubric)."""
    return {"answers": vars(answering), "judge": {k: v for k, v in vars(settings).items() if k != "criteria"}}


def record_run(kind: str, summary: dict[str, Any], save_dir, judge_entry, config,
               work: Callable[["RunWriter", Callable[[], Any]], list[dict]]):
    """Create the run, do `work(writer, judge_backend)`, and mark the run failed if it stops on an error.
    A remote judge is opened first, so a missing key fails before any answer is generated; a local one
    is loaded only when asked for, after the answering models are closed, so two never share memory."""
    from llmctl.prompting import open_backend

    from llmctl.providers import capabilities_of

    remote = judge_entry is not None and capabilities_of(judge_entry).remote
    opened = [open_backend(judge_entry, config) if remote else None]

    def judge_backend():
        opened[0] = opened[0] or open_backend(judge_entry, config)
        return opened[0]

    try:
        writer = RunWriter(kind, save_dir)
        summary.update(kind=kind, status="running", created=now_iso())
        writer.write_summary(summary)
        try:
            rows = work(writer, judge_backend)
        except LlmctlError as e:
            writer.write_summary({**summary, "status": "failed", "error": str(e), "finished": now_iso()})
            raise
    finally:
        if opened[0] is not None:
            opened[0].close()
    summary.update(status="complete", finished=now_iso())
    return writer, rows


def measured_run(kind: str, summary: dict[str, Any], save_dir, work: Callable[["RunWriter"], dict[str, Any]],
                 rows: Callable[[], list[dict]]) -> Run:
    """A run whose figures are measured, not judged (`exact`, `perplexity`, `harness`, `lineage`): `work(writer)`
    appends the rows and returns the metrics, saved as the summary's `metrics` (what gates and baselines read)."""
    writer = RunWriter(kind, save_dir)
    summary.update(kind=kind, status="running", created=now_iso())
    writer.write_summary(summary)
    try:
        metrics = work(writer)
    except LlmctlError as e:
        writer.write_summary({**summary, "status": "failed", "error": str(e), "finished": now_iso()})
        raise
    summary.update(metrics=metrics, status="complete", finished=now_iso())
    writer.write_summary(summary)
    return Run(writer.directory, writer.full_summary(summary), [r for r in rows() if r is not None])


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows in prompt order; a last line cut short by a kill is ignored, any other bad line is an error."""
    # Split on "\n" only: splitlines() would also cut at U+2028/U+2029 inside an answer's JSON string.
    lines = path.read_text(encoding="utf-8").rstrip("\n").split("\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise UsageError(f"{path}:{number}: not valid JSON; the run file was edited by hand?") from None
    return sorted(rows, key=lambda r: (r.get("index", 0), r.get("sample", 0)))


def find_run_dir(ref: str | Path) -> Path:
    """A run id under LLMCTL_HOME/evals, or a path to a run directory (or to its results.jsonl)."""
    path = Path(ref).expanduser()
    if path.name == RESULTS:
        path = path.parent
    for candidate in (path, evals_dir() / str(ref)):
        if (candidate / RESULTS).is_file():
            return candidate
    raise UsageError(f"no eval run '{ref}'", hint="`llmctl eval list` shows saved runs; or give a run directory")


def load_run(ref: str | Path) -> Run:
    directory = find_run_dir(ref)
    summary: dict[str, Any] = {}
    if (directory / SUMMARY).is_file():
        try:
            summary = json.loads((directory / SUMMARY).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UsageError(f"{directory / SUMMARY} is not valid JSON ({e})") from None
    rows = read_rows(directory / RESULTS)
    summary.setdefault("id", directory.name)
    summary.setdefault("kind", "compare" if rows and "verdicts" in rows[0] else "judge")
    return Run(directory, summary, rows)


def save_rows(run: Run) -> None:
    """Replace the results with `run.rows` (after human scoring), atomically."""
    atomic_write_text(run.directory / RESULTS, "".join(jsonl_line(r) for r in run.rows))


def save_summary(run: Run) -> None:
    atomic_write_json(run.directory / SUMMARY, run.summary)


def list_runs() -> list[dict[str, Any]]:
    """One line of facts per saved run under LLMCTL_HOME/evals, newest first."""
    runs = []
    root = evals_dir()
    for directory in root.iterdir() if root.is_dir() else []:
        if not (directory / RESULTS).is_file():
            continue
        try:
            summary = json.loads((directory / SUMMARY).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            summary = {"status": "incomplete"}
        runs.append({"id": directory.name, "kind": summary.get("kind", "?"), "models": summary.get("models", []),
                     "judge": summary.get("judge"), "status": summary.get("status", "?"),
                     "created": summary.get("created"), "started_ns": summary.get("started_ns", 0),
                     "path": str(directory)})
    return sorted(runs, key=lambda r: (r["created"] or "", r["started_ns"]), reverse=True)


def summarize_scores(rows: list[dict], names: list[str], field_name: str = "scores") -> dict[str, dict]:
    """Per criterion: mean, spread (population standard deviation), min, max, how many judged and failed."""
    figures = {}
    failed = sum(1 for r in rows if r.get("error")) if field_name == "scores" else 0  # a failed row: every criterion
    for name in names:
        values = [r[field_name][name] for r in rows
                  if isinstance(r.get(field_name), dict) and r[field_name].get(name) is not None]
        figures[name] = {
            "mean": round(statistics.fmean(values), 4) if values else None,
            "std": round(statistics.pstdev(values), 4) if values else None,
            "min": min(values) if values else None, "max": max(values) if values else None,
            "judged": len(values), "failed": failed}
    return figures


def mean_score(scores: dict[str, float] | None) -> float | None:
    values = [v for v in (scores or {}).values() if v is not None]
    return statistics.fmean(values) if values else None
