"""Which rows repeat an earlier row exactly, found in 8 bytes a row: each row's digest goes into one flat
array, sorted once at the end, instead of a set of Python objects (~100 bytes a row)."""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

CHUNK = 1 << 20  # digests compared at a time against the repeated ones: bounded temporary arrays


@dataclass
class RepeatedRows:
    """The rows (by ordinal, counted from 0) whose digest more than one row has, in order, with their digests."""

    ordinals: array = field(default_factory=lambda: array("Q"))
    digests: array = field(default_factory=lambda: array("Q"))


class DigestLog:
    """Every row's 8-byte digest, in row order."""

    def __init__(self) -> None:
        self.digests = array("Q")

    def add(self, digest: bytes) -> None:
        self.digests.append(int.from_bytes(digest, "little"))

    def repeated(self) -> RepeatedRows:
        import numpy as np

        found = RepeatedRows()
        every = np.frombuffer(self.digests, dtype=np.uint64) if self.digests else np.zeros(0, np.uint64)
        ordered = np.sort(every)
        values = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
        del ordered
        if not len(values):
            return found
        for start in range(0, len(every), CHUNK):
            part = every[start:start + CHUNK]
            hit = values[np.minimum(np.searchsorted(values, part), len(values) - 1)] == part
            for k in np.flatnonzero(hit).tolist():
                found.ordinals.append(start + k)
                found.digests.append(int(part[k]))
        return found
