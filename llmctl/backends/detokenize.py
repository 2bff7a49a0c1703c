"""Generated token ids to text deltas, decoding only a few recent ids per token.

Decoding the whole answer at every step costs O(n) per token, O(n²) per answer. As TGI, vLLM and
`tokenizers.decoders.DecodeStream` do, we decode a short window instead: the ids since the last cut,
after the ids of the cut before as context (a SentencePiece decoder drops the leading space of the
first id it sees; with context, the new ids keep theirs). Works with any tokenizer's `decode`.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"
# Ids held back waiting for a character to complete. A UTF-8 character has at most 4 bytes, so
# real text gets nowhere near this; a model looping on stray bytes would otherwise grow the window forever.
MAX_PENDING = 32


class StreamDetokenizer:
    """Feed ids one at a time; the deltas joined equal one `decode` of all of them (special tokens skipped)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0  # the window starts here: the ids between the last two cuts, as context
        self.read_offset = 0  # the last cut: the text of every id before it has been returned
        self.prefix_text = ""  # the window's text up to the last cut

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self._decode(self.ids[self.prefix_offset:])
        # Text ending in U+FFFD may be a character whose remaining bytes come with the next ids.
        if text.endswith(REPLACEMENT) and len(self.ids) - self.read_offset < MAX_PENDING:
            return ""
        return self._cut(text)

    def flush(self) -> str:
        """The text held back at the end: an unfinished character shows as U+FFFD, as in a whole decode."""
        if self.read_offset == len(self.ids):
            return ""
        return self._cut(self._decode(self.ids[self.prefix_offset:]))

    def _cut(self, text: str) -> str:
        delta = text[len(self.prefix_text):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        self.prefix_text = self._decode(self.ids[self.prefix_offset:self.read_offset])
        return delta

    def _decode(self, ids: list[int]) -> str:
        # No clean-up of spaces before punctuation: applied to a window it would differ from the whole.
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
