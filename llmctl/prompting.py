"""What `llmctl prompt` and `llmctl chat` do, as functions: pick the model, build the request,
log the exchange. The CLI only parses flags and renders.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from dataclasses import dataclass, field

from llmctl.backends.base import Backend, GenerationRequest, Message, Response, SamplingParams
from llmctl.config import Config
from llmctl.errors import UsageError
from llmctl.providers import capabilities_of
from llmctl.registry import ModelEntry, Registry
from llmctl.templates import Shot, completion_prefix


def read_prompt_text(text: str | None, command: str = "prompt") -> str:
    """TEXT and stdin (when piped) joined: `cat notes.txt | llmctl prompt "Summarise:"`."""
    piped = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
    parts = [p for p in (text, piped.strip("\n")) if p and p.strip()]
    if not parts:
        raise UsageError("empty prompt" if command == "prompt" else "empty text",
                         hint=f'pass TEXT (llmctl {command} "Hello") or pipe it on stdin')
    return "\n\n".join(parts)


def sampling_overrides(temperature=None, top_p=None, top_k=None, seed=None, max_tokens=None, repetition_penalty=None,
                       timeout=None, retries=None, system=None, model=None) -> dict:
    """The sampling and connection flags `prompt` and `chat` share, as config keys (None: not given)."""
    return {"sampling.temperature": temperature, "sampling.top_p": top_p, "sampling.top_k": top_k,
            "sampling.seed": seed, "sampling.max_tokens": max_tokens,
            "sampling.repetition_penalty": repetition_penalty, "openai.timeout": timeout,
            "openai.retries": retries, "system": system, "model": model}


def sampling_params(config: Config, stop: list[str] | None = None) -> SamplingParams:
    s = config.sampling
    return SamplingParams(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, max_tokens=s.max_tokens,
                          repetition_penalty=s.repetition_penalty, seed=s.seed, stop=list(stop or []))


def resolve_entry(ref: str, base_url: str | None = None, registry: Registry | None = None) -> ModelEntry:
    """The registry entry for `ref`; with --base-url, the name the remote server knows it by."""
    registry = registry or Registry()
    if base_url:
        known = registry.get(ref)
        if known is not None and capabilities_of(known).remote:
            return dataclasses.replace(known, base_url=base_url)
        remote_id = ref.removeprefix("openai:")
        return ModelEntry(name=ref, provider="openai", source=remote_id, base_url=base_url)
    return registry.resolve(ref)


def open_backend(entry: ModelEntry, config: Config) -> Backend:
    from llmctl.backends import load_backend

    return load_backend(entry, config)


@dataclass
class Conversation:
    """The turns so far, as sent to the model on the next request."""

    system: str | None = None
    turns: list[tuple[str, str]] = field(default_factory=list)  # (user, assistant)
    shots: list[Shot] = field(default_factory=list)
    id: str | None = None  # the log's conversation id, once logged


def build_request(backend: Backend, conversation: Conversation, text: str, params: SamplingParams,
                  *, raw: bool = False, top_probs: int = 0) -> GenerationRequest:
    """Chat models get shots and history as prior turns; base models get them as a text prefix."""
    probe = GenerationRequest(messages=[], params=params, raw=raw, top_probs=top_probs)
    if not backend.is_chat(probe):
        prefix = completion_prefix(conversation.system, conversation.shots, conversation.turns, text)
        return dataclasses.replace(probe, messages=[Message("user", prefix)], raw=True)
    messages = [Message("system", conversation.system)] if conversation.system else []
    for shot in conversation.shots:
        messages += [Message("user", shot.input), Message("assistant", shot.output)]
    for user, assistant in conversation.turns:
        messages += [Message("user", user), Message("assistant", assistant)]
    messages.append(Message("user", text))
    return dataclasses.replace(probe, messages=messages)


def prompt_hash(rendered_text: str) -> str:
    return hashlib.sha256(rendered_text.encode("utf-8")).hexdigest()


def log_exchange(store, conversation: Conversation, backend: Backend, entry: ModelEntry, text: str,
                 response: Response, rendered_text: str) -> int:
    """Record one exchange in the SQLite log (starting the conversation if needed)."""
    if conversation.id is None:
        conversation.id = store.new_conversation(entry.name)
    return store.log(
        conversation_id=conversation.id, model=entry.name, provider=entry.provider,
        system=conversation.system, prompt=text,
        messages=[{k: v for k, v in dataclasses.asdict(m).items() if v not in (None, [])}  # no empty tool fields
                  for m in response.request.messages],
        rendered_prompt=rendered_text, response=response.text(), params=response.request.params.to_dict(),
        finish_reason=response.finish_reason, usage=response.usage, timings=response.timings,
    )


def load_last_conversation(store) -> tuple[Conversation, str | None]:
    """The most recent logged conversation and its model name, for -c/--continue."""
    cid = store.last_conversation_id()
    if cid is None:
        return Conversation(), None
    turns = store.conversation(cid)
    if not turns:
        return Conversation(id=cid), None
    conversation = Conversation(system=turns[-1].get("system"), id=cid,
                                turns=[(t["prompt"], t["response"]) for t in turns])
    return conversation, turns[-1].get("model")


def start_conversation(config: Config, resume: bool, *, model_given: bool, system_given: bool) -> Conversation:
    """A new conversation, or with -c/--continue the last logged one (and its model unless -m was given)."""
    if not resume:
        return Conversation(system=config.system)
    from llmctl.logs import LogStore

    conversation, last_model = load_last_conversation(LogStore())
    if last_model and not model_given:
        config.model = last_model
    if system_given or conversation.system is None:
        conversation.system = config.system
    return conversation


def start_session(config: Config, resume: bool, *, model_given: bool, system_given: bool,
                  base_url: str | None = None) -> tuple[Conversation, ModelEntry]:
    """What `prompt` and `chat` do before loading the model: the conversation (new or continued,
    which may choose the model) and the registry entry to open."""
    conversation = start_conversation(config, resume, model_given=model_given, system_given=system_given)
    return conversation, resolve_entry(config.model, base_url)
