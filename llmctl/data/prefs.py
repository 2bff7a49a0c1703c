"""Preference pairs for DPO (`llmctl data prefs`): chosen and rejected answers from saved eval runs: judge runs
(higher mean score wins), compare runs (the judged winner), or a person's choices made with `--human`."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path
from typing import Any

from llmctl.errors import UsageError
from llmctl.evaluate.runs import Run, load_run, mean_score
from llmctl.fsutil import atomic_write_text
from llmctl.jsonl import jsonl_line

SOURCES = ("auto", "judge", "human")  # auto: a person's verdict where there is one, else the judge's


def prompt_fields(row: dict[str, Any]) -> dict[str, Any]:
    """`prompt` as text (a list of chat messages when the prompt had earlier turns) and optional `system`."""
    messages = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
    system = next((m["content"] for m in messages if m["role"] == "system"), None)
    turns = [m for m in messages if m["role"] != "system"]
    fields: dict[str, Any] = {"prompt": turns[0]["content"] if len(turns) == 1 else turns}
    if system:
        fields["system"] = system
    return fields


def row_scores(run: Run, row: dict[str, Any], source: str) -> tuple[dict | None, str | None]:
    """The scores to rank this answer by, and who gave them."""
    if source != "judge" and row.get("human_scores"):
        return row["human_scores"], "human"
    if source == "human" or row.get("error") or not row.get("scores"):
        return None, None
    return row["scores"], run.summary.get("judge")


def pairs_from_judge_runs(runs: list[Run], source: str, min_margin: float, counts: Counter) -> list[dict]:
    """Answers to the same prompt (in one run or several) ranked by mean score: every pair with a clear
    difference becomes a preference; equal means are ties, skipped."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        for row in run.rows:
            scores, by = row_scores(run, row, source)
            mean = mean_score(scores)
            if not (row.get("answer") or "").strip() or mean is None:  # DPO training refuses empty answers
                counts["failures_skipped"] += 1
                continue
            key = json.dumps(row.get("messages") or row["prompt"], sort_keys=True)
            groups[key].append({"run": run, "row": row, "mean": mean, "by": by})
    pairs = []
    for group in groups.values():
        if len(group) < 2:
            counts["unpaired_prompts"] += 1
        for x, y in combinations(group, 2):
            better, worse = (x, y) if x["mean"] >= y["mean"] else (y, x)
            margin = better["mean"] - worse["mean"]
            if margin == 0 or better["row"]["answer"].strip() == worse["row"]["answer"].strip():
                counts["ties_skipped"] += 1
            elif margin < min_margin:
                counts["below_margin_skipped"] += 1
            else:
                source_doc = {"kind": "judge", "runs": sorted({better["run"].id, worse["run"].id}),
                              "prompt_id": better["row"].get("id"), "chosen_model": better["row"].get("model"),
                              "rejected_model": worse["row"].get("model"),
                              "judge": better["by"] if better["by"] == worse["by"] else [better["by"], worse["by"]],
                              "judge_prompt_version": better["run"].summary.get("judge_prompt_version"),
                              "scores": {"chosen": round(better["mean"], 4), "rejected": round(worse["mean"], 4)}}
                pairs.append({**prompt_fields(better["row"]), "chosen": better["row"]["answer"],
                              "rejected": worse["row"]["answer"], "source": source_doc})
    return pairs


def verdicts_to_use(row: dict[str, Any], source: str) -> list[tuple[dict, str]]:
    """(verdict, who gave it) for each pair of models: a person's where allowed and present, else the judge's."""
    human = {(v["a"], v["b"]): v for v in row.get("human_verdicts", [])} if source != "judge" else {}
    chosen = [(v, "human") for v in human.values()]
    if source != "human":
        chosen += [(v, "judge") for v in row.get("verdicts", []) if (v["a"], v["b"]) not in human]
    return chosen


def pairs_from_compare_run(run: Run, source: str, counts: Counter) -> list[dict]:
    pairs = []
    for row in run.rows:
        for verdict, by in verdicts_to_use(row, source):
            winner = verdict.get("winner")
            if winner is None:
                counts["failures_skipped"] += 1
                continue
            if winner == "tie":
                counts["ties_skipped"] += 1
                continue
            loser = verdict["b"] if winner == verdict["a"] else verdict["a"]
            chosen, rejected = (row["answers"].get(m) or "" for m in (winner, loser))
            if not chosen.strip() or not rejected.strip():
                counts["failures_skipped"] += 1
                continue
            if chosen.strip() == rejected.strip():  # the same text: nothing to prefer
                counts["ties_skipped"] += 1
                continue
            source_doc = {"kind": "compare", "runs": [run.id], "prompt_id": row.get("id"), "chosen_model": winner,
                          "rejected_model": loser, "judge": "human" if by == "human" else run.summary.get("judge"),
                          "judge_prompt_version": None if by == "human" else run.summary.get("judge_prompt_version")}
            pairs.append({**prompt_fields(row), "chosen": chosen, "rejected": rejected, "source": source_doc})
    return pairs


def build_prefs(run_refs: list[str], out: Path, min_margin: float = 0.0, source: str = "auto") -> dict[str, Any]:
    """Write the preference file (JSONL: prompt, chosen, rejected, optional system, source) atomically and
    return what was written and skipped."""
    if source not in SOURCES:
        raise UsageError(f"--source must be one of {', '.join(SOURCES)}, not '{source}'")
    if min_margin < 0:
        raise UsageError("--min-margin must be 0 or more")
    if not run_refs:
        raise UsageError("no runs given", hint="llmctl data prefs RUN [RUN ...] --out prefs.jsonl (see llmctl eval list)")
    runs = list({run.id: run for run in map(load_run, run_refs)}.values())  # a run named twice counts once
    counts: Counter = Counter()
    judge_runs = [r for r in runs if r.kind == "judge"]
    pairs = pairs_from_judge_runs(judge_runs, source, min_margin, counts) if judge_runs else []
    for run in runs:
        if run.kind == "compare":
            pairs += pairs_from_compare_run(run, source, counts)
    unique, seen = [], set()
    for pair in pairs:  # the same preference found twice (e.g. a run given twice) is written once
        key = json.dumps([pair["prompt"], pair.get("system"), pair["chosen"], pair["rejected"]])
        counts["duplicates_skipped"] += key in seen
        if key not in seen:
            seen.add(key)
            unique.append(pair)
    out = Path(out)
    try:
        atomic_write_text(out, "".join(jsonl_line(p) for p in unique))
    except OSError as e:
        raise UsageError(f"cannot write {out}: {e}") from None
    return {"out": str(out), "runs": [r.id for r in runs], "pairs": len(unique),
            **{k: counts[k] for k in ("ties_skipped", "below_margin_skipped", "failures_skipped",
                                      "unpaired_prompts", "duplicates_skipped")}}
