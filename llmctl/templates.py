"""Prompt formats: named chat templates and how few-shot examples become a prompt.

A registry entry's `chat_template` is "auto" (the tokenizer's own, if it has one), "none" (a base
model: raw completion), "alpaca" (the Stanford Alpaca format, for models fine-tuned without a chat
template), or a Jinja template string.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmctl.errors import UsageError
from llmctl.jsonl import parse_jsonl, read_text

ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")

# A Jinja chat template so Alpaca-format models go through the same apply_chat_template path as
# every other chat model (the finetune level trains with exactly this text).
ALPACA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}"
    "{% if loop.first %}" + ALPACA_PREAMBLE + "\n\n{% endif %}"
    "### Instruction:\n{{ message['content'] }}\n\n### Response:\n"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}\n\n"
    "{% endif %}{% endfor %}"
)

NAMED_TEMPLATES = {"alpaca": ALPACA_TEMPLATE}
TEMPLATE_CHOICES = ("auto", "none", *NAMED_TEMPLATES)


def apply_entry_template(entry, tokenizer) -> bool:
    """Give the tokenizer the chat template a registry entry asks for; True if the model takes chats."""
    value = entry.chat_template
    if value in NAMED_TEMPLATES:
        tokenizer.chat_template = NAMED_TEMPLATES[value]
    elif value not in ("auto", "none"):
        tokenizer.chat_template = value
    return value != "none" and bool(getattr(tokenizer, "chat_template", None))


def check_template(value: str) -> str:
    """A registry `chat_template` value: a known name or something that looks like Jinja."""
    if value in TEMPLATE_CHOICES or "{{" in value or "{%" in value:
        return value
    raise UsageError(f"unknown chat template '{value}'",
                     hint="use " + ", ".join(TEMPLATE_CHOICES) + ", or a Jinja template string")


@dataclass
class Shot:
    input: str
    output: str


def load_shots(path: Path) -> list[Shot]:
    """Few-shot examples from a JSONL file of {"input": ..., "output": ...} objects."""
    text = read_text(Path(path), f"shots file not found: {path}")
    shots = []
    for number, row in parse_jsonl(path, text):
        if not isinstance(row, dict):
            raise UsageError(f"{path}:{number}: expected an object with 'input' and 'output'")
        for name in ("input", "output"):
            if not isinstance(row.get(name), str):
                raise UsageError(f"{path}:{number}: field '{name}' is missing or not a string",
                                 hint='each line must look like {"input": "...", "output": "..."}')
        shots.append(Shot(row["input"], row["output"]))
    if not shots:
        raise UsageError(f"shots file {path} has no examples")
    return shots


def completion_prefix(system: str | None, shots: list[Shot], history: list[tuple[str, str]], text: str) -> str:
    """A base model's prompt: what chat models get as turns, written out as text to continue."""
    parts = [system.strip() + "\n\n"] if system else []
    if shots:
        parts += [f"Input: {s.input}\nOutput: {s.output}\n\n" for s in shots]
        parts += [f"Input: {q}\nOutput: {a}\n\n" for q, a in history]
        parts.append(f"Input: {text}\nOutput:")
    else:
        parts += [q + a for q, a in history]
        parts.append(text)
    return "".join(parts)
