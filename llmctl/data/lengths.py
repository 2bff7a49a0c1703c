"""Length statistics of a data file's fields (characters, words and, with a tokenizer, tokens) kept as
counts per distinct length, so memory follows the number of distinct lengths, not the rows."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any


def count_words(text: str, chunk: int = 1 << 20) -> int:
    """len(text.split()), a megabyte at a time, so a huge field is never a list of its words."""
    count, previous_ends_in_word = 0, False
    for start in range(0, len(text), chunk):
        piece = text[start:start + chunk]
        count += len(piece.split())
        if previous_ends_in_word and not piece[0].isspace():
            count -= 1  # one word cut in two by the chunk boundary
        previous_ends_in_word = not piece[-1].isspace()
    return count


def describe(counts: Counter) -> dict[str, float]:
    """min, mean, median and max of the values counted (value -> how many times): the same figures as over
    the list, kept in one entry per distinct length, far fewer than the rows."""
    values = sorted(counts)
    n = sum(counts.values())
    seen, below, above = 0, None, None
    for value in values:
        seen += counts[value]
        if below is None and seen > (n - 1) // 2:
            below = value
        if seen > n // 2:
            above = value
            break
    return {"min": values[0], "mean": round(sum(v * c for v, c in counts.items()) / n, 1),
            "median": round((below + above) / 2, 1), "max": values[-1]}


class LengthStats:
    """Lengths of every field's texts in chars, words and (with a tokenizer) tokens: counts per length,
    not a number per row."""

    BATCH = 256  # texts tokenized at once
    BATCH_CHARS = 1 << 22  # ... or fewer, once they hold this many characters
    # A longer text is counted a piece at a time, each piece ending before a space, where a byte-level BPE
    # starts a new word anyway: a tokenizer's memory follows the piece, not a 200 MB text.
    PIECE = 1 << 20

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer
        self.lengths: dict[str, dict[str, Counter]] = {}
        self.pending: dict[str, list[str]] = defaultdict(list)
        self.pending_chars: Counter = Counter()

    def add(self, fields: dict[str, list[str]]) -> None:
        """One row's texts by field name."""
        for name, values in fields.items():
            field = self.lengths.setdefault(name, {"chars": Counter(), "words": Counter(), "tokens": Counter()})
            for value in values:
                field["chars"][len(value)] += 1
                field["words"][count_words(value)] += 1
                if self.tokenizer is None:
                    continue
                if len(value) > self.PIECE:
                    field["tokens"][self.count_in_pieces(value)] += 1
                    continue
                self.pending[name].append(value)
                self.pending_chars[name] += len(value)
                if len(self.pending[name]) >= self.BATCH or self.pending_chars[name] >= self.BATCH_CHARS:
                    self._tokenize(name)

    def _tokenize(self, name: str) -> None:
        ids = self.tokenizer(self.pending.pop(name), add_special_tokens=False)["input_ids"]
        self.pending_chars.pop(name, None)
        self.lengths[name]["tokens"].update(len(i) for i in ids)

    def count_in_pieces(self, text: str) -> int:
        total, start = 0, 0
        while start < len(text):
            end = min(len(text), start + self.PIECE)
            if end < len(text):
                space = text.rfind(" ", start + 1, end)
                end = space if space > start else end
            total += len(self.tokenizer(text[start:end], add_special_tokens=False)["input_ids"])
            start = end
        return total

    def result(self) -> dict[str, dict[str, Any]]:
        for name in list(self.pending):
            self._tokenize(name)
        stats = {}
        for name, field in self.lengths.items():
            if field["chars"]:
                stats[name] = {"count": sum(field["chars"].values()), "chars": describe(field["chars"]),
                               "words": describe(field["words"])}
                if self.tokenizer is not None:
                    stats[name]["tokens"] = describe(field["tokens"])
        return stats
