"""ROUGE-L between texts and a near-duplicate index fast enough for thousands of items.

ROUGE-L is the F-measure of the longest common subsequence of word tokens (lower case, letters and
digits only: rouge_score's default tokenizer, without stemming), the measure Self-Instruct and Alpaca
used to drop generated instructions too close to ones already kept.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict

WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def _match_masks(tokens: list[str]) -> dict[str, int]:
    """For each distinct token, a bit mask of the positions where it occurs."""
    masks: dict[str, int] = defaultdict(int)
    for position, token in enumerate(tokens):
        masks[token] |= 1 << position
    return dict(masks)


def _lcs_with_masks(masks: dict[str, int], length: int, other: list[str]) -> int:
    # Bit-parallel LCS (Allison & Dix 1986, Crochemore et al. 2001): one big-integer step per token of
    # `other` instead of a row of the dynamic-programming table; the zero bits of v count the LCS.
    full = (1 << length) - 1
    v = full
    for token in other:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return length - bin(v).count("1")


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists."""
    if not a or not b:
        return 0
    return _lcs_with_masks(_match_masks(a), len(a), b)


def _f_measure(lcs: int, len_a: int, len_b: int) -> float:
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len_a, lcs / len_b
    return 2 * precision * recall / (precision + recall)


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F-measure of two texts, in [0, 1] (symmetric: F weighs precision and recall equally)."""
    a, b = words(candidate), words(reference)
    return _f_measure(lcs_length(a, b), len(a), len(b))


class NearDuplicateIndex:
    """Texts kept so far; `most_similar` finds the closest by ROUGE-L without scoring every one.

    An LCS is never longer than the shared words counted with multiplicity, so 2·shared/(len a + len b)
    bounds the F-measure from above. An inverted index gives that count for every text sharing a word
    with the query; only texts whose bound can exceed the threshold get the exact LCS.
    """

    def __init__(self) -> None:
        self.texts: list[str] = []
        self._lengths: list[int] = []
        self._masks: list[dict[str, int]] = []
        self._postings: dict[str, list[tuple[int, int]]] = defaultdict(list)  # word -> [(text index, count)]

    def __len__(self) -> int:
        return len(self.texts)

    def add(self, text: str) -> int:
        tokens = words(text)
        index = len(self.texts)
        self.texts.append(text)
        self._lengths.append(len(tokens))
        self._masks.append(_match_masks(tokens))
        for token, count in Counter(tokens).items():
            self._postings[token].append((index, count))
        return index

    def most_similar(self, text: str, threshold: float = 0.0) -> tuple[float, int | None]:
        """(score, index) of the most similar text whose score is above `threshold`, else (0.0, None)."""
        tokens = words(text)
        if not tokens:
            return 0.0, None
        shared: dict[int, int] = defaultdict(int)
        for token, count in Counter(tokens).items():
            for index, other_count in self._postings.get(token, ()):
                shared[index] += min(count, other_count)
        best, best_index = threshold, None
        for index, overlap in shared.items():
            length = self._lengths[index]
            if 2 * overlap / (length + len(tokens)) <= best:
                continue
            score = _f_measure(_lcs_with_masks(self._masks[index], length, tokens), length, len(tokens))
            if score > best:
                best, best_index = score, index
        return (best, best_index) if best_index is not None else (0.0, None)
