"""Tokenizers for pretraining: a byte-level BPE trained on the corpus, characters, or a registry
model's own. Each is saved as a `tokenizer.json` that `AutoTokenizer` loads with no custom code.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterable

from llmctl.errors import UsageError

EOT = "<|endoftext|>"
UNK = "<|unk|>"  # character tokenizer only: a character the training corpus never showed
MIN_BPE_VOCAB = 256 + 1  # the byte alphabet plus the end-of-text token


def _wrap(tokenizer_object):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tokenizer_object, eos_token=EOT, bos_token=EOT,
                                   unk_token=EOT, pad_token=EOT, model_max_length=1 << 30)


def train_bpe(texts: Iterable[str], vocab_size: int):
    """Byte-level BPE (GPT-2 style): every byte is a token, so nothing is ever unknown."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < MIN_BPE_VOCAB:
        raise UsageError(f"--vocab-size {vocab_size} is too small for byte-level BPE", hint=f"use at least {MIN_BPE_VOCAB}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    learned = tok.get_vocab_size()
    if learned < vocab_size:
        raise UsageError(f"--vocab-size {vocab_size} is larger than this corpus supports ({learned} tokens learned)",
                         hint=f"use --vocab-size {learned} or less, or add data")
    return _wrap(tok)


def train_char(texts: Iterable[str]):
    """One token per character seen in the corpus (nanoGPT's shakespeare_char)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    chars: Counter = Counter()
    for text in texts:
        chars.update(text)
    vocab = {EOT: 0, UNK: 1}
    for ch in sorted(chars):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.add_special_tokens([EOT, UNK])
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return _wrap(tok)


def tokenizer_from_model(ref: str):
    """Reuse a registry model's tokenizer (so the new GPT can share it with, e.g., a teacher)."""
    from llmctl.errors import ModelError
    from llmctl.loading import load_tokenizer

    try:
        tokenizer = load_tokenizer(ref, doing="reusing a tokenizer (--tokenizer)")
    except ModelError as e:
        raise UsageError(f"--tokenizer {ref}: {e}") from None
    if tokenizer.eos_token is None:
        tokenizer.eos_token = tokenizer.pad_token or EOT
    return tokenizer


def build_tokenizer(kind: str, vocab_size: int, texts: Iterable[str]):
    if kind == "bpe":
        return train_bpe(texts, vocab_size)
    if kind == "char":
        return train_char(texts)
    return tokenizer_from_model(kind)


def tokenizer_fingerprint(tokenizer) -> str:
    import hashlib

    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode("utf-8")).hexdigest()[:16]


def save_tokenizer(tokenizer, directory: Path) -> None:
    tokenizer.save_pretrained(directory)
