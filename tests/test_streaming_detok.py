"""Streaming from local models: each token's text from a few recent ids, whole characters only, exact
stop strings, and a prefill that computes logits for the last position alone."""

from __future__ import annotations

import pytest
import torch
from transformers.convert_slow_tokenizer import bytes_to_unicode

from llmctl.backends.base import GenerationRequest, Message, SamplingParams
from llmctl.backends.detokenize import MAX_PENDING, StreamDetokenizer
from llmctl.backends.hf_decode import DecodeRow
from tests.tiny_models import build_tokenizer, endless_chat_backend

ACCENTS_AND_EMOJI = "Größe über café — ok 🙂🎉 日本語, ñandú!"


class CountingTokenizer:
    """The real tokenizer, recording how many ids each decode call was given."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.decoded_lengths: list[int] = []

    def decode(self, ids, **kwargs):
        self.decoded_lengths.append(len(ids))
        return self.tokenizer.decode(ids, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def byte_token_ids(tokenizer, text: str) -> list[int]:
    """`text` as one byte-level token per UTF-8 byte: every multi-byte character split across tokens."""
    alphabet = bytes_to_unicode()
    return [tokenizer.convert_tokens_to_ids(alphabet[b]) for b in text.encode()]


@pytest.fixture(scope="module")
def long_backend(tmp_path_factory):
    """The tiny chat model with a 4096-token context that never ends a reply by itself."""
    return endless_chat_backend(tmp_path_factory.mktemp("tiny-long"), "long")


def ask(text="Hello", **params) -> GenerationRequest:
    return GenerationRequest([Message("user", text)], SamplingParams(**params))


def test_characters_split_across_byte_tokens_come_out_whole():
    tokenizer = CountingTokenizer(build_tokenizer(None))
    ids = byte_token_ids(tokenizer, ACCENTS_AND_EMOJI)
    detok = StreamDetokenizer(tokenizer)
    deltas = [detok.add(i) for i in ids]
    assert "".join(deltas) + detok.flush() == ACCENTS_AND_EMOJI
    assert all("\ufffd" not in d for d in deltas)
    emoji = len("Größe über café — ok ".encode())  # the 4 byte tokens of 🙂 start here
    assert deltas[emoji:emoji + 4] == ["", "", "", "🙂"]
    assert max(tokenizer.decoded_lengths) <= 2 * 4  # the last cut's ids as context, and one character's bytes


def test_a_stray_byte_shows_as_in_a_whole_decode_and_is_not_held_forever():
    tokenizer = CountingTokenizer(build_tokenizer(None))
    lone = byte_token_ids(tokenizer, "é")[1:]  # a continuation byte with nothing before it
    ids = byte_token_ids(tokenizer, "a") + lone * 100 + byte_token_ids(tokenizer, "b")
    detok = StreamDetokenizer(tokenizer)
    joined = "".join(detok.add(i) for i in ids) + detok.flush()
    assert joined == tokenizer.tokenizer.decode(ids) == "a" + "\ufffd" * 100 + "b"
    assert max(tokenizer.decoded_lengths) <= 2 * MAX_PENDING


def test_two_thousand_streamed_tokens_equal_one_decode_with_bounded_work(long_backend):
    tokenizer = CountingTokenizer(long_backend.tokenizer)
    _, prompt_ids = long_backend._encode(ask())
    # Sampling from random weights: bytes that make and break UTF-8 characters, and special tokens.
    row = DecodeRow(prompt_ids, ask(temperature=1.0, seed=7, max_tokens=2000), 2000, tokenizer)
    chunks = [chunk for _, chunk in long_backend.decode_batch([row])]
    generated = row.detok.ids
    assert len(generated) == 2000 and chunks[-1].finish_reason == "length"
    assert "".join(c.text for c in chunks) == long_backend.tokenizer.decode(generated, skip_special_tokens=True)
    # A whole decode per token would pass ~2 million ids in all; a window passes a few per token.
    assert len(tokenizer.decoded_lengths) <= 2 * 2000 + 2
    assert sum(tokenizer.decoded_lengths) <= 10 * 2000
    assert max(tokenizer.decoded_lengths) <= 2 * MAX_PENDING


class ScriptedModel(torch.nn.Module):
    """The real tiny model with its next token forced to follow a script, as a logits processor would."""

    def __init__(self, model, script: list[int]):
        super().__init__()
        self.model, self.script, self.step = model, script, 0

    def get_base_model(self):  # as peft: the decoding loop reads the forward arguments from here
        return self.model

    def forward(self, **kwargs):
        out = self.model(**kwargs)
        forced = torch.full_like(out.logits[:, -1:], float("-inf"))
        forced[..., self.script[self.step]] = 0.0
        self.step += 1
        out.logits = forced
        return out


def scripted_chunks(backend, text: str, stop: list[str]):
    script = byte_token_ids(backend.tokenizer, text)
    row = backend.prepare_row(ask(temperature=0, max_tokens=len(script), stop=stop))
    saved = backend.model
    backend.model = ScriptedModel(saved, script)
    try:
        return [chunk for _, chunk in backend.decode_batch([row])]
    finally:
        backend.model = saved


def test_a_stop_string_across_byte_tokens_cuts_exactly(long_backend):
    chunks = scripted_chunks(long_backend, "Größe 🙂 über STOP, and no more", stop=["🙂 üb"])
    assert "".join(c.text for c in chunks) == "Größe "
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage["completion_tokens"] == len("Größe 🙂 üb".encode())


def test_without_a_stop_every_character_streams_whole(long_backend):
    chunks = scripted_chunks(long_backend, ACCENTS_AND_EMOJI, stop=[])
    assert "".join(c.text for c in chunks) == ACCENTS_AND_EMOJI
    assert all("\ufffd" not in c.text for c in chunks) and chunks[-1].finish_reason == "length"


def test_the_prefill_computes_logits_for_the_last_position_only(long_backend):
    positions = []
    hook = long_backend.model.lm_head.register_forward_hook(lambda m, args, out: positions.append(out.shape[1]))
    try:
        rows = [long_backend.prepare_row(ask(p, temperature=0, max_tokens=3))
                for p in ("a long prompt of several words, " * 4, "short")]  # left padding in the batch
        list(long_backend.decode_batch(rows))
        long_backend.generate(ask("one row alone", temperature=0, max_tokens=3)).text()
    finally:
        hook.remove()
    assert positions == [1] * 6
