"""Exact-match and contains accuracy on a question-answer set, with every answer kept for review."""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any

from llmctl.answering import DEFAULT_BATCH_SIZE
from llmctl.errors import UsageError
from llmctl.jsonl import parse_jsonl, read_text

EXACT_METRICS = ("exact_match", "contains")
ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalise(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = ARTICLES.sub(" ", text.lower().translate(str.maketrans("", "", string.punctuation)))
    return " ".join(text.split())


def load_qa(path: Path) -> list[dict[str, Any]]:
    """JSONL rows with `question` and `answer` (a string or a list of accepted strings)."""
    rows = []
    for number, row in parse_jsonl(path, read_text(path, f"--data {path}: no such file")):
        answers = row.get("answer") if isinstance(row, dict) else None
        answers = [answers] if isinstance(answers, str) else answers
        if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not answers \
                or not all(isinstance(a, str) for a in answers):
            raise UsageError(f"{path}:{number}: needs 'question' (string) and 'answer' (string or list of strings)")
        rows.append({"question": row["question"], "answers": answers})
    if not rows:
        raise UsageError(f"{path} has no questions")
    return rows


def score_answer(row: dict[str, Any], answer) -> dict[str, Any]:
    """A question's row with the answer and its verdicts (a failed request counts as wrong)."""
    got = normalise(answer.text or "")
    accepted = [normalise(a) for a in row["answers"]]
    return {**row, "response": answer.text or "", "exact": answer.text is not None and got in accepted,
            "contains": answer.text is not None and any(a and a in got for a in accepted),
            **({"error": answer.error} if answer.text is None else {})}


def exact_match(model_ref: str, data: Path, max_tokens: int = 32, system: str | None = None, config=None,
                on_answer=None, batch_size: int = DEFAULT_BATCH_SIZE, save_dir: Path | None = None):
    """`llmctl eval exact`: greedy answers (a local model decodes `batch_size` questions together), scored
    and saved as an eval run (a row per question), so a later run can gate against it as a baseline."""
    from llmctl.answering import answer_all
    from llmctl.backends.base import GenerationRequest, Message, SamplingParams
    from llmctl.config import Config
    from llmctl.evaluate.runs import measured_run
    from llmctl.prompting import open_backend, resolve_entry

    rows = load_qa(data)
    entry = resolve_entry(model_ref)
    requests = [GenerationRequest(([Message("system", system)] if system else []) + [Message("user", r["question"])],
                                  SamplingParams(temperature=0, max_tokens=max_tokens)) for r in rows]
    results: list[dict[str, Any] | None] = [None] * len(rows)

    def work(writer) -> dict[str, Any]:
        backend = open_backend(entry, config or Config())
        try:
            def keep(index: int, answer) -> None:
                results[index] = {"index": index, **score_answer(rows[index], answer)}
                writer.append(results[index])
                if on_answer:
                    on_answer(results[index])

            answer_all(backend, requests, on_answer=keep, fail_fast=True, batch_size=batch_size)
        finally:
            backend.close()
        n = len(results)
        return {"exact_match": round(sum(r["exact"] for r in results) / n, 4),
                "contains": round(sum(r["contains"] for r in results) / n, 4)}

    summary = {"models": [model_ref], "data": str(data), "questions": len(rows),
               "settings": {"max_tokens": max_tokens, "system": system, "batch_size": batch_size}}
    return measured_run("exact", summary, save_dir, work, lambda: results)
