"""Errors the CLI turns into one line on stderr and a documented exit code.

Library code raises these; only the CLI decides how they are printed, so Python callers get
ordinary exceptions with the same messages.
"""

from __future__ import annotations

# Exit codes are part of the public interface (README, "Exit codes"): scripts rely on them.
EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug: please report it (run with --debug for the traceback)
EXIT_USAGE = 2  # bad flag, bad input file, bad config value, empty prompt
EXIT_MODEL = 3  # unknown model, registry problem, model files missing or unloadable
EXIT_REMOTE = 4  # API key missing/rejected, server unreachable, rate-limited, remote error
EXIT_TRAINING = 5  # training diverged (NaN/inf loss) or ran out of memory; the last good checkpoint is kept
EXIT_GATE = 6  # a check failed: an eval gate (the run is saved all the same) or an export's round trip (file kept)
EXIT_STORAGE = 7  # a file or folder llmctl needs cannot be read or written: not a folder, read-only, disk full
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), the shell convention


class LlmctlError(Exception):
    """Base class: a problem the user can fix, with a message that says how."""

    exit_code = EXIT_INTERNAL

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(LlmctlError):
    """Bad command-line value, bad input file or empty input."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A config file or value that cannot be used; names the file and key."""


class ModelError(LlmctlError):
    """Unknown model reference, registry conflict, or a model that cannot be loaded."""

    exit_code = EXIT_MODEL


class RemoteError(LlmctlError):
    """The remote API failed: no key, rejected key, unreachable, rate limit, server error."""

    exit_code = EXIT_REMOTE


class TrainingError(LlmctlError):
    """Training cannot go on (a NaN/inf loss, out of memory); checkpoints already written are intact."""

    exit_code = EXIT_TRAINING


class StorageError(LlmctlError):
    """The file system refused: a path that is not a folder, no permission, a read-only or full disk."""

    exit_code = EXIT_STORAGE


# errno values that describe the place (full, read-only, not a folder), never a bug in llmctl
_STORAGE_ERRNOS = {"ENOSPC", "EDQUOT", "EFBIG", "EROFS", "EACCES", "EPERM", "ENOTDIR", "EISDIR", "EEXIST",
                   "ENOENT", "ENAMETOOLONG", "ELOOP", "EMFILE", "ENFILE", "EIO", "EXDEV", "ENOTEMPTY", "EBUSY"}
_WRITE_ERRNOS = {"ENOSPC", "EDQUOT", "EFBIG", "EROFS"}


def storage_error(e: OSError, what: str | None = None) -> StorageError | None:
    """The StorageError an OSError from the file system stands for ('cannot write X: No space left on
    device'), or None when it is not about storage (a network error, say)."""
    import errno
    import os

    name = errno.errorcode.get(e.errno or 0, "")
    if name not in _STORAGE_ERRNOS:
        return None
    path = what or e.filename
    verb = "write" if name in _WRITE_ERRNOS else "use"
    reason = e.strerror or os.strerror(e.errno)
    if name == "EEXIST" and path:
        reason = "it exists and is not a folder"  # what mkdir says when a file stands where a folder belongs
    where = f" {path}" if path else ""
    return StorageError(f"cannot {verb}{where}: {reason}", hint=_hint(str(path) if path else "", name))


def _hint(path: str, name: str) -> str | None:
    import os

    home = os.environ.get("LLMCTL_HOME")
    if name in ("ENOSPC", "EDQUOT", "EFBIG"):
        return "free some space (or raise the file size limit) and run the command again"
    if home and path.startswith(os.path.expanduser(home)):
        return f"LLMCTL_HOME is {home}; it must be a folder you can write to"
    return None
