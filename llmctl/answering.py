"""Many prompts through one model: prompt files in any common shape, and answering them all at once.

Used by everything that runs a set of prompts (`eval exact`, `eval judge`, `eval compare`, `data generate`,
`data distill`). Remote models answer several requests concurrently (`workers`); a model whose backend
can batch (a local one) decodes `batch_size` requests together, which gives each the same text as alone.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from llmctl.backends.base import Backend, GenerationRequest, Message, SamplingParams
from llmctl.errors import LlmctlError, ModelError, RemoteError, UsageError
from llmctl.jsonl import parse_jsonl, read_text

ROLES = ("system", "user", "assistant")
PROMPT_FIELDS = "'prompt', 'question', 'instruction' (+ optional 'input') or 'messages'"


@dataclass
class PromptItem:
    """One prompt: the chat turns to send, a one-line text for tables, and the row's other fields."""

    id: str
    messages: list[Message]
    text: str
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. a reference answer or a given response


def alpaca_prompt(instruction: str, input_text: str = "") -> str:
    """An Alpaca row as one user turn: the instruction, then its input after a blank line. Fine-tuning
    builds its prompts with this too, so a model is asked exactly what it was trained on."""
    return instruction if not (input_text or "").strip() else f"{instruction}\n\n{input_text}"


def checked_messages(value: Any, where: str, field_name: str) -> list[dict[str, str]]:
    """Chat turns from a data row ({role, content} dicts), or an error naming the row and the turn."""
    if not isinstance(value, list) or not value:
        raise UsageError(f"{where}: field '{field_name}' must be a non-empty list of {{role, content}}")
    clean = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise UsageError(f"{where}: {field_name}[{i}] needs a role ({', '.join(ROLES)}) and a string content")
        clean.append({"role": m["role"], "content": m["content"]})
    return clean


def prompt_from_row(row: Any, where: str) -> tuple[list[Message], str]:
    """The chat turns a JSONL row asks for; a bad row is an error naming where it is."""
    if isinstance(row, str):
        row = {"prompt": row}
    if not isinstance(row, dict):
        raise UsageError(f"{where}: expected a JSON object with {PROMPT_FIELDS}")
    if isinstance(row.get("messages"), list):
        messages = [Message(m["role"], m["content"]) for m in checked_messages(row["messages"], where, "messages")]
        if messages and messages[-1].role == "assistant":  # a finished conversation: ask its last question again
            messages = messages[:-1]
        if not messages or messages[-1].role != "user":
            raise UsageError(f"{where}: 'messages' must end with a user turn")
        return messages, messages[-1].content
    for key in ("prompt", "question"):
        if isinstance(row.get(key), str) and row[key].strip():
            return [Message("user", row[key])], row[key]
    if isinstance(row.get("instruction"), str) and row["instruction"].strip():
        text = alpaca_prompt(row["instruction"], row.get("input") if isinstance(row.get("input"), str) else "")
        return [Message("user", text)], text
    raise UsageError(f"{where}: no prompt found; expected {PROMPT_FIELDS}")


def load_prompts(path: Path) -> list[PromptItem]:
    """Prompts from JSONL (see PROMPT_FIELDS; other fields are kept in `extra`) or plain text, one a line."""
    path = Path(path)
    text = read_text(path, f"{path}: no such prompts file")
    items = []
    if path.suffix.lower() in (".jsonl", ".json"):
        for number, row in parse_jsonl(path, text):
            messages, shown = prompt_from_row(row, f"{path}:{number}")
            extra = {k: v for k, v in row.items() if k not in ("messages", "prompt", "question")} \
                if isinstance(row, dict) else {}
            items.append(PromptItem(str(row.get("id", number)) if isinstance(row, dict) else str(number),
                                    messages, shown, extra))
    else:
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                items.append(PromptItem(str(number), [Message("user", line.strip())], line.strip()))
    if not items:
        raise UsageError(f"{path} has no prompts", hint=f"JSONL rows with {PROMPT_FIELDS}, or one prompt per line")
    return items


@dataclass
class Answer:
    text: str | None  # None when the request failed
    error: str | None = None
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)


def is_remote(backend: Backend) -> bool:
    return backend.capabilities.remote


def answer_one(backend: Backend, request: GenerationRequest, unreachable_raises: bool = False) -> Answer:
    """One request; a failure (remote error after retries, a prompt too long) is recorded, not raised.
    With `unreachable_raises`, a model that cannot answer at all (no key, refused connection, unknown
    model: RemoteError, ModelError) raises instead."""
    try:
        response = backend.generate(request)
        text = response.text()
        return Answer(text, finish_reason=response.finish_reason, usage=response.usage)
    except LlmctlError as e:
        if unreachable_raises and isinstance(e, (RemoteError, ModelError)):
            raise
        return Answer(None, error=str(e))


DEFAULT_BATCH_SIZE = 8  # rows decoded together by a local model: ~2-3x the throughput of one at a time on a CPU


def answer_batch(backend: Backend, requests: list[GenerationRequest]) -> Iterator[tuple[int, Answer]]:
    """Answers to requests decoded together (a backend with `capabilities.batching`), each as it finishes.
    A request that cannot be decoded (too long, empty) is answered with its error; the others go on."""
    rows, where = [], []
    for index, request in enumerate(requests):
        try:
            rows.append(backend.prepare_row(request))
            where.append(index)
        except LlmctlError as e:
            yield index, Answer(None, error=str(e))
    parts: dict[int, list[str]] = {i: [] for i in range(len(rows))}
    for i, chunk in backend.decode_batch(rows) if rows else ():
        parts[i].append(chunk.text)
        if chunk.finish_reason:
            yield where[i], Answer("".join(parts[i]), finish_reason=chunk.finish_reason, usage=chunk.usage or {})


def answer_all(backend: Backend, requests: list[GenerationRequest], workers: int = 4,
               on_answer: Callable[[int, Answer], None] | None = None, fail_fast: bool = False,
               batch_size: int = DEFAULT_BATCH_SIZE) -> list[Answer]:
    """Every request's answer, in order. `on_answer(index, answer)` runs as each one finishes (for
    progress bars and incremental saving), from one thread at a time. With `fail_fast`, the first request
    runs alone and a model that cannot be reached at all raises, instead of failing every row one by one.
    A backend that batches decodes `batch_size` requests at a time; remote ones use `workers` threads."""
    results: list[Answer | None] = [None] * len(requests)
    lock = threading.Lock()

    def keep(index: int, answer: Answer) -> None:
        with lock:
            results[index] = answer
            if on_answer:
                on_answer(index, answer)

    def run(index: int) -> None:
        keep(index, answer_one(backend, requests[index], unreachable_raises=fail_fast and index == 0))

    first = 0
    if fail_fast and requests:
        run(0)
        first = 1
    if batch_size > 1 and backend.capabilities.batching and len(requests) - first > 1:
        for start in range(first, len(requests), batch_size):
            chunk = requests[start:start + batch_size]
            for offset, answer in answer_batch(backend, chunk):
                keep(start + offset, answer)
    elif workers > 1 and is_remote(backend) and len(requests) - first > 1:
        pool = ThreadPoolExecutor(max_workers=workers)
        try:
            for future in [pool.submit(run, i) for i in range(first, len(requests))]:
                future.result()
        except BaseException:
            # Ctrl-C: drop the queued requests and return at once; the ones in flight finish on their own.
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    else:
        for i in range(first, len(requests)):
            run(i)
    return [r for r in results if r is not None]


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens)
