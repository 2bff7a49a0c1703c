"""The SQLite log: migrations, round trips, conversations, concurrent writers, no secrets, `llmctl logs`."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import llmctl.logs
from llmctl.cli.main import app, run
from llmctl.errors import UsageError
from llmctl.logs import MIGRATIONS, LogStore, scrub
from tests.processes import run_released_together

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    # conftest does this too; said again here so these tests can never touch a real log.
    monkeypatch.setenv("LLMCTL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def entry(store: LogStore, cid: str, prompt: str, **extra) -> int:
    fields = dict(conversation_id=cid, model="m", provider="hf", system=None, prompt=prompt,
                  messages=[{"role": "user", "content": prompt}], rendered_prompt=f"<{prompt}>", response="r",
                  params={"temperature": 0.5, "seed": 0}, finish_reason="stop",
                  usage={"prompt_tokens": 3, "completion_tokens": 1}, timings={"total_s": 0.1})
    fields.update(extra)
    return store.log(**fields)


# -- migrations -----------------------------------------------------------------------------------------
def test_fresh_database_has_every_migration_in_order_and_wal(home):
    store = LogStore()
    assert store.path == home / "logs.db"
    assert store.applied_migrations() == [m.__name__ for m in MIGRATIONS]
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    LogStore()  # opening again applies nothing twice
    assert store.applied_migrations() == [m.__name__ for m in MIGRATIONS]


def test_upgrade_from_the_first_migration_keeps_rows():
    old = LogStore(upto=1)
    assert old.applied_migrations() == [MIGRATIONS[0].__name__]
    cid = old.new_conversation("old-model")
    with sqlite3.connect(old.path) as db:
        db.execute("INSERT INTO responses (conversation_id, model, system, prompt, response, params, created) "
                   "VALUES (?, 'old-model', NULL, 'old prompt', 'old answer', '{}', '2025-01-01T00:00:00+00:00')",
                   (cid,))
    upgraded = LogStore()
    assert upgraded.applied_migrations() == [m.__name__ for m in MIGRATIONS]
    [row] = upgraded.recent()
    assert (row["prompt"], row["response"], row["params"], row["seed"], row["messages"]) == \
        ("old prompt", "old answer", {}, None, None)
    assert upgraded.conversation(cid)[0]["prompt"] == "old prompt"
    new_id = entry(upgraded, cid, "new prompt")  # and the new columns work on the upgraded file
    assert upgraded.get(new_id)["prompt_tokens"] == 3


def test_a_failing_migration_changes_nothing_and_runs_again_next_time(monkeypatch):
    path = LogStore().path
    attempts = []

    def _m999_flaky(db: sqlite3.Connection) -> None:
        db.execute("ALTER TABLE responses ADD COLUMN added_by_m999 TEXT")
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("boom")

    def state() -> tuple[list[str], list[str]]:
        with sqlite3.connect(path) as db:
            return ([r[1] for r in db.execute("PRAGMA table_info(responses)")],
                    [r[0] for r in db.execute("SELECT name FROM _migrations")])

    monkeypatch.setattr(llmctl.logs, "MIGRATIONS", [*MIGRATIONS, _m999_flaky])
    with pytest.raises(RuntimeError, match="boom"):
        LogStore()
    columns, applied = state()
    assert "added_by_m999" not in columns and "_m999_flaky" not in applied  # rolled back as one
    LogStore()
    columns, applied = state()
    assert "added_by_m999" in columns and applied[-1] == "_m999_flaky"


# -- writing and reading --------------------------------------------------------------------------------
def test_roundtrip_and_conversations():
    store = LogStore()
    cid = store.new_conversation("m")
    first = entry(store, cid, "one")
    entry(store, cid, "two", system="sys")
    other = store.new_conversation("m")
    entry(store, other, "elsewhere")
    row = store.get(first)
    assert row["params"] == {"temperature": 0.5, "seed": 0} and row["seed"] == 0
    assert row["prompt_hash"] == hashlib.sha256(b"<one>").hexdigest()
    assert row["messages"] == [{"role": "user", "content": "one"}]
    assert (row["prompt_tokens"], row["completion_tokens"], row["timings"]) == (3, 1, {"total_s": 0.1})
    assert row["created"].endswith("+00:00")
    turns = store.conversation(cid)
    assert [(t["prompt"], t["system"]) for t in turns] == [("one", None), ("two", "sys")]
    assert [r["prompt"] for r in store.recent(2)] == ["elsewhere", "two"]
    assert store.last_conversation_id() == other


def test_rendered_prompt_is_stored_only_as_a_hash():
    store = LogStore()
    entry(store, store.new_conversation("m"), "p", rendered_prompt="<|im_start|>UNIQUE-RENDERING")
    assert b"UNIQUE-RENDERING" not in store.path.read_bytes()


def test_conversation_ids_sort_by_creation():
    store = LogStore()
    ids = [store.new_conversation("m") for _ in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5


def test_empty_log():
    store = LogStore()
    assert store.recent() == [] and store.last_conversation_id() is None and store.conversation("x") == []


def test_missing_entry():
    with pytest.raises(UsageError, match="no log entry 99") as info:
        LogStore().get(99)
    assert info.value.hint == "`llmctl logs` lists entries"


def test_corrupt_database_names_the_file(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(UsageError, match="log database .*bad.db") as info:
        LogStore(bad)
    assert "move it aside" in info.value.hint


def test_secrets_never_reach_the_log():
    assert scrub({"temperature": 1, "api_key": "sk-1", "Authorization": "Bearer x", "max_tokens": 5,
                  "hf_token": "hf_x", "headers": {"X-Api-Key": "k", "accept": "json"}}) == \
        {"temperature": 1, "max_tokens": 5, "headers": {"accept": "json"}}
    store = LogStore()
    cid = store.new_conversation("m")
    entry(store, cid, "p", params={"seed": 1, "api_key": "sk-live-secret", "extra": {"authorization": "Bearer tok"}})
    data = store.path.read_bytes() + b"".join(p.read_bytes() for p in store.path.parent.glob("logs.db-*"))
    assert b"sk-live-secret" not in data and b"Bearer tok" not in data


WRITER = """
from llmctl.logs import LogStore
store = LogStore()
cid = store.new_conversation("m")
for i in range(20):
    store.log(conversation_id=cid, model="m", provider="hf", system=None, prompt=str(i), messages=[],
              rendered_prompt=str(i), response="r", params={}, finish_reason="stop", usage={}, timings={})
"""


def test_two_processes_logging_at_once():
    # Both start on a database that does not exist yet: creation and migration race too.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER], env=env, stderr=subprocess.PIPE) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read().decode()) for p in procs]
    assert [code for code, _ in results] == [0, 0], results
    rows = LogStore().recent(100)
    assert len(rows) == 40
    by_conversation: dict[str, list[str]] = {}
    for r in reversed(rows):
        by_conversation.setdefault(r["conversation_id"], []).append(r["prompt"])
    assert list(by_conversation.values()) == [[str(i) for i in range(20)]] * 2


FIRST_USE = """
from llmctl.logs import LogStore
released()
worker = _sys.argv[2]
store = LogStore()
store.log(conversation_id=store.new_conversation("m"), model="m", provider="hf", system=None, prompt=worker,
          messages=[], rendered_prompt=worker, response="r", params={}, finish_reason="stop", usage={}, timings={})
"""


def test_eight_processes_first_use_at_the_same_moment(home, tmp_path):
    """Eight processes create, switch to WAL, migrate and write one fresh database at the same moment."""
    results = run_released_together(FIRST_USE, 8, tmp_path / "gate")
    assert [code for code, _ in results] == [0] * 8, results
    store = LogStore()
    assert sorted(r["prompt"] for r in store.recent(100)) == [str(i) for i in range(8)]
    assert store.applied_migrations() == [m.__name__ for m in MIGRATIONS]
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# -- the CLI --------------------------------------------------------------------------------------------
def logged(n: int = 3) -> list[int]:
    store = LogStore()
    cid = store.new_conversation("m")
    return [entry(store, cid, f"question {i} [/]", response=f"answer {i} [bold]") for i in range(n)]


def invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_logs_lists_newest_first_as_a_table():
    logged(3)
    result = invoke("logs", "-n", "2")
    assert result.exit_code == 0
    assert "question 2 [/]" in result.stdout and "answer 1 [bold]" in result.stdout  # markup shown, not parsed
    assert "question 0" not in result.stdout
    assert result.stdout.index("question 2") < result.stdout.index("question 1")
    assert "3+1" in result.stdout


def test_logs_json():
    ids = logged(3)
    rows = json.loads(invoke("logs", "--json").stdout)
    assert [r["id"] for r in rows] == ids[::-1]
    assert rows[0]["params"] == {"temperature": 0.5, "seed": 0}
    assert json.loads(invoke("logs", "--json", "-n", "1").stdout)[0]["id"] == ids[-1]


def test_logs_when_empty():
    assert "no log entries yet" in invoke("logs").stdout
    assert json.loads(invoke("logs", "--json").stdout) == []


def test_logs_show():
    store = LogStore()
    cid = store.new_conversation("m")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "shot in"},
                {"role": "assistant", "content": "shot out"}, {"role": "user", "content": "real question"}]
    rid = entry(store, cid, "real question", system="Be brief.", messages=messages)
    shown = invoke("logs", "show", str(rid)).stdout
    for text in ("Be brief.", "shot out", "real question", '"temperature": 0.5', "3 prompt + 1 completion",
                 "total_s", hashlib.sha256(b"<real question>").hexdigest()):
        assert text in shown
    row = json.loads(invoke("logs", "show", str(rid), "--json").stdout)
    assert row["id"] == rid and row["messages"] == messages and row["timings"] == {"total_s": 0.1}


def test_logs_show_missing_id_exits_2(capsys):
    with pytest.raises(UsageError, match="no log entry 5"):
        invoke("logs", "show", "5")
    with pytest.raises(SystemExit) as exit_info:
        run(["logs", "show", "5"])
    assert exit_info.value.code == 2
    assert "no log entry 5" in capsys.readouterr().err


def test_logs_bad_count_is_a_usage_error():
    assert invoke("logs", "-n", "0").exit_code == 2
