"""Examples to token ids with the loss only on the response, packed without padding.

A prompt is rendered with the model's chat template (or the Alpaca format for models without one)
exactly as `llmctl prompt` renders it, so the fine-tuned model sees at inference what it learned on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmctl.errors import UsageError
from llmctl.finetune.data import Example

IGNORE = -100


@dataclass
class Tokenized:
    ids: list[int]
    labels: list[int]  # IGNORE where no loss (prompt tokens); the token itself where it is learned
    source: str

    @property
    def tokens(self) -> int:
        return len(self.ids)


def encode(tokenizer, example: Example) -> Tokenized:
    if example.text is not None:  # continued pretraining: every token is learned
        ids = tokenizer(example.text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        return Tokenized(ids, list(ids), example.source)
    prompt = tokenizer.apply_chat_template(example.messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(example.messages, tokenize=False)
    if not full.startswith(prompt):  # a template that rewrites earlier turns: fall back to plain appending
        full = prompt + example.messages[-1]["content"] + (tokenizer.eos_token or "")
    # The prompt is tokenized on its own, as at inference; the response continues from there.
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    return Tokenized(prompt_ids + response_ids, [IGNORE] * len(prompt_ids) + response_ids, example.source)


def encode_prefix(tokenizer, example: Example, max_length: int, chars_per_token: int = 8) -> tuple[Tokenized, bool]:
    """encode(), without tokenizing more of a huge example than shows it is longer than `max_length`
    (a fast tokenizer takes many times a 200 MB text's size). Each text is cut to a window of characters,
    starting at `chars_per_token` a token and growing fourfold until the cut example has more than
    `max_length` tokens, or nothing is cut. (tokens, False): exactly encode()'s; (tokens, True): the
    example's first part only, already longer than max_length."""
    window = max_length * chars_per_token
    while True:
        cut = _cut(example, window)
        if cut is example:
            return encode(tokenizer, example), False
        item = encode(tokenizer, cut)
        if len(item.ids) > max_length:
            return item, True
        window *= 4


def _cut(example: Example, window: int) -> Example:
    """The example with every text cut to `window` characters, or the example itself if none is longer."""
    if example.text is not None:
        return example if len(example.text) <= window else Example(text=example.text[:window], source=example.source)
    if all(len(m["content"]) <= window for m in example.messages):
        return example
    return Example(messages=[{**m, "content": m["content"][:window]} for m in example.messages], source=example.source)


def problem(item: Tokenized, max_length: int) -> UsageError | None:
    """Why an encoded example cannot be trained on (too long, nothing to learn), or None."""
    if len(item.ids) > max_length:
        return UsageError(f"{item.source}: the example is {len(item.ids)} tokens, longer than the maximum "
                          f"length {max_length}",
                          hint="raise --max-length (up to the model's context) or pass --skip-bad-rows")
    if all(label == IGNORE for label in item.labels[1:]):
        return UsageError(f"{item.source}: nothing to learn (the response is empty after templating)",
                          hint="fix the row or pass --skip-bad-rows")
    return None


def encode_all(tokenizer, examples: list[Example], max_length: int, skip_bad_rows: bool,
               skipped: list[str]) -> list[Tokenized]:
    out = []
    for example in examples:
        item = encode(tokenizer, example)
        error = problem(item, max_length)
        if error is not None:
            if not skip_bad_rows:
                raise error
            skipped.append(error.message)
            continue
        out.append(item)
    return out


def pack(items: list[Tokenized]) -> dict[str, torch.Tensor]:
    """Concatenate examples into one row with no padding and no mask. Positions restart at each
    example; from them transformers keeps attention inside each example (a block-causal mask for
    eager and sdpa, cu_seqlens for flash attention), so the logits are those of one example at a
    time and no length x length tensor is ever built here."""
    ids, labels, positions = [], [], []
    for item in items:
        ids += item.ids[:-1]
        labels += item.labels[1:]  # shifted: the label at position t is the token t+1
        positions += list(range(len(item.ids) - 1))
    return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]), "position_ids": torch.tensor([positions])}
