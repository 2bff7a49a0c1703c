"""Function calling for local models: tools into the prompt, tool calls out of the answer.

A chat template that knows about tools renders them itself. For one that does not (SmolLM2-135M's),
the tools go into a system message in a documented, versioned format (FALLBACK_VERSION below), and
calls come back as `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks. When a call is
required (`tool_choice` "required" or a named function), the answer is decoded under a JSON schema
(an array of calls, each one's arguments matching its function's parameters), so it always parses.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from llmctl.backends.base import GenerationRequest, ToolCall
from llmctl.errors import UsageError

FALLBACK_VERSION = "llmctl-tools-v1"
FALLBACK_PROMPT = """You can call functions ({version}). They are described here as JSON:
<tools>
{tools}
</tools>
To call functions, answer with one block per call and nothing else:
<tool_call>{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}</tool_call>
Results come back in <tool_response> blocks. If no function is needed, answer normally."""
MAX_PARALLEL_CALLS = 8  # a bound on the calls of one answer, so a constrained array always ends
CALL_BLOCK = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.DOTALL)


def check_tools(tools: Any, tool_choice: Any) -> None:
    """A malformed `tools` list or a `tool_choice` naming no offered tool is a UsageError."""
    if not isinstance(tools, list):
        raise UsageError("'tools' must be a list of {\"type\": \"function\", \"function\": {...}}")
    names = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise UsageError(f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": ..., ...}}}}")
        if "parameters" in fn and not isinstance(fn["parameters"], dict):
            raise UsageError(f"tools[{i}].function.parameters must be a JSON schema object")
        names.append(fn["name"])
    if isinstance(tool_choice, str):
        if tool_choice not in ("auto", "none", "required"):
            raise UsageError("'tool_choice' must be auto, none, required or {\"type\": \"function\", ...}")
        if tool_choice == "required" and not tools:
            raise UsageError("'tool_choice' is required but no tools are given")
        return
    name = ((tool_choice or {}).get("function") or {}).get("name") if isinstance(tool_choice, dict) else None
    if not isinstance(name, str):
        raise UsageError("'tool_choice' must be auto, none, required or {\"type\": \"function\", \"function\": {\"name\": ...}}")
    if name not in names:
        raise UsageError(f"'tool_choice' names the function '{name}', which is not in 'tools'")


def _function(tool: dict) -> dict:
    return tool["function"]


def call_schema(request: GenerationRequest) -> dict | None:
    """The JSON schema a required tool call must match, or None when the model may answer freely."""
    choice, tools = request.tool_choice, request.tools
    if not tools or choice in ("auto", "none"):
        return None
    if isinstance(choice, dict):
        tools = [t for t in tools if _function(t)["name"] == choice["function"]["name"]]
    calls = [{"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
              "properties": {"name": {"const": _function(t)["name"]},
                             "arguments": _function(t).get("parameters") or {"type": "object"}}} for t in tools]
    item = calls[0] if len(calls) == 1 else {"anyOf": calls}
    schema = {"type": "array", "items": item, "minItems": 1,
              "maxItems": MAX_PARALLEL_CALLS if request.parallel_tool_calls else 1}
    return schema


def template_has_tools(tokenizer) -> bool:
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and "tools" in template


def _call_text(call: ToolCall) -> str:
    try:
        arguments = json.loads(call.arguments)
    except (TypeError, ValueError):
        arguments = call.arguments
    return "<tool_call>" + json.dumps({"name": call.name, "arguments": arguments}) + "</tool_call>"


def chat_messages(request: GenerationRequest, tokenizer) -> tuple[list[dict], list[dict] | None]:
    """The messages (and tools argument) for the tokenizer's chat template."""
    offered = request.tools if request.tools and request.tool_choice != "none" else []
    native = template_has_tools(tokenizer)
    messages = []
    for m in request.messages:
        if native and m.tool_calls:
            messages.append({"role": "assistant", "content": m.content, "tool_calls": [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": _arguments(c)}}
                for c in m.tool_calls]})
        elif native and m.role == "tool":
            messages.append({"role": "tool", "content": m.content, "tool_call_id": m.tool_call_id})
        elif m.tool_calls:
            text = "\n".join([m.content] * bool(m.content) + [_call_text(c) for c in m.tool_calls])
            messages.append({"role": "assistant", "content": text})
        elif m.role == "tool":  # a template without a tool role: the result as a user turn, tagged
            messages.append({"role": "user", "content": f"<tool_response>\n{m.content}\n</tool_response>"})
        else:
            messages.append({"role": m.role, "content": m.content})
    if offered and not native:
        prompt = FALLBACK_PROMPT.format(version=FALLBACK_VERSION,
                                        tools="\n".join(json.dumps(_function(t)) for t in offered))
        if messages and messages[0]["role"] == "system":
            messages[0] = {"role": "system", "content": messages[0]["content"] + "\n\n" + prompt}
        else:
            messages.insert(0, {"role": "system", "content": prompt})
    return messages, (offered if offered and native else None)


def _arguments(call: ToolCall) -> Any:
    try:
        return json.loads(call.arguments)
    except (TypeError, ValueError):
        return call.arguments


def _new_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def parse_tool_calls(text: str, request: GenerationRequest) -> list[ToolCall]:
    """The tool calls in an answer: the JSON array of a constrained call, or <tool_call> blocks."""
    if not request.tools or request.tool_choice == "none":
        return []
    names = {_function(t)["name"] for t in request.tools}
    found: list[Any] = []
    if call_schema(request) is not None:  # decoded under the call schema: one JSON array
        try:
            found = json.loads(text)
        except ValueError:
            return []  # cut off by max_tokens: finish_reason "length" says so
    else:
        for block in CALL_BLOCK.findall(text):
            try:
                found.append(json.loads(block))
            except ValueError:
                continue
    calls = []
    for call in found if isinstance(found, list) else []:
        if isinstance(call, dict) and call.get("name") in names and isinstance(call.get("arguments"), (dict, str)):
            arguments = call["arguments"] if isinstance(call["arguments"], str) else json.dumps(call["arguments"])
            calls.append(ToolCall(_new_id(), call["name"], arguments))
    return calls if request.parallel_tool_calls else calls[:1]


def resolve_constraint(request: GenerationRequest) -> dict | None:
    """The schema local decoding must follow for this request: a required tool call, else the
    response_format's schema, else None."""
    from llmctl.backends.constrained import response_schema

    if request.tools or not isinstance(request.tool_choice, str) or request.tool_choice != "auto":
        check_tools(request.tools, request.tool_choice)
    schema = call_schema(request)
    if schema is not None:
        from llmctl.backends.constrained import check_schema

        check_schema(schema, "a tool's parameters schema")
        return schema
    return response_schema(request.response_format)
