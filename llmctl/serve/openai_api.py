"""The OpenAI wire format: request bodies to our GenerationRequest, our chunks to OpenAI's shapes."""

from __future__ import annotations

import json
import math
import time
import uuid
from typing import Any

from llmctl.backends.base import GenerationRequest, Message, SamplingParams, TokenInfo, ToolCall
from llmctl.errors import UsageError


class APIError(Exception):
    """An OpenAI-shaped error: status code, message, type and the offending parameter."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


MAX_SEED = 2**63 - 1 - 8  # n choices use seed, seed+1, ...: every one must fit torch's 64-bit seed


def parse_body(data: bytes) -> dict:
    """The JSON object of a request body; anything else is a 400 (or 422 for JSON that is not an object)."""
    try:
        body = json.loads(data or b"null")
        # A lone surrogate (\ud800) parses, then breaks every tokenizer: refuse it here.
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except (json.JSONDecodeError, UnicodeError) as e:
        raise APIError(400, f"the body is not valid JSON: {e}") from None
    except RecursionError:
        raise APIError(400, "the body is not valid JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise APIError(422, "the body must be a JSON object")
    return body


def _number(body: dict, key: str, kind: type, default: Any, low: float | None = None, high: float | None = None):
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
            (kind is int and not float(value).is_integer()):
        raise APIError(400, f"'{key}' must be {'an integer' if kind is int else 'a finite number'}", param=key)
    value = kind(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise APIError(400, f"'{key}' must be between {low} and {high}, got {value}", param=key)
    return value


def parse_request(body: Any, chat: bool, default_max_tokens: int,
                  max_tokens_limit: int | None = None) -> tuple[str, GenerationRequest, int, bool]:
    """(model, request, n, stream) from a /v1/chat/completions or /v1/completions body; `max_tokens`
    is capped at `max_tokens_limit` (and later at the model's context)."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "'model' is required", param="model")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise APIError(400, "'stop' must be a string or a list of strings", param="stop")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(key)
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0):
        raise APIError(400, f"'{key}' must be a positive integer", param=key)
    max_tokens = max_tokens or default_max_tokens
    params = SamplingParams(
        temperature=_number(body, "temperature", float, 1.0, 0, 2), top_p=_number(body, "top_p", float, 1.0, 0, 1),
        top_k=_number(body, "top_k", int, 0, 0, None), seed=_number(body, "seed", int, None, 0, MAX_SEED),
        repetition_penalty=_number(body, "repetition_penalty", float, 1.0, 0.01, 10),
        max_tokens=min(max_tokens, max_tokens_limit) if max_tokens_limit else max_tokens, stop=stop)
    for flag in ("stream", "logprobs"):
        if body.get(flag) is not None and not isinstance(body[flag], bool) and not (flag == "logprobs" and not chat):
            raise APIError(400, f"'{flag}' must be true or false", param=flag)
    n = _number(body, "n", int, 1, 1, 8)
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise APIError(400, "'messages' must be a non-empty list", param="messages")
        parsed = [_message(m) for m in messages]
        top = _number(body, "top_logprobs", int, 0, 0, 20) if body.get("logprobs") else 0
        if body.get("logprobs") and not top:
            top = 1
        request = GenerationRequest(parsed, params, raw=False, top_probs=top)
        _function_calling(body, request)
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise APIError(400, "'prompt' must be a string", param="prompt")
        top = _number(body, "logprobs", int, 0, 0, 20)
        request = GenerationRequest([Message("user", prompt)], params, raw=True, top_probs=top)
    return model, request, n, bool(body.get("stream"))


def _message(m: Any) -> Message:
    if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "developer", "tool"):
        raise APIError(400, "each message needs a role: system, user, assistant or tool", param="messages")
    content = m.get("content")
    if isinstance(content, list):  # content parts: keep the text ones
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    calls = m.get("tool_calls") or []
    if content is None and (calls or m["role"] == "assistant"):
        content = ""  # an assistant turn that only called tools
    if not isinstance(content, str):
        raise APIError(400, "message content must be a string", param="messages")
    if m["role"] == "tool" and not (isinstance(m.get("tool_call_id"), str) and m["tool_call_id"]):
        raise APIError(400, "a message with role 'tool' needs the 'tool_call_id' it answers", param="messages")
    if not isinstance(calls, list) or not all(
            isinstance(c, dict) and isinstance(c.get("function"), dict) and isinstance(c["function"].get("name"), str)
            for c in calls):
        raise APIError(400, "message tool_calls must be [{\"id\": ..., \"function\": {\"name\": ..., "
                            "\"arguments\": ...}}]", param="messages")
    return Message("system" if m["role"] == "developer" else m["role"], content,
                   tool_calls=[ToolCall(str(c.get("id") or ""), c["function"]["name"],
                                        _arguments_text(c["function"].get("arguments"))) for c in calls],
                   tool_call_id=m.get("tool_call_id"))


def _arguments_text(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments if arguments is not None else {})


def _function_calling(body: dict, request: GenerationRequest) -> None:
    """tools, tool_choice, parallel_tool_calls and response_format, checked here so a bad one is a 400
    naming its field before anything is queued."""
    from llmctl.backends.constrained import check_schema, response_schema
    from llmctl.backends.tools import call_schema, check_tools

    request.tools = body.get("tools") or []
    request.tool_choice = body.get("tool_choice") or ("auto" if request.tools else "none")
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise APIError(400, "'parallel_tool_calls' must be true or false", param="parallel_tool_calls")
    request.parallel_tool_calls = parallel
    try:
        check_tools(request.tools, request.tool_choice)
        if (schema := call_schema(request)) is not None:
            check_schema(schema, "the parameters schema of a tool")
    except UsageError as e:
        raise APIError(400, str(e), param="tool_choice" if "'tool_choice'" in str(e) else "tools") from None
    request.response_format = body.get("response_format")
    try:
        response_schema(request.response_format)
    except UsageError as e:
        raise APIError(400, str(e), param="response_format") from None


def tool_calls_doc(calls: list[ToolCall], delta: bool) -> list[dict]:
    return [{**({"index": i} if delta else {}), "id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": c.arguments}} for i, c in enumerate(calls)]


def _logprob(p: float | None) -> float:
    return math.log(p) if p and p > 0 else -9999.0


def chat_logprobs(tokens: list[TokenInfo]) -> dict:
    return {"content": [{"token": t.token, "logprob": _logprob(t.prob), "bytes": list(t.token.encode()),
                         "top_logprobs": [{"token": c.token, "logprob": _logprob(c.prob), "bytes": list(c.token.encode())}
                                          for c in t.top]} for t in tokens]}


def completion_logprobs(tokens: list[TokenInfo]) -> dict:
    return {"tokens": [t.token for t in tokens], "token_logprobs": [_logprob(t.prob) for t in tokens],
            "top_logprobs": [{c.token: _logprob(c.prob) for c in t.top} for t in tokens], "text_offset": []}


def add_usage(usage: dict, use: dict) -> None:
    """One choice's usage into the reply's: the prompt is the same for every choice (counted once),
    completions add up; prompt tokens served from the prefix cache as OpenAI reports them."""
    usage["prompt_tokens"] = use.get("prompt_tokens", 0)
    usage["completion_tokens"] += use.get("completion_tokens", 0)
    if "cached_tokens" in use:
        usage["prompt_tokens_details"] = {"cached_tokens": use["cached_tokens"]}


def envelope(chat: bool, model: str, choices: list, stream: bool, usage: dict | None = None, rid: str | None = None) -> dict:
    kind = ("chat.completion.chunk" if stream else "chat.completion") if chat else "text_completion"
    doc = {"id": rid or f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", "object": kind,
           "created": int(time.time()), "model": model, "choices": choices}
    if usage is not None:
        doc["usage"] = {**usage, "total_tokens": usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)}
    return doc


def choice(chat: bool, index: int, text: str, finish: str | None, tokens: list[TokenInfo], want_logprobs: bool,
           delta: bool, tool_calls: list[ToolCall] | None = None) -> dict:
    out: dict[str, Any] = {"index": index, "finish_reason": finish}
    if chat:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if tool_calls:
            message.update(content=None, tool_calls=tool_calls_doc(tool_calls, delta))
        out["delta" if delta else "message"] = message
        out["logprobs"] = chat_logprobs(tokens) if want_logprobs else None
    else:
        out["text"] = text
        out["logprobs"] = completion_logprobs(tokens) if want_logprobs else None
    return out
