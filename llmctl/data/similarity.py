"""ROUGE-L between texts and a near-duplicate index fast enough for thousands of items.

ROUGE-L is the F-measure of the longest common subsequence of word tokens (lower case, letters and
digits only: rouge_score's default tokenizer, without stemming), the measure Self-Instruct and Alpaca
used to drop generated instructions too close to ones already kept.
"""

from __future__ import annotations

import math
import re
from array import array
from bisect import bisect_right
from collections import Counter, defaultdict
from typing import Iterator

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


MAX_WORDS = 1000  # the index judges a text by its first 1,000 words (of its first MAX_CHARS characters)
MAX_CHARS = 100_000


def index_words(text: str) -> list[str]:
    """The words the index compares: bounded, so a 50 MB instruction costs what a long paragraph does."""
    return WORD.findall(text[:MAX_CHARS].lower())[:MAX_WORDS]


class WordCounts:
    """About how many texts hold each word, in a fixed 4 MB however many words there are: a count per hash
    bucket, so a word may read a little high. Enough to put rare words first; never needed exactly."""

    BUCKETS = 1 << 20

    def __init__(self) -> None:
        self.counts = array("I", bytes(4 * self.BUCKETS))

    def add(self, tokens: list[str]) -> None:
        for token in set(tokens):
            self.counts[hash(token) % self.BUCKETS] += 1

    def get(self, token: str, default: int = 0) -> int:
        return self.counts[hash(token) % self.BUCKETS]


def _token_id(word: str) -> int:
    """A word as 4 bytes. Two different words share one with odds of 1 in 4 billion per comparison:
    at worst an LCS one word too long, which the tests on exact scores would see."""
    return hash(word) & 0xFFFFFFFF


def append_number(numbers: array, value: int) -> array:
    """numbers.append(value), widening 4-byte numbers to 8 bytes the one time a value needs it."""
    if numbers.typecode == "I" and value > 0xFFFFFFFF:
        numbers = array("Q", numbers)
    numbers.append(value)
    return numbers


class NearDuplicateIndex:
    """Texts kept so far; `most_similar` finds the closest by ROUGE-L without scoring every one.

    Prefix filtering (Chaudhuri et al. 2006; Bayardo et al. 2007): a pair can score above t only if it
    shares more than t·len/(2-t) words (counted with multiplicity) from each side, because the LCS is at
    most the shared words and F = 2·LCS/(len a + len b). Then, with the words of every text in one fixed
    order, the first len - that + 1 of each side must meet, so only those are indexed and looked up.
    Rare words first (`frequency`: word -> how many texts hold it) keeps the lists short: a word in every
    row ("the", "say") sits at the end, outside the prefixes, and the work grows with the rows, not their
    pairs. Without a threshold every word is indexed (any overlap can be the best match).

    Memory is a few bytes per indexed word, in flat arrays, not Python objects per text: each text's words
    as 4-byte ids; the posting lists as one linked list per hash bucket of (word, nth time) elements, 4 bytes
    a posting. A bucket shared by two elements only adds candidates, which the LCS then checks.
    """

    BUCKETS = 1 << 20

    def __init__(self, threshold: float = 0.0, frequency: "dict[str, int] | WordCounts | None" = None, keep_texts: bool = True):
        self.threshold, self.frequency, self.keep_texts = threshold, frequency or {}, keep_texts
        self.texts: list[str] = []
        self._words = array("I")  # every text's word ids, one after another
        self._starts = array("I", [0])  # text i's words are _words[_starts[i]:_starts[i + 1]]
        self._head = array("i", [-1]) * self.BUCKETS  # bucket -> its first posting, oldest first
        self._tail = array("i", [-1]) * self.BUCKETS
        self._next = array("i")  # posting -> the next posting in its bucket, or -1
        self._first_posting = array("I")  # text -> its first posting: a text's postings are consecutive
        self.work = 0  # postings read: what the tests count instead of wall time
        self.cut_short = 0  # searches that stopped at their budget

    def __len__(self) -> int:
        return len(self._starts) - 1

    def _prefix(self, tokens: list[str], threshold: float) -> list[int]:
        """The buckets of the first len - o + 1 (word, occurrence) elements in the global order, o the overlap needed."""
        if not tokens:
            return []
        needed = math.floor(threshold * len(tokens) / (2 - threshold) - 1e-9) + 1
        seen: Counter = Counter()
        elements = []
        for token in tokens:
            seen[token] += 1
            elements.append((token, seen[token]))
        elements.sort(key=lambda e: (self.frequency.get(e[0], 0), e))
        return [hash(e) % self.BUCKETS for e in elements[:len(tokens) - needed + 1]]

    def _text_words(self, index: int) -> array:
        return self._words[self._starts[index]:self._starts[index + 1]]

    def add(self, text: str) -> int:
        tokens = index_words(text)
        index = len(self)
        if self.keep_texts:
            self.texts.append(text)
        self._words.extend(_token_id(t) for t in tokens)
        self._starts = append_number(self._starts, len(self._words))
        self._first_posting = append_number(self._first_posting, len(self._next))
        for bucket in dict.fromkeys(self._prefix(tokens, self.threshold)):  # a text once per bucket
            posting = len(self._next)
            self._next.append(-1)
            if self._tail[bucket] < 0:
                self._head[bucket] = posting
            else:
                self._next[self._tail[bucket]] = posting
            self._tail[bucket] = posting
        return index

    def _postings(self, bucket: int) -> Iterator[int]:
        posting = self._head[bucket]
        while posting >= 0:
            # The text a posting belongs to is found, not stored: 4 bytes a text instead of 4 a posting.
            yield bisect_right(self._first_posting, posting) - 1
            posting = self._next[posting]

    def most_similar(self, text: str, threshold: float = 0.0, first: bool = False,
                     budget: int | None = None) -> tuple[float, int | None]:
        """(score, index) of the most similar text whose score is above `threshold`, else (0.0, None).
        `first`: any text above the threshold will do (the first met, rare words first), which keeps
        a file of near-identical rows ("Say the number 1.", "... 2.") linear instead of quadratic.
        `budget`: read at most this many postings, so the work per text is bounded even when many texts
        share rare-looking words with no near duplicate among them; a search cut short is counted in
        `self.cut_short` (it may have missed a match)."""
        if threshold < self.threshold:
            raise ValueError(f"this index finds scores above {self.threshold}, not {threshold}")
        tokens = index_words(text)
        ids = [_token_id(t) for t in tokens]
        masks = _match_masks(ids)
        best, best_index, seen = threshold, None, set()
        for bucket in dict.fromkeys(self._prefix(tokens, threshold)):
            for index in self._postings(bucket):
                if budget is not None and len(seen) >= budget:
                    self.cut_short += 1
                    return (best, best_index) if best_index is not None else (0.0, None)
                self.work += 1
                if index in seen:
                    continue
                seen.add(index)
                length = self._starts[index + 1] - self._starts[index]
                if 2 * min(length, len(ids)) / (length + len(ids)) <= best:
                    continue
                score = _f_measure(_lcs_with_masks(masks, len(ids), self._text_words(index)), len(ids), length)
                if score > best:
                    best, best_index = score, index
                    if first:
                        return best, best_index
        return (best, best_index) if best_index is not None else (0.0, None)
