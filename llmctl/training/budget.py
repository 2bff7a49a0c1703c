"""A training budget in time, as people write it: 90s, 10m, 1h30m, or plain seconds."""

from __future__ import annotations

import re

from llmctl.errors import UsageError

DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?$")


def parse_duration(text: str | None) -> float | None:
    """'90s', '10m', '1h30m', '45' (seconds) -> seconds."""
    if text is None:
        return None
    match = DURATION.match(text.strip().lower())
    if not text.strip() or not match or not any(match.groups()):
        raise UsageError(f"--max-time {text!r} is not a duration", hint="e.g. 90s, 10m, 1h30m")
    h, m, s = (float(g) if g else 0.0 for g in match.groups())
    seconds = h * 3600 + m * 60 + s
    if seconds <= 0:
        raise UsageError("--max-time must be positive")
    return seconds
