"""The chat REPL driven by a script of input lines, on a tiny local model."""

from __future__ import annotations

import json

import pytest

from llmctl.backends.base import SamplingParams
from llmctl.backends.hf import HFBackend
from llmctl.chat import ChatSession, run_repl
from llmctl.config import Config
from llmctl.errors import UsageError
from llmctl.logs import LogStore
from llmctl.registry import ModelEntry


@pytest.fixture
def session(tiny_chat_model):
    entry = ModelEntry("tiny", "hf", str(tiny_chat_model))
    return ChatSession(HFBackend.load(entry, Config()), entry, SamplingParams(temperature=0, max_tokens=4),
                       store=LogStore())


def drive(session, lines, write=None):
    script = iter(lines)
    shown, written = [], []

    def read_line(prompt):
        item = next(script)
        if isinstance(item, BaseException):
            raise item
        return item

    run_repl(session, read_line, write or written.append, shown.append)
    return "".join(written), shown


def test_conversation_commands_save_and_load(session, tmp_path):
    saved = tmp_path / "chat.json"
    written, shown = drive(session, ["/system You are terse.", "/set temperature 0.5", "/set seed 0",
                                     "/set stop END,STOP", "hello", "again", f"/save {saved}", "/reset",
                                     f"/load {saved}", "/exit"])
    assert shown[:4] == ["system prompt set", "temperature = 0.5", "seed = 0", "stop = ['END', 'STOP']"]
    assert shown[-1] == f"loaded 2 turns from {saved}"
    doc = json.loads(saved.read_text())
    assert doc["system"] == "You are terse." and doc["params"]["temperature"] == 0.5
    assert [t["user"] for t in doc["turns"]] == ["hello", "again"]
    assert len(session.conversation.turns) == 2 and session.params.stop == ["END", "STOP"]
    # every reply was logged in one conversation, with the system prompt
    turns = LogStore().conversation(LogStore().last_conversation_id())
    assert [t["prompt"] for t in turns] == ["hello", "again"] and turns[0]["system"] == "You are terse."


def test_history_is_sent_with_each_turn(session):
    drive(session, ["first", "second", "/exit"])
    request = session.backend.render(session.send("third").request)
    assert request.text.count("<|im_start|>user") == 3


def test_ctrl_c_stops_a_reply_not_the_session(session):
    calls = {"n": 0}

    def write(text):
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt

    _, shown = drive(session, ["interrupted question", "next question", "/exit"], write=write)
    assert "\n[reply stopped]" in shown
    assert [u for u, _ in session.conversation.turns] == ["next question"]


def test_ctrl_c_at_the_prompt_and_ctrl_d(session):
    _, shown = drive(session, [KeyboardInterrupt(), EOFError()])
    assert shown[0].startswith("(Ctrl-C) type /exit")


def test_bad_commands_are_reported_and_the_session_goes_on(session, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    _, shown = drive(session, ["/nope", "/set temperature hot", "/set colour 1", f"/load {bad}", "/exit"])
    assert shown[0].startswith("error: unknown command /nope")
    assert "'sampling.temperature' must be a number" in shown[1]
    assert shown[2].startswith("error: usage: /set KEY VALUE")
    assert "is not a conversation saved by /save" in shown[3]


def test_unknown_command_raises_usage_error(session):
    with pytest.raises(UsageError):
        session.command("/frobnicate")
