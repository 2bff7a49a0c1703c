"""The human as a judge: a terminal walk-through that scores answers 1-10 per criterion (judge runs) or picks
the better of two answers shown in a seeded random order (compare runs). Each answer is saved at once."""

from __future__ import annotations

import random
import sys
from itertools import combinations
from typing import Any, Callable

from rich.markup import escape
from rich.panel import Panel

from llmctl.evaluate.compare import tally
from llmctl.evaluate.runs import Run, save_rows, save_summary, summarize_scores

Reader = Callable[[], str]
Shower = Callable[..., None]  # rich Console.print-like: a renderable, and end=


class Quit(Exception):
    """The person typed q (or the input ended): stop, keeping everything already answered."""


def ask(read: Reader, show: Shower, question: str, valid: Callable[[str], bool]) -> str:
    while True:
        show(f"[bold]{question}[/]", end=" ")
        line = read()
        if line == "":  # end of input: as good as q
            raise Quit
        answer = line.strip().lower()
        if answer == "q":
            raise Quit
        if valid(answer):
            return answer
        show("[red]not one of the choices, try again[/]")


def is_score(text: str) -> bool:
    return text == "" or (text.isdigit() and 1 <= int(text) <= 10)


def score_answers(run: Run, read: Reader, show: Shower) -> None:
    """Judge runs: a 1-10 score per criterion for each answer not yet scored by hand."""
    names = [c["name"] for c in run.summary.get("rubric", [])]
    todo = [r for r in run.rows if r.get("answer") is not None and not r.get("human_scores")]
    for number, row in enumerate(todo, 1):
        reference = f"\n\n[dim]reference:[/] {escape(row['reference'])}" if row.get("reference") else ""
        show(Panel(f"{escape(row['prompt'])}{reference}", title=f"prompt {number}/{len(todo)} (id {row['id']})"))
        show(Panel(escape(row["answer"]), title=f"answer from {escape(str(row.get('model')))}"))
        scores: dict[str, int] = {}
        try:
            for name in names:
                answer = ask(read, show, f"{name} (1-10, Enter skips, q quits):", is_score)
                if answer:
                    scores[name] = int(answer)
        finally:  # also on q: the criteria already scored for this answer are kept
            if scores:
                row["human_scores"] = scores
                save_rows(run)


def choose_better(run: Run, read: Reader, show: Shower, seed: int = 0) -> None:
    """Compare runs: for each pair of answers to a prompt, which is better (shown as 1 and 2 in an order drawn
    from `seed`, so a person's habit of picking the first one cancels out too)."""
    models = list(run.summary.get("models") or [])
    for row in run.rows:
        judged = {(v["a"], v["b"]) for v in row.get("human_verdicts", [])}
        for a, b in combinations(models, 2):
            if (a, b) in judged or row["answers"].get(a) is None or row["answers"].get(b) is None:
                continue
            first, second = (b, a) if random.Random(f"{seed}:{row['index']}:{a}:{b}").random() < 0.5 else (a, b)
            show(Panel(escape(row["prompt"]), title=f"prompt {row['index'] + 1}/{len(run.rows)} (id {row['id']})"))
            show(Panel(escape(row["answers"][first]), title="answer 1"))
            show(Panel(escape(row["answers"][second]), title="answer 2"))
            choice = ask(read, show, "Which is better? 1, 2, t = tie, s = skip, q = quit:",
                         lambda x: x in ("1", "2", "t", "s"))
            if choice == "s":
                continue
            winner = {"1": first, "2": second, "t": "tie"}[choice]
            row.setdefault("human_verdicts", []).append({"a": a, "b": b, "winner": winner, "shown_first": first})
            save_rows(run)


def hand_judged(run: Run) -> int:
    if run.kind == "judge":
        return sum(1 for r in run.rows if r.get("human_scores"))
    return sum(len(r.get("human_verdicts", [])) for r in run.rows)


def judge_by_hand(run: Run, read: Reader | None = None, show: Shower | None = None, seed: int = 0) -> dict[str, Any]:
    """Walk a person through a saved run (resuming where they stopped); the human figures go into its summary."""
    from rich.console import Console

    read = read or sys.stdin.readline  # looked up now: tests and pipes replace sys.stdin
    show = show or Console(stderr=True, highlight=False).print  # the walk-through is talk, not results
    before, stopped = hand_judged(run), False
    try:
        score_answers(run, read, show) if run.kind == "judge" else choose_better(run, read, show, seed)
    except Quit:
        stopped = True
        show("[dim]stopped: everything scored so far is saved; `llmctl eval show RUN --human` goes on[/]")
    if run.kind == "judge":
        names = [c["name"] for c in run.summary.get("rubric", [])]
        run.summary["human"] = summarize_scores(run.rows, names, "human_scores")
    else:
        run.summary["human"] = tally(run.rows, list(run.summary.get("models") or []), "human_verdicts")
    save_summary(run)
    after = hand_judged(run)
    return {"run": run.id, "judged_by_hand": after, "this_session": after - before, "stopped": stopped}
