"""LLM as a judge: a fixed, versioned prompt asks a model to score answers 1-10 per criterion; replies are
parsed robustly and retried with the parse error fed back; the scores are summarised per criterion."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from llmctl.answering import DEFAULT_BATCH_SIZE, Answer, PromptItem, answer_all
from llmctl.backends.base import Backend, GenerationRequest, SamplingParams
from llmctl.errors import UsageError
from llmctl.evaluate.rubrics import Criterion
from llmctl.prompting import Conversation, build_request

# Saved with every result: scores from different prompt versions are not comparable. Change the text
# below only together with this version.
JUDGE_PROMPT_VERSION = "judge-v1"
JUDGE_SYSTEM = ("You are an impartial, strict judge of answers written by an AI assistant. You score one answer "
                "on each criterion you are given, from 1 (very poor) to 10 (excellent), judging only what that "
                "criterion describes. Reserve 10 for answers that could not be improved on that criterion.")
REPLY_SHAPE = ('Reply with only a JSON object, one key per criterion, each {"score": <integer 1-10>, '
               '"reason": "<one short sentence>"}, for example:\n')
FEEDBACK_REPLY_CHARS = 2000  # how much of a bad reply is shown back to the judge on a retry


class JudgmentError(ValueError):
    """A judge's reply that cannot be used (no scores, a score out of range, a criterion missing)."""


# -- the prompt -------------------------------------------------------------------------------------

def request_text(messages: list[dict[str, str]]) -> str:
    """The conversation being answered, as the judge reads it (system prompt and earlier turns included)."""
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in messages)


def judge_prompt(request: str, answer: str, criteria: list[Criterion], reference: str | None) -> str:
    lines = [f"[Request]\n{request}\n"]
    if reference and any(c.uses_reference for c in criteria):
        lines.append(f"[Reference answer]\n{reference}\n")
    lines.append(f"[Answer to judge]\n{answer}\n\n[Criteria]")
    for c in criteria:
        lines.append(f"- {c.name}: {c.description}" + (f" Scale: {c.scale}." if c.scale else ""))
    example = {c.name: {"score": 7, "reason": "..."} for c in criteria}
    lines.append("\n" + REPLY_SHAPE + json.dumps(example))
    return "\n".join(lines)


def reference_of(item: PromptItem) -> str | None:
    for key in ("reference", "answer", "expected"):
        value = item.extra.get(key)
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return " | ".join(value)
    return None


# -- reading the reply ------------------------------------------------------------------------------

FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
SCORE_TEXT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*$")
SCORE_LINE = re.compile(r"^[\s*#>\-•\d.)]*?([A-Za-z][A-Za-z0-9 _\-]*?)\W*\s*[:=]\s*\**\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?"
                        r"\**\s*(?:[-–—:,.;(]\s*)?(.*)$")


def normal_name(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def json_in_reply(reply: str) -> Any:
    """The first JSON object in the reply: inside ``` fences, or anywhere in the text."""
    for block in FENCE.findall(reply):
        try:
            return json.loads(block)
        except json.JSONDecodeError:
            pass
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", reply):
        try:
            value, _ = decoder.raw_decode(reply, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def checked_score(name: str, value: Any) -> int | float:
    """A score as a number in 1-10; 0 is taken as 1 (some judges use 0-10), anything else out of range is an error."""
    if isinstance(value, str) and SCORE_TEXT.match(value):
        value = float(SCORE_TEXT.match(value).group(1))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise JudgmentError(f"the score for {name} is not a number: {value!r}")
    if not 0 <= value <= 10:
        raise JudgmentError(f"the score {value:g} for {name} is not between 1 and 10")
    value = max(1, value)
    return int(value) if float(value).is_integer() else float(value)


def scores_from_json(doc: dict, names: list[str]) -> dict[str, dict[str, Any]]:
    """{name: {score, reason}}, {name: score}, {"scores": {...}, "reasons": {...}}, or with one criterion
    a bare {"score": 7, "reason": "..."}."""
    if len(names) == 1 and "score" in doc and normal_name(names[0]) not in map(normal_name, doc):
        doc = {names[0]: doc}
    scores = doc.get("scores") if isinstance(doc.get("scores"), dict) else doc
    reasons = doc.get("reasons") if isinstance(doc.get("reasons"), dict) else {}
    by_normal = {normal_name(k): k for k in scores}
    reason_keys = {normal_name(k): k for k in reasons}
    found = {}
    for name in names:
        key = by_normal.get(normal_name(name))
        if key is None:
            continue
        value, reason = scores[key], reasons.get(reason_keys.get(normal_name(name), ""), "")
        if isinstance(value, dict):
            value, reason = value.get("score"), value.get("reason", reason)
        found[name] = {"score": checked_score(name, value), "reason": str(reason or "").strip()}
    return found


def scores_from_lines(reply: str, names: list[str]) -> dict[str, dict[str, Any]]:
    """Lines like `grammar: 7 - clear and correct` or `**Creativity**: 6/10, a bit generic`."""
    wanted = {normal_name(n): n for n in names}
    found = {}
    for line in reply.splitlines():
        match = SCORE_LINE.match(line)
        if match and normal_name(match.group(1)) in wanted:
            name = wanted[normal_name(match.group(1))]
            found.setdefault(name, {"score": checked_score(name, float(match.group(2))),
                                    "reason": match.group(3).strip().strip("*").strip()})
    return found


def parse_judgment(reply: str, criteria: list[Criterion]) -> dict[str, dict[str, Any]]:
    """{criterion: {"score": 1-10, "reason": str}} for every criterion, or JudgmentError saying what is wrong."""
    names = [c.name for c in criteria]
    doc = json_in_reply(reply)
    found = scores_from_json(doc, names) if isinstance(doc, dict) else {}
    if not found:
        found = scores_from_lines(reply, names)
    missing = [n for n in names if n not in found]
    if len(missing) == len(names):
        raise JudgmentError("no scores found in the reply")
    if missing:
        raise JudgmentError(f"no score for {', '.join(missing)}")
    return found


# -- asking until the reply can be used -------------------------------------------------------------

@dataclass
class Ask:
    """One question for the judge and how to read its reply (`parse` raises JudgmentError if it cannot)."""

    system: str
    text: str
    parse: Callable[[str], Any]
    rejected: tuple[str, str] | None = None  # the last unusable reply and what was wrong with it

    def request(self, backend: Backend, params: SamplingParams) -> GenerationRequest:
        if self.rejected is None:
            return build_request(backend, Conversation(self.system), self.text, params)
        reply, error = self.rejected  # show the judge its bad reply and why it cannot be used
        return build_request(backend, Conversation(self.system, turns=[(self.text, reply)]), retry_text(error), params)


@dataclass
class Outcome:
    value: Any = None  # what `parse` returned; None if every attempt failed
    error: str | None = None
    replies: list[str] = field(default_factory=list)  # every raw reply, for review
    attempts: int = 0


def retry_text(error: str) -> str:
    return f"Your reply could not be used: {error}. Answer again, in exactly the format my previous message asked for."


def ask_until_parsed(backend: Backend, asks: list[Ask], params: SamplingParams, retries: int = 2,
                     workers: int = 4, on_done: Callable[[int, Outcome], None] | None = None) -> list[Outcome]:
    """Ask every question; a reply that cannot be parsed is asked again (up to `retries` times) with the
    error shown to the judge and another seed, then counted as failed. `on_done(i, outcome)` runs once
    per question, when it is settled."""
    outcomes = [Outcome() for _ in asks]
    pending = list(range(len(asks)))
    for attempt in range(retries + 1):
        retry: list[int] = []

        def settle(k: int, answer: Answer, pending=pending, retry=retry, last=attempt == retries) -> None:
            index = pending[k]
            ask, outcome = asks[index], outcomes[index]
            outcome.attempts += 1
            if answer.text is None:
                outcome.error = answer.error
            else:
                outcome.replies.append(answer.text)
                try:
                    outcome.value, outcome.error = ask.parse(answer.text), None
                except JudgmentError as e:
                    outcome.error = f"unusable reply: {e}"
                    ask.rejected = (answer.text[:FEEDBACK_REPLY_CHARS], str(e))
            if outcome.value is None and not last:
                retry.append(index)
            elif on_done:
                on_done(index, outcome)

        seeded = replace(params, seed=(params.seed or 0) + attempt)
        requests = [asks[i].request(backend, seeded) for i in pending]
        answer_all(backend, requests, workers, settle, fail_fast=attempt == 0)
        pending = sorted(retry)
        if not pending:
            break
    return outcomes


# -- answering and judging a prompts file -----------------------------------------------------------

Progress = Callable[[str, int, int], None]  # (what is being done, done, total)


@dataclass
class AnswerSettings:
    max_tokens: int = 256
    temperature: float = 0.0  # greedy: an evaluation should be repeatable
    samples: int = 1  # answers per prompt (> 1 needs a temperature above 0)
    seed: int = 0
    system: str | None = None  # used for prompts that bring no system prompt of their own
    workers: int = 4
    batch_size: int = DEFAULT_BATCH_SIZE  # prompts a local model decodes together


@dataclass
class JudgeSettings:
    criteria: list[Criterion]
    retries: int = 2
    max_tokens: int = 512
    temperature: float = 0.0
    seed: int = 0
    workers: int = 4

    def params(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, max_tokens=self.max_tokens, seed=self.seed)


def conversation_for(item: PromptItem, system: str | None) -> tuple[Conversation, str]:
    """A prompt row as the earlier turns plus the last user message (so base models get a text prefix)."""
    own_system = next((m.content for m in item.messages if m.role == "system"), None)
    rest = [m for m in item.messages if m.role != "system"]
    turns = [(rest[i].content, rest[i + 1].content) for i in range(0, len(rest) - 1, 2)]
    return Conversation(system=own_system or system, turns=turns), rest[-1].content


def row_messages(item: PromptItem, system: str | None) -> list[dict[str, str]]:
    messages = [{"role": m.role, "content": m.content} for m in item.messages]
    if system and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system})
    return messages


def generate_answers(model_ref: str, items: list[PromptItem], settings: AnswerSettings, config,
                     on_progress: Progress | None = None) -> list[list[Answer]]:
    """`settings.samples` answers to every prompt from one model (loaded, used, closed)."""
    from llmctl.prompting import open_backend, resolve_entry

    backend = open_backend(resolve_entry(model_ref), config)
    answers: list[Answer | None] = []
    try:
        requests = []
        for item in items:
            conversation, text = conversation_for(item, settings.system)
            for k in range(settings.samples):
                params = SamplingParams(temperature=settings.temperature, max_tokens=settings.max_tokens,
                                        seed=settings.seed + k)
                requests.append(build_request(backend, conversation, text, params))
        answers = [None] * len(requests)

        def keep(index: int, answer: Answer) -> None:
            answers[index] = answer
            if on_progress:
                on_progress(f"answering with {model_ref}", sum(a is not None for a in answers), len(requests))

        answer_all(backend, requests, settings.workers, keep, fail_fast=True, batch_size=settings.batch_size)
    finally:
        backend.close()
    n = settings.samples
    return [answers[i * n:(i + 1) * n] for i in range(len(items))]


def answer_rows(items: list[PromptItem], model_ref: str | None, settings: AnswerSettings, config,
                on_progress: Progress | None = None) -> list[dict[str, Any]]:
    """One row per answer to judge: generated by the model, or the `response` each prompt row brings."""
    if model_ref:
        generated = generate_answers(model_ref, items, settings, config, on_progress)
    else:
        generated = [[Answer(item.extra["response"])] for item in items]
    rows = []
    for index, (item, answers) in enumerate(zip(items, generated)):
        for sample, answer in enumerate(answers):
            messages = row_messages(item, settings.system)
            rows.append({"index": index, "id": item.id, "sample": sample, "prompt": item.text,
                         "system": next((m["content"] for m in messages if m["role"] == "system"), None),
                         "messages": messages, "model": model_ref or str(item.extra.get("model") or "given"),
                         "answer": answer.text, "reference": reference_of(item),
                         "error": None if answer.text is not None else f"no answer: {answer.error}"})
    return rows


def judge_rows(backend: Backend, rows: list[dict], settings: JudgeSettings, save: Callable[[dict], None],
               on_progress: Progress | None = None) -> None:
    """Score every answered row on every criterion; each row is saved as soon as it is settled."""
    criteria = settings.criteria
    for row in rows:
        if row["answer"] is None:
            save(row)
    todo = [r for r in rows if r["answer"] is not None]
    asks = [Ask(JUDGE_SYSTEM, judge_prompt(request_text(r["messages"]), r["answer"], criteria, r["reference"]),
                lambda reply: parse_judgment(reply, criteria)) for r in todo]
    settled = 0

    def record(index: int, outcome: Outcome) -> None:
        nonlocal settled
        found = outcome.value or {}
        todo[index].update(scores={n: v["score"] for n, v in found.items()},
                           reasons={n: v["reason"] for n, v in found.items()},
                           raw=outcome.replies, attempts=outcome.attempts, error=outcome.error)
        save(todo[index])
        settled += 1
        if on_progress:
            on_progress(f"judging with {backend.name}", settled, len(todo))

    ask_until_parsed(backend, asks, settings.params(), settings.retries, settings.workers, record)


def run_judge(items: list[PromptItem], model_ref: str | None, judge_ref: str | None, settings: JudgeSettings,
              answering: AnswerSettings, config, save_dir=None, on_progress: Progress | None = None):
    """`llmctl eval judge`: answer (or take the given answers), judge, save the run; judge_ref None leaves the
    scoring to a person (`--human`)."""
    from llmctl.evaluate.runs import Run, record_run, run_settings, summarize_scores
    from llmctl.prompting import resolve_entry

    if not model_ref and not all(isinstance(i.extra.get("response"), str) for i in items):
        raise UsageError("no answers to judge", hint="give -m MODEL to answer the prompts, or --answers FILE with "
                                                     "a 'response' in every row")
    if answering.samples > 1 and answering.temperature == 0:
        raise UsageError("--samples above 1 needs --temperature above 0 (greedy answers would all be the same)")
    judge_entry = resolve_entry(judge_ref) if judge_ref else None  # an unknown model fails before any work
    if model_ref:
        resolve_entry(model_ref)

    def work(writer, judge_backend) -> list[dict]:
        rows = answer_rows(items, model_ref, answering, config, on_progress)
        if judge_entry is None:
            for row in rows:
                writer.append(row)
        else:
            judge_rows(judge_backend(), rows, settings, writer.append, on_progress)
        return rows

    summary: dict[str, Any] = {
        "models": [model_ref] if model_ref else [], "judge": judge_ref or "human",
        "rubric": [c.to_dict() for c in settings.criteria], "judge_prompt_version": JUDGE_PROMPT_VERSION,
        "prompts": len(items), "settings": run_settings(settings, answering)}
    writer, rows = record_run("judge", summary, save_dir, judge_entry, config, work)
    summary.update(answers=len(rows), models=summary["models"] or sorted({r["model"] for r in rows}),
                   scores=summarize_scores(rows, [c.name for c in settings.criteria]))
    writer.write_summary(summary)
    return Run(writer.directory, writer.full_summary(summary), sorted(rows, key=lambda r: (r["index"], r["sample"])))
