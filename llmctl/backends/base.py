"""The one interface every model speaks: remote APIs, local HF models, adapters, pretrained GPTs.

A backend turns a `GenerationRequest` into a stream of `Chunk`s. `Response` wraps that stream:
iterate it to print text as it arrives, or call `.text()` to wait for all of it. The CLI, the chat
REPL and (later) the server and evaluators all use only this.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Literal

from llmctl.providers import Capabilities

if TYPE_CHECKING:
    from llmctl.config import Config
    from llmctl.registry import ModelEntry

Role = Literal["system", "user", "assistant", "tool"]


@dataclass
class ToolCall:
    """A function the model asks the caller to run: its name and its arguments as a JSON string."""

    id: str
    name: str
    arguments: str


@dataclass
class Message:
    role: Role
    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)  # assistant turns that called tools
    tool_call_id: str | None = None  # role "tool": the call this message answers


@dataclass
class SamplingParams:
    """One meaning per knob on every backend; each backend maps them to its own API."""

    temperature: float = 0.7  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_tokens: int = 256
    repetition_penalty: float = 1.0  # 1 = off; HF/vLLM meaning (divide positive logits)
    seed: int | None = None  # 0 is a valid seed
    stop: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GenerationRequest:
    messages: list[Message]
    params: SamplingParams = field(default_factory=SamplingParams)
    raw: bool = False  # complete the text as is, even on a chat model
    top_probs: int = 0  # K > 0: report the K likeliest next tokens at every generated position
    # Function calling, in OpenAI's shapes: [{"type": "function", "function": {name, description, parameters}}],
    # and "auto", "none", "required" or {"type": "function", "function": {"name": ...}}.
    tools: list[dict] = field(default_factory=list)
    tool_choice: str | dict = "auto"
    parallel_tool_calls: bool = True
    response_format: dict | None = None  # {"type": "json_object"} or {"type": "json_schema", "json_schema": {...}}
    # What local decoding must produce, resolved from the two above (llmctl.backends.constrained):
    # a JSON schema the answer must match, or None for free text.
    constraint: dict | None = None


@dataclass
class TokenProb:
    token: str
    prob: float


@dataclass
class TokenInfo:
    """One generated token and the distribution it was drawn from (after temperature)."""

    token: str
    prob: float | None
    top: list[TokenProb]


@dataclass
class RenderedPrompt:
    """Exactly what the model sees: the text after templating, and its length in tokens."""

    text: str
    tokens: int | None
    mode: Literal["chat", "completion"]


@dataclass
class Chunk:
    text: str = ""
    tokens: list[TokenInfo] = field(default_factory=list)
    finish_reason: str | None = None  # set on the last chunk: "stop", "length", "interrupted", "error"
    usage: dict[str, int] | None = None  # prompt_tokens, completion_tokens (last chunk)
    error: str | None = None  # with finish_reason "error": what failed while decoding this row only
    tool_calls: list[ToolCall] = field(default_factory=list)  # remote models: calls parsed by the server


class Response:
    """A generation in progress; iterate for text deltas, or call text() to finish it."""

    def __init__(self, model: str, request: GenerationRequest, chunks: Iterator[Chunk],
                 load_seconds: float = 0.0):
        self.model = model
        self.request = request
        self._chunks = chunks
        self._parts: list[str] = []
        self.tokens: list[TokenInfo] = []
        self.finish_reason: str | None = None
        self.tool_calls: list[ToolCall] = []
        self.usage: dict[str, int] = {}
        self.timings: dict[str, float] = {"load_s": round(load_seconds, 4)}
        self.done = False

    def __iter__(self) -> Iterator[str]:
        start = time.perf_counter()
        try:
            for chunk in self._chunks:
                if chunk.text and "first_token_s" not in self.timings:
                    self.timings["first_token_s"] = round(time.perf_counter() - start, 4)
                self.tokens.extend(chunk.tokens)
                if chunk.error:  # this request failed while decoding (others batched with it did not)
                    from llmctl.errors import LlmctlError

                    self.finish_reason = "error"
                    raise LlmctlError(f"generation failed: {chunk.error}")
                if chunk.finish_reason:
                    self.finish_reason = chunk.finish_reason
                self.tool_calls.extend(chunk.tool_calls)
                if chunk.usage:
                    self.usage = chunk.usage
                if chunk.text:
                    self._parts.append(chunk.text)
                    yield chunk.text
        except (KeyboardInterrupt, GeneratorExit):  # Ctrl-C, or the caller stopped reading early
            if self.finish_reason is None:
                self.finish_reason = "interrupted"
            raise
        finally:
            self._finish(time.perf_counter() - start)

    def _finish(self, seconds: float) -> None:
        close = getattr(self._chunks, "close", None)
        if close:  # stops a local generation loop or closes the HTTP stream
            close()
        self.done = True
        self.timings["total_s"] = round(seconds, 4)
        done_tokens = self.usage.get("completion_tokens") or len(self.tokens)
        if done_tokens and seconds > 0:
            self.timings["tokens_per_s"] = round(done_tokens / seconds, 2)

    def cancel(self) -> None:
        """Stop early (Ctrl-C while the caller was printing): frees the model or the connection."""
        if not self.done:
            self.finish_reason = "interrupted"
            close = getattr(self._chunks, "close", None)
            if close:
                close()
            self.done = True

    def text(self) -> str:
        if not self.done:
            for _ in self:
                pass
        return "".join(self._parts)

    def to_dict(self) -> dict[str, Any]:
        """The --json document: everything a script needs and nothing secret."""
        text = self.text()
        out: dict[str, Any] = {
            "text": text,
            "model": self.model,
            "params": self.request.params.to_dict(),
            "finish_reason": self.finish_reason,
            "usage": self.usage,
            "timings": self.timings,
        }
        if self.request.tools:
            out["tool_calls"] = [asdict(c) for c in self.tool_calls]
        if self.request.top_probs:
            out["top_probs"] = [
                {"token": t.token, "prob": t.prob, "top": [asdict(p) for p in t.top]} for t in self.tokens
            ]
        return out


class Backend(ABC):
    """A loaded model. Subclasses implement `_generate` and `render`, and declare what they can do
    (the same `Capabilities` as their row in `llmctl.providers.PROVIDERS`); callers ask
    `backend.capabilities`, never the class or the provider name. A backend with `batching` also has
    prepare_row/decode_batch, so `llmctl serve` decodes its concurrent requests together."""

    name: str
    load_seconds: float = 0.0
    capabilities: Capabilities

    @classmethod
    def load(cls, entry: "ModelEntry", config: "Config") -> "Backend":
        """Open the model an entry names (connect, or read weights)."""
        return cls(entry, config)

    def generate(self, request: GenerationRequest) -> Response:
        return Response(self.name, request, self._generate(request), self.load_seconds)

    def stream_chunks(self, request: GenerationRequest) -> Iterator[Chunk]:
        """The raw chunks of a generation (the server reads them itself, with usage and finish)."""
        return self._generate(request)

    @abstractmethod
    def _generate(self, request: GenerationRequest) -> Iterator[Chunk]:
        """Yield chunks of generated text; the last one carries finish_reason and usage."""

    def is_chat(self, request: GenerationRequest) -> bool:
        """Whether this request is sent as chat turns (True) or as raw text to complete."""
        return not request.raw

    @abstractmethod
    def render(self, request: GenerationRequest) -> RenderedPrompt:
        """The exact prompt this request becomes (for --show-prompt and the log's prompt hash)."""

    def close(self) -> None:
        """Free what the backend holds (HTTP clients, GPU memory)."""
