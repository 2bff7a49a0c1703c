"""The chat session behind `llmctl chat`: history, slash commands, save and load.

The REPL loop takes its input function and consoles as arguments, so tests drive it with a script
and the CLI drives it with the terminal.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

from llmctl.backends.base import Backend, Response, SamplingParams
from llmctl.config import coerce, spec_for
from llmctl.errors import LlmctlError, UsageError
from llmctl.fsutil import atomic_write_json
from llmctl.prompting import Conversation, build_request, log_exchange
from llmctl.registry import ModelEntry

HELP = """commands:
  /system TEXT        set the system prompt (empty: remove it); /system alone shows it
  /set KEY VALUE      change a sampling setting: temperature, top_p, top_k, seed, max_tokens,
                      repetition_penalty, stop (comma-separated; 'none' clears); /set alone shows them
  /reset              forget the conversation (keeps system prompt and settings)
  /save FILE          save the conversation and settings as JSON
  /load FILE          load a conversation saved with /save
  /help               this text
  /exit               leave (Ctrl-D too); Ctrl-C stops a reply, not the session"""

SETTABLE = ("temperature", "top_p", "top_k", "seed", "max_tokens", "repetition_penalty", "stop")


class ExitChat(Exception):
    """Raised by /exit."""


class ChatSession:
    def __init__(self, backend: Backend, entry: ModelEntry, params: SamplingParams,
                 conversation: Conversation | None = None, store=None):
        self.backend = backend
        self.entry = entry
        self.params = params
        self.conversation = conversation or Conversation()
        self.store = store  # a LogStore, or None when logging is off

    def send(self, text: str) -> Response:
        """Start a reply; call `finish(response)` once it is fully consumed to keep it in history."""
        request = build_request(self.backend, self.conversation, text, dataclasses.replace(self.params))
        return self.backend.generate(request)

    def finish(self, text: str, response: Response) -> None:
        if response.finish_reason == "interrupted":
            return  # a reply cut short by Ctrl-C is not kept: the next turn starts clean
        if self.store is not None:
            rendered = self.backend.render(response.request).text
            log_exchange(self.store, self.conversation, self.backend, self.entry, text, response, rendered)
        self.conversation.turns.append((text, response.text()))

    # -- slash commands ----------------------------------------------------------------------------
    def command(self, line: str) -> str:
        """Run one /command; returns what to show the user."""
        name, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        handler = getattr(self, f"_cmd_{name.lower()}", None)
        if handler is None:
            raise UsageError(f"unknown command /{name}", hint="/help lists the commands")
        return handler(arg)

    def _cmd_help(self, arg: str) -> str:
        return HELP

    def _cmd_exit(self, arg: str) -> str:
        raise ExitChat()

    _cmd_quit = _cmd_exit

    def _cmd_reset(self, arg: str) -> str:
        self.conversation.turns.clear()
        self.conversation.id = None
        return "conversation cleared"

    def _cmd_system(self, arg: str) -> str:
        if not arg:
            return f"system prompt: {self.conversation.system or '(none)'}"
        self.conversation.system = None if arg.lower() == "none" else arg
        return "system prompt set" if self.conversation.system else "system prompt removed"

    def _cmd_set(self, arg: str) -> str:
        if not arg:
            return ", ".join(f"{k}={getattr(self.params, k)}" for k in SETTABLE)
        key, _, value = arg.partition(" ")
        key = key.replace("-", "_")
        if key not in SETTABLE or not value.strip():
            raise UsageError(f"usage: /set KEY VALUE with KEY one of {', '.join(SETTABLE)}")
        if key == "stop":
            stops = [] if value.strip().lower() == "none" else [s for s in value.split(",") if s]
            self.params = dataclasses.replace(self.params, stop=stops)
        else:
            parsed = coerce(spec_for(f"sampling.{key}", "/set"), value.strip(), "/set")
            self.params = dataclasses.replace(self.params, **{key: parsed})
        return f"{key} = {getattr(self.params, key)}"

    def _cmd_save(self, arg: str) -> str:
        if not arg:
            raise UsageError("usage: /save FILE")
        doc = {"version": 1, "model": self.entry.name, "system": self.conversation.system,
               "params": self.params.to_dict(), "turns": [{"user": u, "assistant": a} for u, a in self.conversation.turns]}
        atomic_write_json(Path(arg).expanduser(), doc)
        return f"saved {len(self.conversation.turns)} turns to {arg}"

    def _cmd_load(self, arg: str) -> str:
        if not arg:
            raise UsageError("usage: /load FILE")
        path = Path(arg).expanduser()
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            turns = [(t["user"], t["assistant"]) for t in doc["turns"]]
            params = SamplingParams(**doc.get("params", {}))
        except FileNotFoundError:
            raise UsageError(f"no such file: {path}") from None
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise UsageError(f"{path} is not a conversation saved by /save ({e})") from None
        self.conversation = Conversation(system=doc.get("system"), turns=turns)
        self.params = params
        note = "" if doc.get("model") == self.entry.name else f" (saved with model {doc.get('model')})"
        return f"loaded {len(turns)} turns from {path}{note}"


def run_repl(session: ChatSession, read_line: Callable[[str], str], write: Callable[[str], None],
             notice: Callable[[str], None]) -> None:
    """The loop: read a line, run a command or stream a reply. Ctrl-C stops a reply only."""
    while True:
        try:
            line = read_line("> ")
        except EOFError:
            notice("")
            return
        except KeyboardInterrupt:
            notice("(Ctrl-C) type /exit or press Ctrl-D to leave")
            continue
        if not line.strip():
            continue
        if line.startswith("/"):
            try:
                notice(session.command(line.strip()))
            except ExitChat:
                return
            except UsageError as e:
                notice(f"error: {e}")
            continue
        response = None
        try:
            response = session.send(line)
            for delta in response:
                write(delta)
        except KeyboardInterrupt:
            if response is not None:
                response.cancel()
            notice("\n[reply stopped]")
            continue
        except LlmctlError as e:  # a remote hiccup or an over-long history: say so, keep the session
            notice(f"\nerror: {e}")
            continue
        else:
            write("\n")
        session.finish(line, response)
