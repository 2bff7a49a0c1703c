"""`llmctl data distill`: a teacher model answers a set of prompts and its answers become a fine-tuning
file (chat `messages` rows, or Alpaca rows), each with its provenance, appended as they arrive so that
a rerun answers only what is still missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llmctl.answering import DEFAULT_BATCH_SIZE, Answer, PromptItem, answer_all, is_remote, load_prompts
from llmctl.backends.base import GenerationRequest, Message, SamplingParams
from llmctl.data.generate import Events, teacher_failed
from llmctl.errors import UsageError
from llmctl.jsonl import JsonlAppender, read_resumable

FORMATS = ("chat", "alpaca")
ROW_FIELDS = {"chat": {"messages": list}, "alpaca": {"instruction": str, "output": str}}


@dataclass
class DistillOptions:
    teacher: str
    prompts: Path
    out: Path
    format: str = "chat"
    system: str | None = None  # sent before prompts that have no system turn of their own
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 1024
    seed: int | None = None
    workers: int = 4
    keep_truncated: bool = False  # answers cut by --max-tokens are incomplete: not written unless asked
    batch_size: int = DEFAULT_BATCH_SIZE  # prompts a local teacher decodes together

    def params(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens, seed=self.seed)


@dataclass
class DistillReport:
    out: str
    teacher: str
    prompts: int
    resumed: int = 0  # prompts already answered in --out
    written: int = 0
    requests: int = 0
    failed: int = 0
    empty: int = 0
    truncated: int = 0
    errors: list[str] = field(default_factory=list)  # the first few failures

    @property
    def complete(self) -> bool:
        return self.resumed + self.written == self.prompts

    def to_dict(self) -> dict[str, Any]:
        return {"out": self.out, "teacher": self.teacher, "prompts": self.prompts, "resumed": self.resumed,
                "written": self.written, "requests": self.requests, "failed": self.failed, "empty": self.empty,
                "truncated": self.truncated, "complete": self.complete, "errors": self.errors}


def answered_key(row: dict) -> tuple[str, str]:
    """(prompt id, prompt text) of a row this command wrote, to match it with its prompt on resume."""
    from llmctl.answering import alpaca_prompt

    prompt_id = str((row.get("meta") or {}).get("prompt_id", ""))
    if "messages" in row:
        users = [m.get("content", "") for m in row["messages"] if isinstance(m, dict) and m.get("role") == "user"]
        return prompt_id, users[-1] if users else ""
    return prompt_id, alpaca_prompt(row.get("instruction", ""), row.get("input") or "")


def to_messages(item: PromptItem, system: str | None) -> list[Message]:
    if system and item.messages[0].role != "system":
        return [Message("system", system)] + item.messages
    return list(item.messages)


def build_row(item: PromptItem, messages: list[Message], answer: Answer, options: DistillOptions) -> dict:
    params = options.params().to_dict()
    del params["stop"], params["repetition_penalty"], params["top_k"]  # never set here: noise in every row
    meta = {"teacher": options.teacher, "prompt_id": item.id, "params": params, "finish_reason": answer.finish_reason,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if options.format == "alpaca":
        return {"instruction": item.extra["instruction"], "input": item.extra.get("input") or "",
                "output": answer.text, "meta": meta}
    turns = [{"role": m.role, "content": m.content} for m in messages]
    return {"messages": turns + [{"role": "assistant", "content": answer.text}], "meta": meta}


def check_options(options: DistillOptions, items: list[PromptItem]) -> None:
    if options.format not in FORMATS:
        raise UsageError(f"unknown --format '{options.format}'", hint="use chat or alpaca")
    if Path(options.out).is_dir():
        raise UsageError(f"--out {options.out} is a directory", hint="name a .jsonl file")
    if options.format == "alpaca":
        for item in items:
            if not isinstance(item.extra.get("instruction"), str):
                raise UsageError(f"{options.prompts}: prompt {item.id} is not an Alpaca row (instruction, input)",
                                 hint="--format alpaca needs Alpaca prompt rows; use --format chat")


class Distiller:
    """Takes the teacher's answers as they arrive: writes the good ones, counts the rest."""

    def __init__(self, options: DistillOptions, report: DistillReport, events: Events):
        self.options, self.report, self.events = options, report, events
        self.appender = JsonlAppender(options.out)

    def take(self, item: PromptItem, messages: list[Message], answer: Answer) -> None:
        report = self.report
        report.requests += 1
        if answer.text is None:
            report.failed += 1
            if len(report.errors) < 5:
                report.errors.append(f"prompt {item.id}: {answer.error}")
        elif not answer.text.strip():
            report.empty += 1
        elif answer.finish_reason == "length" and not self.options.keep_truncated:
            report.truncated += 1
        else:
            self.appender.write(build_row(item, messages, answer, self.options))
            report.written += 1
        self.events.update(report.resumed + report.written, report.prompts, report.requests)


def distill(options: DistillOptions, config=None, events: Events | None = None) -> DistillReport:
    """Answer every prompt not yet answered in --out. Ctrl-C (KeyboardInterrupt) propagates with every
    answer received so far already on disk."""
    from llmctl.config import Config
    from llmctl.prompting import open_backend, resolve_entry

    events = events or Events()
    items = load_prompts(options.prompts)
    check_options(options, items)
    done = {answered_key(row) for row in read_resumable(options.out, events.warn, ROW_FIELDS[options.format])}
    todo = [item for item in items if (item.id, item.text) not in done]
    report = DistillReport(str(options.out), options.teacher, len(items), resumed=len(items) - len(todo))
    if not todo:
        return report
    backend = open_backend(resolve_entry(options.teacher), config or Config())
    distiller = Distiller(options, report, events)
    try:
        events.update(report.resumed, report.prompts, 0)
        # In slices, so that a teacher failing every request (a wrong model name, a server down) is
        # noticed after the first slice instead of after retrying every prompt.
        size = max(1, options.workers) * 4 if is_remote(backend) else max(8, options.batch_size)
        for start in range(0, len(todo), size):
            _answer_slice(backend, distiller, todo[start:start + size])
            if report.failed == report.requests:
                raise teacher_failed(options.teacher, backend, report.errors[0])
    finally:
        distiller.appender.close()
        backend.close()
    return report


def _answer_slice(backend, distiller: Distiller, items: list[PromptItem]) -> None:
    options = distiller.options
    conversations = [to_messages(item, options.system) for item in items]
    requests = [GenerationRequest(messages, options.params()) for messages in conversations]
    answer_all(backend, requests, options.workers,
               on_answer=lambda i, answer: distiller.take(items[i], conversations[i], answer),
               batch_size=options.batch_size)
