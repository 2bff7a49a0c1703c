"""`eval compare`: the same prompts through several models side by side, and pairwise judging asked twice
with the answers' positions swapped, so a judge's preference for one position cancels out."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace
from itertools import combinations
from typing import Any, Callable

from llmctl.answering import PromptItem
from llmctl.errors import UsageError
from llmctl.evaluate.judge import (Ask, AnswerSettings, JudgeSettings, JudgmentError, Outcome, Progress,
                                   ask_until_parsed, generate_answers, json_in_reply, request_text, row_messages)

# Saved with every compare run, like JUDGE_PROMPT_VERSION: change the wording only with the version.
PAIRWISE_PROMPT_VERSION = "pairwise-v1"
PAIRWISE_SYSTEM = ("You are an impartial judge comparing two answers written by AI assistants to the same request. "
                   "Decide which answer is better. The order in which the answers are shown and their length must "
                   "not influence you; say tie only when neither is better.")
DEFAULT_FOCUS = "Which answer is better overall: more helpful, more correct and better written?"
VERDICT_WORDS = {"1": "1", "2": "2", "tie": "tie", "draw": "tie", "equal": "tie", "both": "tie", "neither": "tie"}
BRACKETED = re.compile(r"\[\[\s*(1|2|tie)\s*\]\]", re.IGNORECASE)
VERDICT_LINE = re.compile(r"(?im)^\W*(?:winner|better answer|verdict|better)\W*\s*[:=]\s*\**\s*(?:answer\s*)?"
                          r"(1|2|tie|draw|equal)\b")


def pairwise_prompt(request: str, first: str, second: str, criteria) -> str:
    focus = "\n".join(f"- {c.name}: {c.description}" for c in criteria) if criteria else DEFAULT_FOCUS
    return (f"[Request]\n{request}\n\n[Answer 1]\n{first}\n\n[Answer 2]\n{second}\n\n[What matters]\n{focus}\n\n"
            'Reply with only a JSON object: {"winner": "1", "2" or "tie", "reason": "<one short sentence>"}')


def parse_verdict(reply: str) -> dict[str, str]:
    """{"winner": "1" | "2" | "tie", "reason": str} from JSON, `[[1]]`, or a `Winner: 2` line."""
    doc = json_in_reply(reply)
    if isinstance(doc, dict):
        value = next((doc[k] for k in ("winner", "better", "verdict", "choice") if k in doc), None)
        word = re.sub(r"^answer\s*", "", str(value).strip().lower()) if value is not None else ""
        if word in VERDICT_WORDS:
            return {"winner": VERDICT_WORDS[word], "reason": str(doc.get("reason", "")).strip()}
        if value is not None:
            raise JudgmentError(f"the winner must be 1, 2 or tie, not {value!r}")
    match = BRACKETED.search(reply) or VERDICT_LINE.search(reply)
    if match:
        return {"winner": VERDICT_WORDS[match.group(1).lower()], "reason": reply.strip()[:300]}
    raise JudgmentError('no verdict found (expected {"winner": "1", "2" or "tie"})')


def pair_winner(a: str, b: str, a_first: str, b_first: str) -> str:
    """The winner of a against b from the two orders: a win only when both orders agree, otherwise a tie."""
    seen_a_first = {"1": a, "2": b, "tie": "tie"}[a_first]
    seen_b_first = {"1": b, "2": a, "tie": "tie"}[b_first]
    return seen_a_first if seen_a_first == seen_b_first else "tie"


def settle_verdict(verdict: dict[str, Any]) -> None:
    orders = sorted(verdict["orders"], key=lambda o: o["first"] != verdict["a"])  # a-first order first
    verdict["orders"] = orders
    if len(orders) == 2 and all(o["verdict"] for o in orders):
        verdict["winner"] = pair_winner(verdict["a"], verdict["b"], orders[0]["verdict"], orders[1]["verdict"])
    else:
        verdict["error"] = next((o["error"] for o in orders if o["error"]), "not judged")


OUTCOMES = ("wins", "losses", "ties", "failed")  # a model's columns in the win-rate table


def tally(rows: list[dict], models: list[str], key: str = "verdicts") -> dict[str, Any]:
    """Wins, losses, ties, failures and win rate (wins over judged comparisons) per model and per pair."""
    def blank_pair(a: str, b: str) -> dict[str, Any]:
        return {"a": a, "b": b, "a_wins": 0, "b_wins": 0, "ties": 0, "failed": 0}

    per_model = {m: dict.fromkeys(OUTCOMES, 0) for m in models}
    per_pair = {(a, b): blank_pair(a, b) for a, b in combinations(models, 2)}
    for row in rows:
        for v in row.get(key) or []:
            pair = per_pair.setdefault((v["a"], v["b"]), blank_pair(v["a"], v["b"]))
            for m in (v["a"], v["b"]):
                per_model.setdefault(m, dict.fromkeys(OUTCOMES, 0))
            winner = v.get("winner")
            if winner is None:
                outcome = {v["a"]: "failed", v["b"]: "failed"}
                pair["failed"] += 1
            elif winner == "tie":
                outcome = {v["a"]: "ties", v["b"]: "ties"}
                pair["ties"] += 1
            else:
                loser = v["b"] if winner == v["a"] else v["a"]
                outcome = {winner: "wins", loser: "losses"}
                pair["a_wins" if winner == v["a"] else "b_wins"] += 1
            for model, column in outcome.items():
                per_model[model][column] += 1
    for figures in per_model.values():
        games = figures["wins"] + figures["losses"] + figures["ties"]
        figures["win_rate"] = round(figures["wins"] / games, 4) if games else None
    return {"models": per_model, "pairs": list(per_pair.values())}


def compare_rows(items: list[PromptItem], answers: dict[str, list], system: str | None) -> list[dict[str, Any]]:
    rows = []
    for index, item in enumerate(items):
        messages = row_messages(item, system)
        rows.append({"index": index, "id": item.id, "prompt": item.text,
                     "system": next((m["content"] for m in messages if m["role"] == "system"), None),
                     "messages": messages, "answers": {m: got[index][0].text for m, got in answers.items()},
                     "errors": {m: got[index][0].error for m, got in answers.items() if got[index][0].error}})
    return rows


def judge_pairs(backend, rows: list[dict], models: list[str], settings: JudgeSettings, save: Callable[[dict], None],
                on_progress: Progress | None = None) -> None:
    """Every pair of models on every prompt, asked in both orders; a row is saved once all its pairs settle."""
    asks, where = [], []
    for r, row in enumerate(rows):
        row["verdicts"] = []
        for a, b in combinations(models, 2):
            row["verdicts"].append({"a": a, "b": b, "winner": None, "orders": [], "error": None})
            if row["answers"][a] is None or row["answers"][b] is None:
                row["verdicts"][-1]["error"] = "an answer is missing"
                continue
            for first, second in ((a, b), (b, a)):
                text = pairwise_prompt(request_text(row["messages"]), row["answers"][first], row["answers"][second],
                                       settings.criteria)
                asks.append(Ask(PAIRWISE_SYSTEM, text, parse_verdict))
                where.append((r, len(row["verdicts"]) - 1, first, second))
    remaining = Counter(r for r, *_ in where)
    for r, row in enumerate(rows):
        if not remaining[r]:
            save(row)
    settled = 0

    def record(index: int, outcome: Outcome) -> None:
        nonlocal settled
        r, v, first, second = where[index]
        verdict = outcome.value or {}
        rows[r]["verdicts"][v]["orders"].append(
            {"first": first, "second": second, "verdict": verdict.get("winner"), "reason": verdict.get("reason"),
             "raw": outcome.replies, "attempts": outcome.attempts, "error": outcome.error})
        remaining[r] -= 1
        if not remaining[r]:
            for each in rows[r]["verdicts"]:
                if each["error"] is None:
                    settle_verdict(each)
            save(rows[r])
        settled += 1
        if on_progress:
            on_progress(f"judging with {backend.name}", settled, len(asks))

    ask_until_parsed(backend, asks, settings.params(), settings.retries, settings.workers, record)


def run_compare(items: list[PromptItem], models: list[str], judge_ref: str | None, settings: JudgeSettings,
                answering: AnswerSettings, config, save_dir=None, on_progress: Progress | None = None):
    """`llmctl eval compare`: every model answers every prompt; with a judge, pairwise verdicts and win rates."""
    from llmctl.evaluate.runs import Run, record_run, run_settings
    from llmctl.prompting import resolve_entry

    if len(models) < 2 or len(set(models)) != len(models):
        raise UsageError("eval compare needs at least two different models", hint="-m A -m B")
    for model in models:  # an unknown model fails before any work
        resolve_entry(model)
    judge_entry = resolve_entry(judge_ref) if judge_ref else None

    def work(writer, judge_backend) -> list[dict]:
        answers = {m: generate_answers(m, items, replace(answering, samples=1), config, on_progress) for m in models}
        rows = compare_rows(items, answers, answering.system)
        if judge_entry is None:
            for row in rows:
                writer.append(row)
        else:
            judge_pairs(judge_backend(), rows, models, settings, writer.append, on_progress)
        return rows

    summary: dict[str, Any] = {
        "models": models, "judge": judge_ref, "rubric": [c.to_dict() for c in settings.criteria],
        "judge_prompt_version": PAIRWISE_PROMPT_VERSION if judge_ref else None, "prompts": len(items),
        "settings": run_settings(settings, answering)}
    writer, rows = record_run("compare", summary, save_dir, judge_entry, config, work)
    if judge_entry is not None:
        summary["results"] = tally(rows, models)
        writer.write_summary(summary)
    return Run(writer.directory, writer.full_summary(summary), rows)
