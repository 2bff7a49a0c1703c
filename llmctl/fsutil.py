"""Crash-safe file writes and an inter-process lock.

Every file llmctl owns is written to a temporary file in the same directory and renamed into
place, so a crash or kill leaves either the old or the new version, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def private_dir(path: Path) -> Path:
    """A folder for user data (prompts, answers, the registry): created readable by the owner only."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def private_file(path: Path) -> Path:
    """Create `path` empty and owner-only if it does not exist yet (an existing file keeps its mode)."""
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600))
    return Path(path)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock held on `path` (created if needed) for the duration of the block.

    A separate lock file, not the data file, because the data file is replaced by rename and a
    lock on a replaced inode protects nothing.
    """
    path = Path(path)
    private_dir(path.parent)  # the first file in LLMCTL_HOME may be a lock: the folder is still owner-only
    with open(path, "a+b") as f:
        if os.name == "nt":  # pragma: no cover - exercised on Windows only
            import msvcrt

            f.seek(0)
            while True:
                try:
                    msvcrt.locking(f.fileno(), msvcrt.LK_LOCK, 1)
                    break
                except OSError:
                    continue
            try:
                yield
            finally:
                f.seek(0)
                msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def save_pretrained_into(directory: Path, *objects: Any) -> None:
    """`save_pretrained` every object (model, tokenizer) into a temporary folder inside `directory`,
    then move each file into place by rename: a reader never sees a half-written file."""
    import shutil

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / ".save.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for obj in objects:
            obj.save_pretrained(tmp)  # transformers/peft write safetensors by default
        for path in tmp.iterdir():
            os.replace(path, directory / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


PROBE_MAX = 64 << 20


def _file_size_limit() -> int | None:
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def write_probe(folder: Path, size: int = 65536) -> OSError | None:
    """The error writing `size` bytes in `folder` raises (disk full, read-only, over the file size limit),
    or None: how to name the cause when a library (SQLite, torch.save) reports only that a write failed."""
    import errno
    import tempfile

    if size > PROBE_MAX:  # past what is worth writing to find out: the file size limit can be read instead
        limit = _file_size_limit()
        if limit is not None and limit < size:
            return OSError(errno.EFBIG, os.strerror(errno.EFBIG))
        size = PROBE_MAX
    chunk = b"\0" * min(size, 1 << 20)
    try:
        with tempfile.TemporaryFile(dir=folder) as f:
            for _ in range(max(1, size // len(chunk))):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        return e
    return None


@contextlib.contextmanager
def building_folder(tmp: Path, what: str, probe_size: int, hint: str | None = None) -> Iterator[Path]:
    """Guard the block that writes a folder under the temporary name `tmp`: if it fails, `tmp` is removed,
    and a failure the file system caused (full, read-only, too large) becomes a StorageError naming the
    cause (`probe_size`: bytes to try writing when the error does not say, about what the block writes)."""
    import shutil

    from llmctl.errors import LlmctlError, StorageError, storage_error

    try:
        yield tmp
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(e, Exception) or isinstance(e, LlmctlError):
            raise
        cause = e if isinstance(e, OSError) and storage_error(e) else write_probe(tmp.parent, probe_size)
        if cause is None:
            raise
        raise StorageError(f"cannot write {what}: {cause.strerror or cause}", hint=hint) from e
