"""Exact-match and contains accuracy on a question-answer set, with every answer kept for review."""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any

from llmctl.errors import UsageError
from llmctl.jsonl import parse_jsonl, read_text

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


def exact_match(model_ref: str, data: Path, max_tokens: int = 32, system: str | None = None, config=None,
                on_answer=None) -> dict[str, Any]:
    from llmctl.backends.base import GenerationRequest, Message, SamplingParams
    from llmctl.config import Config
    from llmctl.prompting import open_backend, resolve_entry

    rows = load_qa(data)
    backend = open_backend(resolve_entry(model_ref), config or Config())
    results = []
    try:
        for row in rows:
            messages = ([Message("system", system)] if system else []) + [Message("user", row["question"])]
            answer = backend.generate(GenerationRequest(messages, SamplingParams(temperature=0, max_tokens=max_tokens))).text()
            got = normalise(answer)
            accepted = [normalise(a) for a in row["answers"]]
            result = {**row, "response": answer, "exact": got in accepted,
                      "contains": any(a and a in got for a in accepted)}
            results.append(result)
            if on_answer:
                on_answer(result)
    finally:
        backend.close()
    n = len(results)
    return {"model": model_ref, "questions": n, "exact_match": round(sum(r["exact"] for r in results) / n, 4),
            "contains": round(sum(r["contains"] for r in results) / n, 4), "results": results}
