"""What a judge scores: built-in criteria (grammar, creativity, ...) and custom ones from a TOML/JSON file."""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmctl.errors import UsageError
from llmctl.jsonl import read_text


@dataclass
class Criterion:
    name: str
    description: str
    scale: str = ""  # optional guidance: what a 1, a 5 and a 10 look like
    uses_reference: bool = False  # show the row's reference answer to the judge

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


BUILTIN_CRITERIA = {c.name: c for c in [
    Criterion("age-appropriateness",
              "Is the answer suitable for a young reader (about 5 to 10 years old): safe content, simple words, "
              "short sentences, a kind tone?",
              "1 = frightening, adult or confusing for a child; 5 = acceptable but hard or dull for a child; "
              "10 = perfectly pitched for a young reader"),
    Criterion("grammar", "Are spelling, grammar and punctuation correct, and do the sentences read fluently?",
              "1 = mostly ungrammatical or garbled; 5 = understandable with several errors; 10 = flawless"),
    Criterion("choice-of-story",
              "Does the answer pick fitting content for the request: a story, topic or example that matches what "
              "was asked for (theme, characters, length, audience)?",
              "1 = unrelated to the request; 5 = loosely related; 10 = exactly the kind of content asked for"),
    Criterion("creativity", "Is the answer original and imaginative rather than generic or repetitive?",
              "1 = copied, repetitive or empty; 5 = competent but predictable; 10 = fresh and surprising"),
    Criterion("helpfulness", "Does the answer do what the user asked, completely and usefully?",
              "1 = ignores the request; 5 = partly helpful; 10 = fully answers it with nothing missing"),
    Criterion("correctness",
              "Is the answer factually and logically correct? When a reference answer is given, does the answer "
              "agree with it?",
              "1 = wrong; 5 = partly right; 10 = entirely correct", uses_reference=True),
]}
DEFAULT_RUBRIC = "helpfulness"


def known_names(custom: dict[str, Criterion]) -> str:
    return ", ".join(list(BUILTIN_CRITERIA) + [n for n in custom if n not in BUILTIN_CRITERIA])


def criterion_from_value(name: str, value: Any, where: str) -> Criterion:
    """`name = "description"` or `[name]` with description, optional scale and uses_reference."""
    if isinstance(value, str) and value.strip():
        return Criterion(name, value.strip())
    if isinstance(value, dict) and isinstance(value.get("description"), str) and value["description"].strip():
        scale = value.get("scale", "")
        if not isinstance(scale, str):
            raise UsageError(f"{where}: criterion '{name}': 'scale' must be a string")
        return Criterion(name, value["description"].strip(), scale.strip(), bool(value.get("uses_reference", False)))
    raise UsageError(f"{where}: criterion '{name}' needs a description",
                     hint='write name = "what to judge", or a table with description and optional scale')


def load_rubric_file(path: Path) -> dict[str, Criterion]:
    """Custom criteria from TOML or JSON: name → description, or name → {description, scale}."""
    path = Path(path)
    text = read_text(path, f"--rubric-file {path}: no such file")
    try:
        if path.suffix.lower() == ".toml":
            doc = tomllib.loads(text)
        elif path.suffix.lower() == ".json":
            doc = json.loads(text)
        else:
            raise UsageError(f"--rubric-file {path}: expected a .toml or .json file")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"--rubric-file {path}: cannot parse it ({e})") from None
    if isinstance(doc, dict) and isinstance(doc.get("criteria"), dict):  # allow a [criteria] table too
        doc = doc["criteria"]
    if not isinstance(doc, dict) or not doc:
        raise UsageError(f"--rubric-file {path}: expected a table of criteria (name → description)")
    return {name: criterion_from_value(name, value, str(path)) for name, value in doc.items()}


def select_criteria(names: str | None, rubric_file: Path | None = None) -> list[Criterion]:
    """The criteria named in `--rubric a,b,c` (built in or from the file). With no names: every criterion
    of the file, else the default rubric."""
    custom = load_rubric_file(rubric_file) if rubric_file else {}
    available = {**BUILTIN_CRITERIA, **custom}
    if not names or not names.strip():
        wanted = list(custom) if custom else [DEFAULT_RUBRIC]
    else:
        wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in available]
    if unknown:
        raise UsageError(f"unknown rubric criterion '{unknown[0]}'",
                         hint=f"known: {known_names(custom)}; or define it in --rubric-file")
    return [available[n] for n in dict.fromkeys(wanted)]  # dict: duplicates dropped, order kept
