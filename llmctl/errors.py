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
EXIT_GATE = 6  # an eval gate (--fail-under, --fail-over, --max-drop) failed; the run is saved all the same
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
