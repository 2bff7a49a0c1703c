"""The SQLite log of every prompt and response ($LLMCTL_HOME/logs.db).

The schema grows by numbered migrations (never edit one that has shipped: add the next), recorded
in `_migrations`, so a database from any earlier version upgrades in place and keeps its rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from llmctl.errors import StorageError, UsageError, storage_error
from llmctl.fsutil import file_lock, private_dir, private_file, write_probe
from llmctl.paths import logs_db_path

# Substrings, matched case-insensitively against keys: "openai_api_key" and "Authorization" both go.
SECRET_KEYS = ("api_key", "apikey", "authorization", "password", "secret")
BUSY_TIMEOUT_S = 30.0


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


# Applied in this order, each once; a migration is recorded under its function name.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_m001_initial, _m002_usage_and_provenance, _m003_indexes]


def _is_secret(key: object) -> bool:
    name = str(key).lower().replace("-", "_")  # header spellings too: X-Api-Key
    # "token" alone or "hf_token" is a credential; "max_tokens" is not.
    return any(s in name for s in SECRET_KEYS) or name == "token" or name.endswith("_token")


def scrub(params: dict[str, Any]) -> dict[str, Any]:
    """Drop anything that looks like a credential (at any depth) before it can reach the disk."""
    return {k: scrub(v) if isinstance(v, dict) else v for k, v in params.items() if not _is_secret(k)}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _json(value: Any) -> str:
    # default=str: a Path or an enum in params should be logged as text, not lose the whole entry.
    return json.dumps(value, ensure_ascii=False, default=str)


def _in_wal_mode(path: Path) -> bool:
    """Whether the file's header says WAL (bytes 18-19 are 2, sqlite.org/fileformat.html), read without
    SQLite, so the check cannot get in the way of a process switching a new database to WAL."""
    try:
        with open(path, "rb") as f:
            header = f.read(20)
    except OSError:
        return False
    return header[:16] == b"SQLite format 3\x00" and header[18:20] == b"\x02\x02"


class LogStore:
    """One log database; every method opens and closes its own connection, so a store is cheap to keep."""

    def __init__(self, path: Path | None = None, *, upto: int | None = None):
        """`upto` applies only the first N migrations: for tests that build an old database."""
        self.path = Path(path) if path else logs_db_path()
        self._migrate(MIGRATIONS if upto is None else MIGRATIONS[:upto])

    def _unusable(self, e: BaseException) -> UsageError | StorageError:
        if "locked" in str(e):
            return UsageError(f"the log database {self.path} is locked: {e}",
                              hint="another llmctl process is holding it; try again")
        # The place, not the file: a full disk or a read-only folder is not a reason to move the database aside.
        if "full" in str(e) or getattr(e, "sqlite_errorname", "") == "SQLITE_FULL":
            return StorageError(f"cannot write the log database {self.path}: the disk is full ({e})",
                                hint="free some space, or pass --no-log")
        if "readonly" in str(e) or "read-only" in str(e):
            return StorageError(f"cannot write the log database {self.path}: it or its folder is read-only ({e})",
                                hint="make LLMCTL_HOME a folder you can write to, or pass --no-log")
        if "disk I/O error" in str(e):  # SQLite hides the errno: find it by writing beside the database
            cause = write_probe(self.path.parent)
            if cause is not None:
                return StorageError(f"cannot write the log database {self.path}: {cause.strerror} ({e})",
                                    hint="free some space or fix the folder, or pass --no-log")
        if isinstance(e, OSError) and storage_error(e) is not None:
            return StorageError(f"cannot open the log database {self.path}: {e.strerror}",
                                hint="check that LLMCTL_HOME is a folder you can write to, or pass --no-log")
        if isinstance(e, OSError) or "unable to open" in str(e):
            return UsageError(f"cannot open the log database {self.path}: {e}",
                              hint="check that LLMCTL_HOME is a writable folder, or pass --no-log")
        return UsageError(f"the log database {self.path} is unreadable: {e}",
                          hint="move it aside; a new one is created on the next prompt")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            private_dir(self.path.parent)
            private_file(self.path)  # sqlite would create it with the umask's mode (0644): every prompt is in it
            # timeout: a second process writing at the same moment waits instead of failing.
            # isolation_level=None: autocommit, so transactions are exactly the BEGINs written here.
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except (OSError, sqlite3.DatabaseError) as e:
            raise self._unusable(e) from None
        db.row_factory = sqlite3.Row
        try:
            yield db
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError):
            raise  # our bug, not the file's
        except sqlite3.DatabaseError as e:  # not a database, malformed, locked past the timeout, read-only
            raise self._unusable(e) from None
        finally:
            db.close()

    def _migrate(self, migrations: list[Callable[[sqlite3.Connection], None]]) -> None:
        if _in_wal_mode(self.path) and self._is_current(migrations):
            return  # the common case: no lock of any kind
        # Creation, the WAL switch and the migrations happen one process at a time, under a lock file.
        # SQLite's busy timeout does not cover the WAL switch: it fails at once with "database is locked"
        # while another process has the new file open, so two first prompts at the same moment could fail.
        try:
            with file_lock(self.path.with_name(self.path.name + ".lock")):
                self._migrate_locked(migrations)
        except OSError as e:  # the lock file could not be created: the folder is not writable
            raise self._unusable(e) from None

    def _is_current(self, migrations: list[Callable[[sqlite3.Connection], None]]) -> bool:
        with self._connect() as db:
            try:
                return not {m.__name__ for m in migrations} - self._applied(db)
            except sqlite3.OperationalError:  # no _migrations table yet
                return False

    def _migrate_locked(self, migrations: list[Callable[[sqlite3.Connection], None]]) -> None:
        with self._connect() as db:
            # WAL lets readers and a writer work at once; the setting is stored in the file.
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied TEXT NOT NULL)")
            for migration in migrations:
                # IMMEDIATE: a process of an earlier version, which migrates without the lock file, waits.
                db.execute("BEGIN IMMEDIATE")
                try:
                    if migration.__name__ not in self._applied(db):
                        migration(db)
                        db.execute("INSERT INTO _migrations VALUES (?, ?)", (migration.__name__, _now()))
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise

    @staticmethod
    def _applied(db: sqlite3.Connection) -> set[str]:
        return {row["name"] for row in db.execute("SELECT name FROM _migrations")}

    def applied_migrations(self) -> list[str]:
        """Migration names in the order they were applied."""
        with self._connect() as db:
            return [r["name"] for r in db.execute("SELECT name FROM _migrations ORDER BY rowid")]

    # -- writing ------------------------------------------------------------------------------------
    def new_conversation(self, model: str) -> str:
        # Time first, so ids sort by creation; random suffix so parallel processes never collide.
        cid = f"{time.time_ns():016x}{os.urandom(4).hex()}"
        with self._connect() as db:
            db.execute("INSERT INTO conversations VALUES (?, ?, ?)", (cid, model, _now()))
        return cid

    def log(self, *, conversation_id: str, model: str, provider: str, system: str | None, prompt: str,
            messages: list[dict], rendered_prompt: str, response: str, params: dict, finish_reason: str | None,
            usage: dict, timings: dict) -> int:
        """Store one exchange and return its id. The rendered prompt is kept only as a sha256."""
        params = scrub(params)
        row = {
            "conversation_id": conversation_id, "model": model, "provider": provider, "system": system,
            "prompt": prompt, "response": response, "params": _json(params), "created": _now(),
            "messages": _json(messages), "seed": params.get("seed"), "finish_reason": finish_reason,
            "prompt_hash": hashlib.sha256(rendered_prompt.encode("utf-8")).hexdigest(),
            "prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens"),
            "timings": _json(timings),
        }
        with self._connect() as db:
            cursor = db.execute(f"INSERT INTO responses ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                                tuple(row.values()))
            return int(cursor.lastrowid)

    # -- reading ------------------------------------------------------------------------------------
    def recent(self, n: int = 10) -> list[dict]:
        """The last n entries, newest first."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM responses ORDER BY id DESC LIMIT ?", (n,)).fetchall()
        return [_row_dict(r) for r in rows]

    def get(self, response_id: int) -> dict:
        with self._connect() as db:
            row = db.execute("SELECT * FROM responses WHERE id = ?", (response_id,)).fetchone()
        if row is None:
            raise UsageError(f"no log entry {response_id}", hint="`llmctl logs` lists entries")
        return _row_dict(row)

    def last_conversation_id(self) -> str | None:
        """The conversation of the newest entry: what -c/--continue picks up."""
        with self._connect() as db:
            row = db.execute("SELECT conversation_id FROM responses ORDER BY id DESC LIMIT 1").fetchone()
        return row["conversation_id"] if row else None

    def conversation(self, conversation_id: str) -> list[dict]:
        """Every entry of one conversation, oldest first."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM responses WHERE conversation_id = ? ORDER BY id",
                              (conversation_id,)).fetchall()
        return [_row_dict(r) for r in rows]


def _row_dict(row: sqlite3.Row) -> dict:
    out = dict(row)
    for key in ("params", "messages", "timings"):
        # Rows from before migration 2 have no messages or timings: None, not an error.
        if out.get(key):
            out[key] = json.loads(out[key])
    return out
