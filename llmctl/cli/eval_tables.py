"""How `llmctl eval` shows its results: progress bars, score and win-rate tables, saved runs, metrics and gates."""

from __future__ import annotations

from typing import Optional

from rich.markup import escape

from llmctl.cli.output import err, out


def render_gates(results) -> None:
    for r in results:
        mark = "[green]pass[/]" if r.passed else "[bold red]FAIL[/]"
        out.print(f"gate {escape(r.gate)}: {mark} · {escape(r.message)}")


class StageProgress:
    """One progress bar per stage (answering, judging) on stderr: count, elapsed, ETA."""

    def __init__(self, enabled: bool = True):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err,
                                 disable=not enabled)
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> "StageProgress":
        return self  # started on the first update: an early error prints no empty display

    def __exit__(self, *exc) -> None:
        if self.tasks:
            self.progress.stop()

    def update(self, stage: str, done: int, total: int) -> None:
        if not self.tasks:
            self.progress.start()
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total)
        self.progress.update(self.tasks[stage], completed=done, total=total)


def clip(text: Optional[str], width: int) -> str:
    if text is None:
        return "[red](failed)[/]"
    flat = " ".join(text.split())
    return escape(flat if len(flat) <= width else flat[: width - 1] + "…")


def fmt(value, digits: int = 2) -> str:
    return "-" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))


def scores_table(figures: dict, title: str):
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for column in ("criterion", "mean", "spread", "min", "max", "judged", "failed"):
        table.add_column(column, justify="left" if column == "criterion" else "right")
    for name, f in figures.items():
        table.add_row(name, fmt(f["mean"]), fmt(f["std"]), fmt(f["min"]), fmt(f["max"]), str(f["judged"]),
                      str(f["failed"]))
    return table


def wins_table(results: dict, title: str):
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for column in ("model", "wins", "losses", "ties", "failed", "win rate"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for model, f in results["models"].items():
        rate = "-" if f["win_rate"] is None else f"{f['win_rate']:.1%}"
        table.add_row(escape(model), str(f["wins"]), str(f["losses"]), str(f["ties"]), str(f["failed"]), rate)
    return table


def answers_table(run, width: int):
    """Judge runs: prompt, answer, scores; compare runs: the prompt, then each model's answer side by side."""
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False, show_lines=True)
    table.add_column("prompt", overflow="fold", max_width=width)
    if run.kind == "compare":
        for model in run.summary.get("models", []):
            table.add_column(escape(model), overflow="fold")
        for row in run.rows:
            table.add_row(clip(row["prompt"], width), *(clip(row["answers"].get(m), 3 * width)
                                                         for m in run.summary.get("models", [])))
        return table
    table.add_column("answer", overflow="fold")
    table.add_column("scores", overflow="fold")
    for row in run.rows:
        scores = " ".join(f"{k} {v}" for k, v in (row.get("scores") or {}).items()) or escape(row.get("error") or "")
        if row.get("human_scores"):
            scores += " · human: " + " ".join(f"{k} {v}" for k, v in row["human_scores"].items())
        table.add_row(clip(row["prompt"], width), clip(row["answer"], 3 * width), scores)
    return table


JUDGED_KINDS = ("judge", "compare")  # runs with prompt/answer rows; the others (exact, perplexity, harness,
# lineage) are shown by their metrics


def metrics_table(metrics: dict):
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(escape(name), fmt(value, 4))
    return table


def render_run(run, with_rows: bool, with_gates: bool = False) -> None:
    s = run.summary
    judged = run.kind in JUDGED_KINDS
    if with_rows and run.rows and judged:
        out.print(answers_table(run, 40))
    models = ", ".join(s.get("models") or []) or "-"
    if judged:
        out.print(f"[bold]{escape(run.id)}[/] · {s.get('kind')} · models {escape(models)} · judge "
                  f"{escape(str(s.get('judge') or '-'))} · {s.get('judge_prompt_version') or '-'} · {s.get('status', '?')}")
    else:
        out.print(f"[bold]{escape(run.id)}[/] · {s.get('kind')} · models {escape(models)} · {s.get('status', '?')}")
        out.print(metrics_table(s.get("metrics") or {}))
    for gate in s.get("gates") or [] if with_gates else []:
        mark = "[green]pass[/]" if gate["passed"] else "[bold red]FAIL[/]"
        out.print(f"gate {escape(gate['gate'])}: {mark} · {escape(gate['message'])}")
    if s.get("scores") and s.get("judge") != "human":
        out.print(scores_table(s["scores"], f"judge {s.get('judge')}"))
    if s.get("results"):
        out.print(wins_table(s["results"], f"judge {s.get('judge')} (both orders must agree for a win)"))
    human = s.get("human")
    if human:
        out.print(wins_table(human, "human") if "models" in human else scores_table(human, "human"))
    out.print(f"[dim]saved in {escape(str(run.directory))}[/]")
