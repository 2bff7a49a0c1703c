"""Structured output and tools for one request from files: `llmctl prompt --schema`, `--json-object`,
`--tool` (the same request fields the server fills from OpenAI's `response_format` and `tools`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from llmctl.backends.base import GenerationRequest
from llmctl.errors import UsageError


def read_json_file(path: Path, flag: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"cannot read {flag} {path}: {e.strerror or e}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"{flag} {path} is not JSON: {e}") from None


def tools_from_files(paths: list[Path]) -> list[dict]:
    """OpenAI tool objects from files holding one tool, a list of them, or a bare function
    ({"name", "description", "parameters"})."""
    tools = []
    for path in paths:
        doc = read_json_file(path, "--tool")
        for item in doc if isinstance(doc, list) else [doc]:
            if isinstance(item, dict) and "function" not in item and "name" in item:
                item = {"type": "function", "function": item}
            tools.append(item)
    return tools


def with_structure(request: GenerationRequest, *, schema: Path | None = None, json_object: bool = False,
                   tools: list[Path] | None = None, tool_choice: str = "auto") -> GenerationRequest:
    """The request with a response format and/or tools; each is checked now (UsageError naming why)."""
    from llmctl.backends.constrained import check_schema, response_schema
    from llmctl.backends.tools import call_schema, check_tools

    if schema is not None and json_object:
        raise UsageError("give --schema or --json-object, not both")
    fmt = None
    if schema is not None:
        fmt = {"type": "json_schema", "json_schema": {"name": Path(schema).stem, "schema": read_json_file(schema, "--schema")}}
    elif json_object:
        fmt = {"type": "json_object"}
    response_schema(fmt)
    offered = tools_from_files(tools or [])
    choice: str | dict = tool_choice if tool_choice in ("auto", "none", "required") else \
        {"type": "function", "function": {"name": tool_choice}}
    if offered or tool_choice != "auto":
        check_tools(offered, choice)
    request = dataclasses.replace(request, response_format=fmt, tools=offered, tool_choice=choice if offered else "none")
    if (required := call_schema(request)) is not None:
        check_schema(required, "the parameters schema of a --tool")
    return request
