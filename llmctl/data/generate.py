"""`llmctl data generate`: self-instruct data the Alpaca way: a teacher model, shown a few seed tasks,
writes new ones; each is parsed, filtered (lengths, unsuitable, near-duplicates) and appended to a
resumable Alpaca JSONL file with its provenance.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llmctl.answering import DEFAULT_BATCH_SIZE, Answer, answer_all, is_remote
from llmctl.backends.base import GenerationRequest, Message, SamplingParams
from llmctl.data.similarity import NearDuplicateIndex
from llmctl.errors import LlmctlError, ModelError, RemoteError, UsageError
from llmctl.jsonl import JsonlAppender, parse_jsonl, read_resumable, read_text

PROMPT_VERSION = "self-instruct-v1"
# Tasks a text-only model cannot do (Alpaca dropped instructions with these words, for the same reason).
UNSUITABLE = re.compile(r"\b(images?|pictures?|photos?|graphs?|charts?|diagrams?|flowcharts?|maps?|files?|"
                        r"draw|drawing|plot|video|audio|music|go to|click|browse)\b", re.IGNORECASE)

PROMPT = """You are helping to build a varied set of tasks for teaching an AI assistant to follow instructions.
Come up with {count} new tasks. Requirements:
1. Make the tasks different from each other and from the examples: vary the verb and the kind of task \
(open questions, writing, editing, classification, extraction, reasoning, maths, code, advice, brainstorming...).
2. Vary how instructions are phrased: questions and commands, short and longer ones.
3. A text-only assistant must be able to do every task: nothing about images, audio, files, web pages or \
actions in the world.
4. Write in English; an instruction is one or two sentences.
5. Give an input when the task needs something to work on (a sentence, a passage, a list, a table), concrete \
and under 100 words; otherwise write <noinput>.
6. The output is a good, complete answer to the instruction and input, preferably under 150 words.

Write every task in exactly this layout and nothing else:

N. Instruction: ...
Input: ...
Output: ...

Examples of existing tasks:

{examples}

Now write tasks {first} to {last}, each new and different from the examples."""


class Events:
    """What a long data run tells its caller as it goes (the CLI draws a progress bar); silent by default."""

    def warn(self, message: str) -> None:
        pass

    def update(self, done: int, total: int, requests: int) -> None:
        pass


# -- tasks: seeds in, teacher replies parsed -------------------------------------------------------------------

@dataclass
class Task:
    instruction: str
    input: str
    output: str
    id: str = ""

    @classmethod
    def from_row(cls, row: dict) -> "Task":
        return cls(row["instruction"].strip(), (row.get("input") or "").strip(), row["output"].strip())


def load_seeds(path: Path) -> list[Task]:
    """Seed tasks: the Alpaca seed layout (instruction, instances [{input, output}]; the first instance is
    shown) or plain Alpaca rows (instruction, input, output)."""
    tasks = []
    for number, row in parse_jsonl(path, read_text(path, f"--seeds {path}: no such file")):
        where = f"{path}:{number}"
        instances = row.get("instances") if isinstance(row, dict) else None
        first = instances[0] if isinstance(instances, list) and instances else row
        if not isinstance(row, dict) or not isinstance(row.get("instruction"), str) or not row["instruction"].strip() \
                or not isinstance(first, dict) or not isinstance(first.get("output"), str):
            raise UsageError(f"{where}: a seed task needs 'instruction' and 'instances' [{{input, output}}] "
                             "(or 'input' and 'output')")
        input_text = first.get("input") if isinstance(first.get("input"), str) else ""
        tasks.append(Task(row["instruction"].strip(), input_text.strip(), first["output"].strip(),
                          str(row.get("id", f"line{number}"))))
    if not tasks:
        raise UsageError(f"--seeds {path} has no tasks")
    return tasks


# "3. Instruction:", "Input:", "**Output:**", "- input :" ...: a label at the start of a line, any case.
LABEL = re.compile(r"^[ \t>*#-]*(?:(?:task\s*)?\d+\s*[.):]\s*)?[*_]*(instruction|input|output)[*_]*[ \t]*:[*_]*[ \t]*",
                   re.IGNORECASE | re.MULTILINE)
# Lines that separate tasks rather than belong to one: "###", "---", "4.", "Task 4".
SEPARATOR = re.compile(r"(\n[ \t]*(#+|-{3,}|\*{3,}|\**task\s*\d+[.):]?\**|\d+[.)])[ \t]*)+\s*$", re.IGNORECASE)
NO_INPUT = {"<noinput>", "<no input>", "noinput", "none", "n/a", "", "<none>", "(none)", "no input"}


def _clean(value: str) -> str:
    return SEPARATOR.sub("", "\n" + value.strip()).strip()


def _labelled(reply: str) -> list[dict[str, str]]:
    """Items from 'Instruction:/Input:/Output:' labels; an Instruction label starts a new item."""
    matches = list(LABEL.finditer(reply))
    items: list[dict[str, str]] = []
    for i, match in enumerate(matches):
        label = match.group(1).lower()
        end = matches[i + 1].start() if i + 1 < len(matches) else len(reply)
        value = _clean(reply[match.end():end])
        if label == "instruction" or not items or label in items[-1]:
            items.append({})  # an Input/Output with no Instruction of its own is an item that will not parse
        items[-1][label] = value
    return items


def _json_lines(reply: str) -> list[dict | None]:
    items: list[dict | None] = []
    for line in reply.splitlines():
        if line.strip().startswith("{"):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            items.append({k: v for k, v in row.items() if isinstance(v, str)} if isinstance(row, dict) else None)
    return items


def parse_tasks(reply: str, truncated: bool = False) -> tuple[list[Task], Counter]:
    """The tasks in a teacher's reply (numbered labelled blocks, or JSON lines) and a count of what could
    not be used: 'unparsable' items (or a reply with none), and a 'truncated' last item when the reply hit
    its token limit."""
    items = _json_lines(reply) or _labelled(reply)
    rejected: Counter = Counter()
    if not items:
        rejected["unparsable"] += 1
        return [], rejected
    if truncated:
        items.pop()
        rejected["truncated"] += 1
    tasks = []
    for item in items:
        if not item or not item.get("instruction", "").strip() or "output" not in item:
            rejected["unparsable"] += 1
            continue
        input_text = item.get("input", "").strip()
        tasks.append(Task(item["instruction"].strip(), "" if input_text.lower() in NO_INPUT else input_text,
                          item["output"].strip()))
    return tasks, rejected


@dataclass
class GenerateOptions:
    teacher: str
    seeds: Path
    n: int
    out: Path
    examples_per_prompt: int = 3
    tasks_per_request: int = 8
    max_similarity: float = 0.7
    min_words: int = 3  # instruction words
    max_words: int = 150
    max_output_words: int = 400
    max_requests: int | None = None  # default: default_max_requests(n)
    workers: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 2048
    seed: int = 0
    batch_size: int = DEFAULT_BATCH_SIZE  # requests a local teacher decodes together


def default_max_requests(n: int) -> int:
    """At most one request per wanted row (each asks for several), at least 10: enough for a teacher whose
    replies are mostly filtered, and a bound for one whose replies never parse."""
    return max(10, n)


@dataclass
class GenerateReport:
    out: str
    teacher: str
    wanted: int
    resumed: int = 0  # rows already in --out
    new: int = 0
    requests: int = 0
    failed_requests: int = 0
    filtered: Counter = field(default_factory=Counter)
    complete: bool = False
    message: str = ""
    errors: list[str] = field(default_factory=list)  # the first few failed requests' errors

    @property
    def kept(self) -> int:
        return self.resumed + self.new

    def to_dict(self) -> dict[str, Any]:
        return {"out": self.out, "teacher": self.teacher, "prompt_version": PROMPT_VERSION, "wanted": self.wanted,
                "kept": self.kept, "resumed": self.resumed, "new": self.new, "requests": self.requests,
                "failed_requests": self.failed_requests, "filtered": dict(sorted(self.filtered.items())),
                "complete": self.complete, "message": self.message, "errors": self.errors}


def format_example(number: int, task: Task) -> str:
    return f"{number}. Instruction: {task.instruction}\nInput: {task.input.strip() or '<noinput>'}\nOutput: {task.output}"


def build_prompt(examples: list[Task], count: int) -> str:
    shown = "\n\n".join(format_example(i, t) for i, t in enumerate(examples, 1))
    return PROMPT.format(count=count, examples=shown, first=len(examples) + 1, last=len(examples) + count)


def rejection(task: Task, options: GenerateOptions) -> str | None:
    """Why a parsed task is not kept (before the duplicate check), or None."""
    n_words = len(task.instruction.split())
    if n_words < options.min_words:
        return "instruction_too_short"
    if n_words > options.max_words:
        return "instruction_too_long"
    if not task.output.strip():
        return "empty_output"
    if len(task.output.split()) > options.max_output_words:
        return "output_too_long"
    if UNSUITABLE.search(task.instruction):
        return "unsuitable"
    if not task.instruction[0].isalnum():  # Alpaca: starts with punctuation or a non-Latin script
        return "bad_start"
    return None


@dataclass
class PendingRequest:
    number: int
    seed_ids: list[str]
    request: GenerationRequest


class SelfInstruct:
    """The state of one generation run: the dedup pool, the rows kept, the output file and the counts."""

    def __init__(self, options: GenerateOptions, seeds: list[Task], existing: list[dict], events: Events,
                 raw: bool, report: GenerateReport):
        self.options, self.seeds, self.events, self.raw, self.report = options, seeds, events, raw, report
        self.generated = [Task.from_row(r) for r in existing]
        self.pool = NearDuplicateIndex()
        for task in seeds + self.generated:
            self.pool.add(task.instruction)
        numbers = [r["meta"]["request"] for r in existing
                   if isinstance(r.get("meta"), dict) and isinstance(r["meta"].get("request"), int)]
        self.next_number = max(numbers, default=0) + 1  # a resumed run asks new questions, not the old ones again
        self.appender = JsonlAppender(options.out)

    def next_request(self) -> PendingRequest:
        o = self.options
        number = self.next_number
        self.next_number += 1
        rng = random.Random(f"{o.seed}:{number}")  # each request's sample depends on its number only
        examples = rng.sample(self.seeds, min(o.examples_per_prompt, len(self.seeds)))
        seed_ids = [t.id for t in examples]
        if self.generated:
            examples.append(rng.choice(self.generated))
        params = SamplingParams(temperature=o.temperature, top_p=o.top_p, max_tokens=o.max_tokens, seed=o.seed + number)
        request = GenerationRequest([Message("user", build_prompt(examples, o.tasks_per_request))], params, raw=self.raw)
        return PendingRequest(number, seed_ids, request)

    def take(self, pending: PendingRequest, answer: Answer) -> None:
        """Parse one reply, keep what passes every filter (appended at once), count the rest."""
        report = self.report
        report.requests += 1
        if answer.text is None:
            report.failed_requests += 1
            if len(report.errors) < 5:
                report.errors.append(answer.error or "unknown error")
        else:
            tasks, rejected = parse_tasks(answer.text, truncated=answer.finish_reason == "length")
            report.filtered.update(rejected)
            for task in tasks:
                if report.kept >= report.wanted:
                    report.filtered["not_needed"] += 1  # the target was met by an earlier task or reply
                    continue
                reason = rejection(task, self.options) or self._duplicate(task)
                if reason:
                    report.filtered[reason] += 1
                    continue
                self._keep(task, pending)
        self.events.update(report.kept, report.wanted, report.requests)

    def _duplicate(self, task: Task) -> str | None:
        score, _ = self.pool.most_similar(task.instruction, self.options.max_similarity)
        return "duplicate" if score > self.options.max_similarity else None

    def _keep(self, task: Task, pending: PendingRequest) -> None:
        meta = {"teacher": self.options.teacher, "prompt_version": PROMPT_VERSION, "seed_ids": pending.seed_ids,
                "request": pending.number, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        self.appender.write({"instruction": task.instruction, "input": task.input, "output": task.output, "meta": meta})
        self.pool.add(task.instruction)
        self.generated.append(task)
        self.report.new += 1


def check_options(o: GenerateOptions) -> None:
    if o.n < 1:
        raise UsageError("-n must be at least 1")
    if not 0 < o.max_similarity <= 1:
        raise UsageError(f"--max-similarity {o.max_similarity} is out of range", hint="a ROUGE-L F between 0 and 1")
    if o.min_words > o.max_words:
        raise UsageError(f"--min-words {o.min_words} is above --max-words {o.max_words}")
    if Path(o.out).is_dir():
        raise UsageError(f"--out {o.out} is a directory", hint="name a .jsonl file")


def generate(options: GenerateOptions, config=None, events: Events | None = None) -> GenerateReport:
    """Generate until --out holds `n` rows or `max_requests` replies were read. Rows already in --out count
    (a rerun continues); Ctrl-C (KeyboardInterrupt) propagates with every kept row already on disk."""
    from llmctl.config import Config
    from llmctl.prompting import open_backend, resolve_entry

    check_options(options)
    events = events or Events()
    seeds = load_seeds(options.seeds)
    existing = read_resumable(options.out, events.warn, required={"instruction": str, "output": str})
    report = GenerateReport(str(options.out), options.teacher, options.n, resumed=len(existing))
    max_requests = options.max_requests or default_max_requests(options.n)
    if report.kept >= options.n:
        report.complete, report.message = True, f"{options.out} already has {report.kept} rows"
        return report
    backend = open_backend(resolve_entry(options.teacher), config or Config())
    try:
        raw = not backend.is_chat(GenerationRequest([]))  # a base model continues the numbered list as text
        run = SelfInstruct(options, seeds, existing, events, raw, report)
        events.update(report.kept, report.wanted, 0)
        try:
            _request_until_done(run, backend, max_requests)
        finally:
            run.appender.close()
    finally:
        backend.close()
    report.complete = report.kept >= options.n
    if not report.complete:
        report.message = (f"stopped after {report.requests} requests (--max-requests {max_requests}) with "
                          f"{report.kept} of {options.n} rows: the teacher's replies were mostly unusable (see the "
                          f"filtered counts); run again to continue, raise --max-requests, or use a stronger teacher")
    return report


def teacher_failed(teacher: str, backend, error: str) -> LlmctlError:
    """The error when a teacher failed on every request so far: the server's problem, or the local model's."""
    kind = RemoteError if is_remote(backend) else ModelError
    return kind(f"the teacher '{teacher}' failed on every request: {error}")


def _request_until_done(run: SelfInstruct, backend, max_requests: int) -> None:
    report, options = run.report, run.options
    # A wave is what runs at once: `workers` requests to a remote teacher, a batch for a local one that can
    # batch (one at a time otherwise, so each request sees the newest rows sooner).
    width = options.workers if is_remote(backend) else (options.batch_size if backend.capabilities.batching else 1)
    while report.kept < report.wanted and report.requests < max_requests:
        wave = [run.next_request() for _ in range(min(width, max_requests - report.requests))]
        answer_all(backend, [p.request for p in wave], options.workers,
                   on_answer=lambda i, answer: run.take(wave[i], answer), batch_size=options.batch_size)
        if report.failed_requests == report.requests:
            raise teacher_failed(options.teacher, backend, report.errors[0])
