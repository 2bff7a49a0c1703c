"""Reports for CI systems: JUnit XML (one test case per gate, and per question for `eval exact`), and a
Markdown table appended to GitHub Actions' step summary when GITHUB_STEP_SUMMARY is set."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmctl.errors import UsageError
from llmctl.evaluate.gates import GateResult
from llmctl.fsutil import atomic_write_text

MESSAGE_CHARS = 500  # of an answer in a failure message: CI pages show the message on one line


@dataclass
class Case:
    """One JUnit test case: passed when `failure` is None."""

    classname: str
    name: str
    failure: str | None = None
    details: str = ""


def check_report_path(path: Path | None) -> None:
    """A report path whose folder is missing fails before the run, not after it."""
    if path is not None and not Path(path).expanduser().resolve().parent.is_dir():
        raise UsageError(f"--junit {path}: the folder {Path(path).expanduser().resolve().parent} does not exist")


def gate_cases(results: list[GateResult]) -> list[Case]:
    return [Case("gates", r.gate, None if r.passed else r.message, r.message) for r in results]


def exact_cases(rows: list[dict[str, Any]]) -> list[Case]:
    """A test case per question: failed when the normalised answer is not one of the accepted ones."""
    cases = []
    for number, row in enumerate(rows, 1):
        answer = (row.get("response") or "").strip()
        message = (f"answer: {answer[:MESSAGE_CHARS]!r}; expected: " + " | ".join(repr(a) for a in row["answers"]))
        if row.get("error"):
            message = f"no answer: {row['error']}"
        cases.append(Case("exact", f"{number}: {row['question'][:100]}", None if row["exact"] else message, message))
    return cases


def junit_xml(suite: str, cases: list[Case]) -> str:
    failures = sum(c.failure is not None for c in cases)
    root = ET.Element("testsuites", name="llmctl eval", tests=str(len(cases)), failures=str(failures))
    node = ET.SubElement(root, "testsuite", name=suite, tests=str(len(cases)), failures=str(failures), errors="0")
    for case in cases:
        element = ET.SubElement(node, "testcase", classname=case.classname, name=case.name)
        if case.failure is not None:
            failure = ET.SubElement(element, "failure", message=case.failure, type="AssertionError")
            failure.text = case.details or case.failure
        elif case.details:
            ET.SubElement(element, "system-out").text = case.details
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(path: Path, suite: str, cases: list[Case]) -> None:
    try:
        atomic_write_text(Path(path).expanduser(), junit_xml(suite, cases))
    except OSError as e:
        raise UsageError(f"cannot write --junit {path}: {e}") from None


def fmt_value(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def step_summary(title: str, metrics: dict[str, Any], results: list[GateResult]) -> str:
    """Markdown: a table of the figures, then one of the gates with a pass/fail mark."""
    lines = [f"### {title}", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {name} | {fmt_value(value)} |" for name, value in metrics.items()]
    if results:
        lines += ["", "| gate | result | detail |", "| --- | --- | --- |"]
        lines += [f"| `{r.gate}` | {'✅ pass' if r.passed else '❌ FAIL'} | {r.message} |" for r in results]
    return "\n".join(lines) + "\n\n"


def append_step_summary(title: str, metrics: dict[str, Any], results: list[GateResult]) -> bool:
    """Append to $GITHUB_STEP_SUMMARY when it is set (GitHub Actions); True if written."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return False
    try:
        with open(target, "a", encoding="utf-8") as f:
            f.write(step_summary(title, metrics, results))
    except OSError as e:
        raise UsageError(f"cannot append to GITHUB_STEP_SUMMARY {target}: {e}") from None
    return True
