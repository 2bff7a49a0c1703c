"""The SQLite log: migrations, round trips, conversations, concurrent writers, no secrets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmctl.errors import UsageError
from llmctl.logs import MIGRATIONS, LogStore, scrub

ROOT = Path(__file__).resolve().parent.parent


def entry(store, cid, prompt, **extra):
    fields = dict(conversation_id=cid, model="m", provider="hf", system=None, prompt=prompt,
                  messages=[{"role": "user", "content": prompt}], rendered_prompt=f"<{prompt}>", response="r",
                  params={"temperature": 0.5, "seed": 0}, finish_reason="stop",
                  usage={"prompt_tokens": 3, "completion_tokens": 1}, timings={"total_s": 0.1})
    fields.update(extra)
    return store.log(**fields)


def test_fresh_database_has_every_migration():
    assert LogStore().applied_migrations() == sorted(m.__name__ for m in MIGRATIONS)


def test_upgrade_from_the_first_migration_keeps_rows():
    old = LogStore(upto=1)
    cid = old.new_conversation("old-model")
    with __import__("sqlite3").connect(old.path) as db:
        db.execute("INSERT INTO responses (conversation_id, model, system, prompt, response, params, created) "
                   "VALUES (?, 'old-model', NULL, 'old prompt', 'old answer', '{}', '2025-01-01T00:00:00+00:00')", (cid,))
    upgraded = LogStore()
    assert len(upgraded.applied_migrations()) == len(MIGRATIONS)
    [row] = upgraded.recent()
    assert (row["prompt"], row["response"], row["seed"]) == ("old prompt", "old answer", None)


def test_roundtrip_and_conversations():
    store = LogStore()
    cid = store.new_conversation("m")
    first = entry(store, cid, "one")
    entry(store, cid, "two", system="sys")
    other = store.new_conversation("m")
    entry(store, other, "elsewhere")
    row = store.get(first)
    assert row["params"] == {"temperature": 0.5, "seed": 0} and row["seed"] == 0
    assert row["prompt_hash"] == __import__("hashlib").sha256(b"<one>").hexdigest()
    assert row["messages"] == [{"role": "user", "content": "one"}]
    assert [r["prompt"] for r in store.conversation(cid)] == ["one", "two"]
    assert [r["prompt"] for r in store.recent(2)] == ["elsewhere", "two"]
    assert store.last_conversation_id() == other


def test_missing_entry_and_corrupt_database(tmp_path):
    with pytest.raises(UsageError, match="no log entry 99"):
        LogStore().get(99)
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(UsageError, match="log database .*bad.db"):
        LogStore(bad)


def test_secrets_never_reach_the_log():
    assert scrub({"temperature": 1, "api_key": "sk-1", "Authorization": "Bearer x"}) == {"temperature": 1}
    store = LogStore()
    cid = store.new_conversation("m")
    entry(store, cid, "p", params={"seed": 1, "api_key": "sk-live-secret"})
    assert b"sk-live-secret" not in store.path.read_bytes()


WRITER = """
from llmctl.logs import LogStore
store = LogStore()
cid = store.new_conversation("m")
for i in range(20):
    store.log(conversation_id=cid, model="m", provider="hf", system=None, prompt=str(i), messages=[],
              rendered_prompt=str(i), response="r", params={}, finish_reason="stop", usage={}, timings={})
"""


def test_two_processes_logging_at_once():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER], env=env) for _ in range(2)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    assert len(LogStore().recent(100)) == 40
