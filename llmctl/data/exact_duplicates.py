"""Which rows repeat an earlier row exactly, found in 8 bytes a row: each row's digest goes into flat arrays,
sorted at the end, instead of a set of Python objects (~100 bytes a row). What is kept after is the set of
digests more than one row has: nothing, in a file without duplicates."""

from __future__ import annotations

import heapq
from array import array

CHUNK = 8192  # digests a block: 64 KB blocks come from the heap, and freed they serve the next pass again


class DigestLog:
    """Every row's 8-byte digest, in sorted blocks."""

    def __init__(self) -> None:
        self.blocks = [array("Q")]

    def add(self, digest: bytes) -> None:
        if len(self.blocks[-1]) >= CHUNK:
            self.blocks[-1] = array("Q", sorted(self.blocks[-1]))
            self.blocks.append(array("Q"))
        self.blocks[-1].append(int.from_bytes(digest, "little"))

    def repeated(self) -> set[int]:
        """The digests that more than one row has."""
        self.blocks[-1] = array("Q", sorted(self.blocks[-1]))
        found, previous = set(), None
        for digest in heapq.merge(*self.blocks):
            if digest == previous:
                found.add(digest)
            previous = digest
        return found
