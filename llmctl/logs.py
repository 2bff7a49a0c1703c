"""The SQLite log of every prompt and response ($LLMCTL_HOME/logs.db).

The schema grows by numbered migrations (never edit one that has shipped: add the next), recorded
in `_migrations`, so a database from any earlier version upgrades in place and keeps its rows.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import closing as _closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from llmctl.errors import UsageError
from llmctl.paths import logs_db_path

SECRET_KEYS = ("api_key", "apikey", "authorization", "access_token", "auth_token", "password", "secret")


def _m001_initial(db: sqlite3.Connection) -> None:
    # execute(), not executescript(): executescript commits first, which would break the migration's transaction
    db.execute("CREATE TABLE conversations (id TEXT PRIMARY KEY, model TEXT NOT NULL, created TEXT NOT NULL)")
    db.execute("""
        CREATE TABLE responses (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            conversation_id TEXT NOT NULL REFERENCES conversations(id),
            model TEXT NOT NULL,
            system TEXT,
            prompt TEXT NOT NULL,
            response TEXT NOT NULL,
            params TEXT NOT NULL,
            created TEXT NOT NULL
        )
    """)


def _m002_usage_and_provenance(db: sqlite3.Connection) -> None:
    for column in ("provider TEXT", "messages TEXT", "prompt_hash TEXT", "seed INTEGER", "finish_reason TEXT",
                   "prompt_tokens INTEGER", "completion_tokens INTEGER", "timings TEXT"):
        db.execute(f"ALTER TABLE responses ADD COLUMN {column}")


def _m003_indexes(db: sqlite3.Connection) -> None:
    db.execute("CREATE INDEX responses_conversation ON responses(conversation_id, id)")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_m001_initial, _m002_usage_and_provenance, _m003_indexes]


def scrub(params: dict[str, Any]) -> dict[str, Any]:
    """Drop anything that looks like a credential before it can reach the disk."""
    return {k: v for k, v in params.items() if not any(s in k.lower() for s in SECRET_KEYS)}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class LogStore:
    def __init__(self, path: Path | None = None, *, upto: int | None = None):
        self.path = Path(path) if path else logs_db_path()
        self._migrate(MIGRATIONS[:upto] if upto else MIGRATIONS)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # timeout: a second process writing at the same moment waits instead of failing.
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            return db
        except sqlite3.DatabaseError as e:
            raise UsageError(f"cannot open the log database {self.path}: {e}",
                             hint="move it aside; a new one is created on the next prompt") from None

    def _migrate(self, migrations: list) -> None:
        db = self._connect()
        try:
            db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied TEXT NOT NULL)")
            for migration in migrations:
                db.execute("BEGIN IMMEDIATE")  # one process migrates at a time; the others see it done
                try:
                    done = db.execute("SELECT 1 FROM _migrations WHERE name = ?", (migration.__name__,)).fetchone()
                    if not done:
                        migration(db)
                        db.execute("INSERT INTO _migrations VALUES (?, ?)", (migration.__name__, _now()))
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
        except sqlite3.DatabaseError as e:
            raise UsageError(f"the log database {self.path} is unreadable: {e}",
                             hint="move it aside; a new one is created on the next prompt") from None
        finally:
            db.close()

    def applied_migrations(self) -> list[str]:
        with _closing(self._connect()) as db:
            return [r["name"] for r in db.execute("SELECT name FROM _migrations ORDER BY name")]

    # -- writing ------------------------------------------------------------------------------------
    def new_conversation(self, model: str) -> str:
        # Time first, so ids sort by creation; random suffix so parallel processes never collide.
        cid = f"{time.time_ns():x}{os.urandom(4).hex()}"
        with _closing(self._connect()) as db:
            db.execute("INSERT INTO conversations VALUES (?, ?, ?)", (cid, model, _now()))
        return cid

    def log(self, *, conversation_id: str, model: str, provider: str, system: str | None, prompt: str,
            messages: list[dict], rendered_prompt: str, response: str, params: dict, finish_reason: str | None,
            usage: dict, timings: dict) -> int:
        import hashlib

        params = scrub(params)
        row = {
            "conversation_id": conversation_id, "model": model, "provider": provider, "system": system,
            "prompt": prompt, "response": response, "params": json.dumps(params), "created": _now(),
            "messages": json.dumps(messages), "seed": params.get("seed"), "finish_reason": finish_reason,
            "prompt_hash": hashlib.sha256(rendered_prompt.encode("utf-8")).hexdigest(),
            "prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens"),
            "timings": json.dumps(timings),
        }
        columns = ", ".join(row)
        with _closing(self._connect()) as db:
            cursor = db.execute(f"INSERT INTO responses ({columns}) VALUES ({', '.join('?' * len(row))})",
                                tuple(row.values()))
            return int(cursor.lastrowid)

    # -- reading ------------------------------------------------------------------------------------
    def recent(self, n: int = 10) -> list[dict]:
        with _closing(self._connect()) as db:
            rows = db.execute("SELECT * FROM responses ORDER BY id DESC LIMIT ?", (n,)).fetchall()
        return [_row_dict(r) for r in rows]

    def get(self, response_id: int) -> dict:
        with _closing(self._connect()) as db:
            row = db.execute("SELECT * FROM responses WHERE id = ?", (response_id,)).fetchone()
        if row is None:
            raise UsageError(f"no log entry {response_id}", hint="`llmctl logs` lists entries")
        return _row_dict(row)

    def last_conversation_id(self) -> str | None:
        with _closing(self._connect()) as db:
            row = db.execute("SELECT conversation_id FROM responses ORDER BY id DESC LIMIT 1").fetchone()
        return row["conversation_id"] if row else None

    def conversation(self, conversation_id: str) -> list[dict]:
        with _closing(self._connect()) as db:
            rows = db.execute("SELECT * FROM responses WHERE conversation_id = ? ORDER BY id",
                              (conversation_id,)).fetchall()
        return [_row_dict(r) for r in rows]


def _row_dict(row: sqlite3.Row) -> dict:
    out = dict(row)
    for key in ("params", "messages", "timings"):
        if out.get(key):
            out[key] = json.loads(out[key])
    return out

