"""OpenAI and every OpenAI-compatible server (vLLM, ollama, llama.cpp, `llmctl serve`), through the
official `openai` SDK. Its client gives timeouts and retries with exponential backoff on 429, 5xx
and connection errors; here we map our sampling knobs onto the wire and its errors onto ours.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Iterator
from urllib.parse import urlparse

# Safe at module level: llmctl.backends imports this module only when an OpenAI model is loaded.
import openai

from llmctl.backends.base import (Backend, Chunk, GenerationRequest, Message, RenderedPrompt, TokenInfo, TokenProb,
                                  ToolCall)
from llmctl.config import Config
from llmctl.errors import LlmctlError, ModelError, RemoteError, UsageError
from llmctl.providers import PROVIDERS
from llmctl.registry import ModelEntry

OFFICIAL_URL = "https://api.openai.com/v1"
NO_KEY = "sk-no-key-required"  # the SDK insists on a key; compatible servers often need none
MAX_STOPS = 4  # OpenAI's limit; compatible servers copy it
MAX_TOP_LOGPROBS = 20
# Request fields back to the flags a user typed, for "the server rejected ..." messages.
FLAG_FOR_FIELD = {"top_k": "--top-k", "repetition_penalty": "--repetition-penalty", "seed": "--seed",
                  "temperature": "--temperature", "top_p": "--top-p", "stop": "--stop",
                  "max_tokens": "--max-tokens", "max_completion_tokens": "--max-tokens",
                  "logprobs": "--top-probs", "top_logprobs": "--top-probs"}


class OpenAIBackend(Backend):
    capabilities = PROVIDERS["openai"].capabilities

    def __init__(self, entry: ModelEntry, config: Config):
        self.name = entry.name
        self.model_id = entry.source
        self.base_url = (entry.base_url or config.openai.base_url or OFFICIAL_URL).rstrip("/")
        self.official = urlparse(self.base_url).hostname == "api.openai.com"
        self.timeout = config.openai.timeout
        self.retries = config.openai.retries
        key = _api_key(entry, config)
        if not key and self.official:
            raise RemoteError("no OpenAI API key", hint="export OPENAI_API_KEY=... (llmctl never stores keys)")
        # The key lives only inside the SDK client, never in an attribute of ours (repr, vars, logs).
        self.client = openai.OpenAI(api_key=key or NO_KEY, base_url=self.base_url, timeout=self.timeout,
                                    max_retries=self.retries)
        self._use_max_completion_tokens = False

    def __repr__(self) -> str:
        return f"OpenAIBackend(name={self.name!r}, model={self.model_id!r}, base_url={self.base_url!r})"

    def render(self, request: GenerationRequest) -> RenderedPrompt:
        if request.raw:
            return RenderedPrompt(text=_raw_prompt(request), tokens=None, mode="completion")
        text = "\n".join(f"<|{m.role}|>\n{m.content}" for m in request.messages)
        return RenderedPrompt(text=text, tokens=None, mode="chat")

    def close(self) -> None:
        self.client.close()

    # -- requests ---------------------------------------------------------------------------------
    def _generate(self, request: GenerationRequest) -> Iterator[Chunk]:
        args = self._arguments(request)  # checked now, so a bad flag fails before anything is sent
        return self._stream(request, args)

    def _arguments(self, request: GenerationRequest) -> dict[str, Any]:
        p = request.params
        if len(p.stop) > MAX_STOPS:
            raise UsageError(f"OpenAI-compatible APIs take at most {MAX_STOPS} --stop values, got {len(p.stop)}")
        extra: dict[str, Any] = {}  # vLLM, llama.cpp and llmctl serve read these names from the body
        if p.top_k > 0:
            extra["top_k"] = p.top_k
        if p.repetition_penalty != 1.0:
            extra["repetition_penalty"] = p.repetition_penalty
        if extra and self.official:  # refused up front: api.openai.com would reject it, never drop it
            flags = " and ".join(FLAG_FOR_FIELD[k] for k in extra)
            raise UsageError(f"api.openai.com does not support {flags}",
                             hint="drop it, or use --base-url for a compatible server (vLLM, llama.cpp, llmctl serve)")
        args: dict[str, Any] = {"model": self.model_id, "temperature": p.temperature, "top_p": p.top_p,
                                "stream": True, "stream_options": {"include_usage": True}}
        args["max_completion_tokens" if self._use_max_completion_tokens else "max_tokens"] = p.max_tokens
        if p.seed is not None:  # 0 is a seed
            args["seed"] = p.seed
        if p.stop:
            args["stop"] = list(p.stop)
        if extra:
            args["extra_body"] = extra
        # Passed through as given: the remote server does its own function calling and structured output.
        if request.tools and not request.raw:
            args.update(tools=request.tools, tool_choice=request.tool_choice)
            if not request.parallel_tool_calls:
                args["parallel_tool_calls"] = False
        if request.response_format is not None and not request.raw:
            args["response_format"] = request.response_format
        k = request.top_probs
        if k > 0 and not request.raw:
            if k > MAX_TOP_LOGPROBS:
                raise UsageError(f"--top-probs is at most {MAX_TOP_LOGPROBS} for OpenAI-compatible chat APIs, got {k}")
            args.update(logprobs=True, top_logprobs=k)
        elif k > 0:
            args["logprobs"] = k  # the completions endpoint takes the count itself
        return args

    def _stream(self, request: GenerationRequest, args: dict[str, Any]) -> Iterator[Chunk]:
        stream = self._open(request, args)
        finish, usage, produced, calls = None, None, 0, {}
        try:
            for event in stream:
                if getattr(event, "usage", None):  # the last event, when the server honours include_usage
                    usage = {name: value for name in ("prompt_tokens", "completion_tokens")
                             if (value := getattr(event.usage, name, None)) is not None}
                for choice in event.choices[:1]:
                    text = (choice.text if request.raw else choice.delta.content) or ""
                    tokens = _token_infos(choice.logprobs, request.raw)
                    produced += len(tokens) or (1 if text else 0)
                    finish = choice.finish_reason or finish
                    for delta in (None if request.raw else getattr(choice.delta, "tool_calls", None)) or []:
                        _add_call_delta(calls, delta)  # a call arrives in pieces: id and name, then arguments
                    if text or tokens:
                        yield Chunk(text=text, tokens=tokens)
        except openai.OpenAIError as e:  # a stream can fail halfway: timeout, dropped connection, error event
            raise self._translate(e) from None
        finally:
            stream.close()  # also runs when the caller stops early (Response.cancel closes this generator)
        yield Chunk(finish_reason=finish or "stop", usage=usage or {"completion_tokens": produced},
                    tool_calls=[ToolCall(c["id"], c["name"], c["arguments"]) for _, c in sorted(calls.items())])

    def _open(self, request: GenerationRequest, args: dict[str, Any]) -> Any:
        try:
            if request.raw:
                args = {k: v for k, v in args.items() if k != "max_completion_tokens"}
                args.setdefault("max_tokens", request.params.max_tokens)  # the legacy endpoint knows no other name
                return self.client.completions.create(prompt=_raw_prompt(request), **args)
            return self.client.chat.completions.create(messages=[_wire_message(m) for m in request.messages], **args)
        except openai.BadRequestError as e:
            if not request.raw and "max_tokens" in args and "max_completion_tokens" in _message(e):
                # Newer OpenAI models renamed the field; retry once with the new name, and remember it.
                self._use_max_completion_tokens = True
                args = dict(args)
                args["max_completion_tokens"] = args.pop("max_tokens")
                return self._open(request, args)
            raise self._translate(e) from None
        except openai.OpenAIError as e:
            raise self._translate(e) from None

    # -- errors -----------------------------------------------------------------------------------
    def _translate(self, e: openai.OpenAIError) -> LlmctlError:
        """One clear line per failure; the order matters (the SDK's timeout is a connection error)."""
        where, message = self.base_url, self._scrub(_message(e))
        if isinstance(e, openai.APITimeoutError):
            return RemoteError(f"no response from {where} within {self.timeout:g} s",
                               hint="raise --timeout, or check that the server is not overloaded")
        if isinstance(e, openai.APIConnectionError):
            return RemoteError(f"cannot connect to {where}", hint="is the server running? check --base-url")
        if isinstance(e, openai.AuthenticationError):
            return RemoteError(f"API key rejected by {where} (401)",
                               hint="check OPENAI_API_KEY (or the variable named by the model's api_key_env)")
        if isinstance(e, openai.PermissionDeniedError):
            return RemoteError(f"access denied by {where} (403): {message}", hint="check what this key may use")
        if isinstance(e, openai.NotFoundError):
            return ModelError(f"model '{self.model_id}' not found on {where} (404)",
                              hint="check the model name (GET /models lists them) and that --base-url ends in /v1")
        if isinstance(e, openai.RateLimitError):
            if e.code == "insufficient_quota":  # retrying cannot help: the account is out of credit
                return RemoteError(f"quota exceeded on {where} (429): {message}", hint="check your plan and billing")
            return RemoteError(f"rate limited by {where} (429) after {self.retries} retries",
                               hint="wait and retry, or raise --retries")
        if isinstance(e, (openai.BadRequestError, openai.UnprocessableEntityError)):
            field = _rejected_field(e, message)
            if field:
                flag = FLAG_FOR_FIELD[field]
                return UsageError(f"server rejected parameter '{field}' ({flag}): {message}",
                                  hint=f"drop {flag} or change its value for this server")
            return UsageError(f"server rejected the request: {message}")
        if isinstance(e, openai.APIStatusError):
            kind = "server error" if e.status_code >= 500 else "unexpected answer"
            return RemoteError(f"{kind} {e.status_code} from {where}: {message}")
        if isinstance(e, openai.APIError):  # an error event inside an otherwise successful stream
            return RemoteError(f"server error while streaming from {where}: {message}")
        return RemoteError(f"request to {where} failed: {message}")

    def _scrub(self, text: str) -> str:
        # Some servers echo the key they refused ("Incorrect API key provided: sk-..."): never repeat it.
        key = self.client.api_key
        return text.replace(key, "***") if isinstance(key, str) and key and key != NO_KEY else text


def _api_key(entry: ModelEntry, config: Config) -> str | None:
    if entry.api_key_env:
        key = os.environ.get(entry.api_key_env)
        if not key:
            raise RemoteError(f"model '{entry.name}' reads its API key from ${entry.api_key_env}, which is not set",
                              hint=f"export {entry.api_key_env}=...")
        return key
    return config.openai.api_key


def _wire_message(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                             for c in m.tool_calls]
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    return out


def _add_call_delta(calls: dict[int, dict], delta: Any) -> None:
    call = calls.setdefault(getattr(delta, "index", 0) or 0, {"id": "", "name": "", "arguments": ""})
    call["id"] = getattr(delta, "id", None) or call["id"]
    fn = getattr(delta, "function", None)
    if fn is not None:
        call["name"] = getattr(fn, "name", None) or call["name"]
        call["arguments"] += getattr(fn, "arguments", None) or ""


def _raw_prompt(request: GenerationRequest) -> str:
    return "".join(m.content for m in request.messages)


def _message(e: Exception) -> str:
    body = getattr(e, "body", None)  # the SDK keeps the "error" object of an OpenAI error body
    if isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"]:
        return body["message"]
    return str(getattr(e, "message", None) or e)


def _rejected_field(e: Exception, message: str) -> str | None:
    param = getattr(e, "param", None)
    if isinstance(param, str) and param in FLAG_FOR_FIELD:
        return param
    # api.openai.com leaves param empty for unknown fields ("Unrecognized request argument supplied: top_k").
    for field in FLAG_FOR_FIELD:
        if re.search(rf"(?<![\w-]){field}(?![\w-])", message):
            return field
    return None


def _token_infos(logprobs: Any, raw: bool) -> list[TokenInfo]:
    """OpenAI logprobs (chat: content[].top_logprobs; completions: tokens/top_logprobs) as probabilities."""
    if not logprobs:
        return []
    if not raw:
        return [TokenInfo(token=t.token, prob=math.exp(t.logprob),
                          top=[TokenProb(c.token, math.exp(c.logprob)) for c in (t.top_logprobs or [])])
                for t in (logprobs.content or [])]
    tokens = logprobs.tokens or []
    chosen = logprobs.token_logprobs or [None] * len(tokens)
    tops = logprobs.top_logprobs or [None] * len(tokens)
    out = []
    for token, lp, top in zip(tokens, chosen, tops):
        ranked = sorted((top or {}).items(), key=lambda kv: kv[1], reverse=True)
        out.append(TokenInfo(token=token, prob=math.exp(lp) if lp is not None else None,
                             top=[TokenProb(t, math.exp(v)) for t, v in ranked]))
    return out
