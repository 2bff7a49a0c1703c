"""`llmctl tokenize`: text as the model sees it, one token at a time, with ids and special tokens."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from llmctl.errors import UsageError
from llmctl.inspect.distribution import token_text
from llmctl.inspect.local import check_text, inspected_tokenizer

if TYPE_CHECKING:
    from llmctl.config import Config


@dataclass
class Token:
    id: int
    text: str
    special: bool = False


@dataclass
class Tokenization:
    model: str
    text: str  # what was tokenized: TEXT, or with --chat the rendered chat prompt
    tokens: list[Token]
    chat: bool = False

    @property
    def chars_per_token(self) -> float:
        return len(self.text) / len(self.tokens) if self.tokens else 0.0

    def to_dict(self) -> dict:
        return {"model": self.model, "chat": self.chat, "text": self.text, "count": len(self.tokens),
                "characters": len(self.text), "chars_per_token": round(self.chars_per_token, 4),
                "special": sum(t.special for t in self.tokens), "ids": [t.id for t in self.tokens],
                "tokens": [asdict(t) for t in self.tokens]}


def special_ids(tokenizer) -> set[int]:
    """The named special tokens (BOS, EOS, ...) and every token added as special (<|im_start|>, ...)."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return set(tokenizer.all_special_ids) | {i for i, token in added.items() if getattr(token, "special", False)}


def as_tokens(tokenizer, ids: list[int]) -> list[Token]:
    special = special_ids(tokenizer)
    return [Token(i, token_text(tokenizer, i), i in special) for i in ids]


def encode(tokenizer, text: str, *, chat_rendered: bool = False) -> list[int]:
    """As the local backend does: a chat template writes its own special tokens, raw text gets the
    tokenizer's defaults (a BOS, for models that want one)."""
    return list(tokenizer(text, add_special_tokens=not chat_rendered)["input_ids"])


def tokenize(ref: str, text: str, *, chat: bool = False, system: str | None = None,
             config: Config | None = None) -> Tokenization:
    """`text`'s tokens under `ref`'s tokenizer; `chat`: the whole prompt the chat template renders
    around it as a user turn (with `system` when given), as `llmctl prompt` sends it."""
    check_text(text)
    entry, tokenizer = inspected_tokenizer(ref, "tokenizing", config)
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise UsageError(f"'{entry.name}' has no chat template, so there is no chat prompt to show",
                             hint="drop --chat to tokenize the text as is")
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return Tokenization(entry.name, text, as_tokens(tokenizer, encode(tokenizer, text, chat_rendered=chat)), chat)
