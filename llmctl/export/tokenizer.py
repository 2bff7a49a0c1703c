"""A Hugging Face byte-level BPE tokenizer in GGUF form (what llama.cpp reads), and back.

GGUF has no tokenizer.json: the vocabulary, merges, token types, special ids and the chat template are
metadata under llama.cpp's key names, and the pre-tokenizer is one of llama.cpp's named regex sets
(`tokenizer.ggml.pre`). Only tokenizers whose pre-tokenizer matches one of those can run the same there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from llmctl.errors import UsageError

# A pre-tokenizer regex (as tokenizer.json spells it) -> llama.cpp's name for the same split.
# The regexes are transformers' own (the ones its GGUF loader applies), so a round trip reads them back.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLIT_NAMES = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}

# llama.cpp's token types (gguf.TokenType), written as plain ints.
NORMAL, UNUSED, CONTROL, USER_DEFINED = 1, 5, 3, 4


@dataclass
class GGUFTokenizer:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str  # llama.cpp's pre-tokenizer name
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    pad_id: int | None
    add_bos: bool
    add_eos: bool
    chat_template: str | None  # None: a base model (raw completion)
    padded: int = 0  # rows of the embedding the tokenizer never produces, written as [PAD<i>]
    notes: list[str] = field(default_factory=list)


def gguf_tokenizer(tokenizer, vocab_size: int, chat_template: str | None) -> GGUFTokenizer:
    """The GGUF form of `tokenizer` for a model with `vocab_size` embedding rows."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        kind = model.get("type", "unknown")
        raise UsageError(f"only byte-level BPE tokenizers can be exported to GGUF; this model's is {kind}"
                         + (" (a `pretrain --tokenizer char` GPT)" if kind == "WordLevel" else ""),
                         hint="pretrain with the default --tokenizer bpe")
    if spec.get("normalizer"):
        raise UsageError(f"the tokenizer's normalizer ({spec['normalizer'].get('type')}) has no GGUF equivalent")
    pre = pre_tokenizer_name(spec.get("pre_tokenizer"))
    vocab = tokenizer.backend_tokenizer.get_vocab(with_added_tokens=True)
    if max(vocab.values()) >= vocab_size:
        raise UsageError(f"the tokenizer has ids up to {max(vocab.values())} but the model only {vocab_size} embeddings")
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    by_id = {i: token for token, i in vocab.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            tokens.append(added[i]["content"])
            types.append(CONTROL if added[i].get("special") else USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    add_bos, add_eos = _added_specials(tokenizer)
    return GGUFTokenizer(tokens=tokens, types=types, merges=merges, pre=pre, bos_id=tokenizer.bos_token_id,
                         eos_id=tokenizer.eos_token_id, unk_id=tokenizer.unk_token_id, pad_id=tokenizer.pad_token_id,
                         add_bos=add_bos, add_eos=add_eos, chat_template=chat_template,
                         padded=vocab_size - len(by_id))


def pre_tokenizer_name(pre: dict | None) -> str:
    """llama.cpp's name for the pre-tokenizer in a tokenizer.json, or a UsageError naming what it is."""
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else [pre] if pre else []
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True) and not steps[0].get("add_prefix_space"):
        return "gpt-2"  # GPT-2's own regex: our trained BPE tokenizers, GPT-2
    if (kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits")
            and steps[1].get("use_regex", True) and not steps[1].get("add_prefix_space")):
        return "smollm"  # each digit alone, then GPT-2's regex: SmolLM / StarCoder
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = (steps[0].get("pattern") or {}).get("Regex")
        if regex in SPLIT_NAMES:
            return SPLIT_NAMES[regex]
    raise UsageError(f"the tokenizer's pre-tokenizer ({' + '.join(map(str, kinds)) or 'none'}) is not one llama.cpp "
                     "knows by name", hint="supported: GPT-2 byte-level, SmolLM (digits + byte-level), Llama 3, Qwen2")


def _added_specials(tokenizer) -> tuple[bool, bool]:
    """Whether encoding adds BOS / EOS: seen by encoding, since tokenizer classes store it differently."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    add_bos = len(full) > len(plain) and tokenizer.bos_token_id is not None and full[0] == tokenizer.bos_token_id
    add_eos = len(full) > len(plain) and tokenizer.eos_token_id is not None and full[-1] == tokenizer.eos_token_id
    return add_bos, add_eos


def write_tokenizer(writer, tok: GGUFTokenizer) -> None:
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    writer.add_tokenizer_pre(tok.pre)
    writer.add_token_list(tok.tokens)
    writer.add_token_types(tok.types)
    writer.add_token_merges(tok.merges)
    for value, add in ((tok.bos_id, writer.add_bos_token_id), (tok.eos_id, writer.add_eos_token_id),
                       (tok.unk_id, writer.add_unk_token_id), (tok.pad_id, writer.add_pad_token_id)):
        if value is not None:
            add(value)
    writer.add_add_bos_token(tok.add_bos)
    writer.add_add_eos_token(tok.add_eos)
    if tok.chat_template:
        writer.add_chat_template(tok.chat_template)


# -- reading back --------------------------------------------------------------------------------

def load_gguf_tokenizer(path: Path, pre: str | None = None):
    """The tokenizer of a GGUF file, through transformers' GGUF loader, with the pre-tokenizer the file
    names (transformers applies GPT-2's regex to 'smollm', which splits digits first in llama.cpp)."""
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer

    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    pre = pre or read_metadata(path, ("tokenizer.ggml.pre",)).get("tokenizer.ggml.pre")
    if pre == "smollm":
        tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    return tokenizer


def read_metadata(path: Path, keys: tuple[str, ...] | None = None) -> dict:
    """Scalar and string metadata of a GGUF file (string arrays: their length), all keys or just `keys`.

    transformers' header reader walks the file with struct; gguf's GGUFReader, the fallback, makes a
    numpy view per vocabulary entry and takes seconds on a 49k-token vocabulary.
    """
    try:
        from transformers.integrations.gguf.reader import read_gguf_metadata
    except ImportError:
        read_gguf_metadata = None
    if read_gguf_metadata is not None:
        found, _ = read_gguf_metadata(str(path))
    else:
        import gguf

        found = {}
        for key, f in gguf.GGUFReader(path).fields.items():
            array = f.types and f.types[0] == gguf.GGUFValueType.ARRAY
            found[key] = len(f.data) if array and f.types[-1] == gguf.GGUFValueType.STRING else f.contents()
    return found if keys is None else {k: v for k, v in found.items() if k in keys}
