"""`llmctl finetune inspect` / `--dry-run`: what a run would train on, before it trains.

One example rendered with the masked (prompt) tokens marked, the token-length histogram, how many
examples are too long, and a rough memory estimate. The model's weights are never loaded: its
size comes from its config on the meta device.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from llmctl.errors import UsageError
from llmctl.finetune.config import FinetuneConfig
from llmctl.finetune.data import DataReport, iter_examples
from llmctl.finetune.lora_share import lora_share
from llmctl.finetune.tokenize import IGNORE, encode_prefix

BINS = 10


def _tokenizer_and_size(ref: str):
    import torch
    from transformers import AutoModelForCausalLM

    from llmctl.loading import load_model_config, load_tokenizer, local_entry, quiet_transformers

    quiet_transformers()
    entry = local_entry(ref, "fine-tuning")
    if entry.adapter:
        raise UsageError(f"cannot fine-tune '{ref}'", hint="choose a local base model (not remote, not an adapter)")
    tokenizer = load_tokenizer(entry)
    config = load_model_config(entry)
    with torch.device("meta"):  # shapes only: no memory, no weights read
        model = AutoModelForCausalLM.from_config(config)
    return entry, tokenizer, config, model


def _pieces(tokenizer, item) -> list[tuple[str, bool]]:
    """Consecutive runs of (text, learned?) of one encoded example."""
    pieces = []
    for token, label in zip(item.ids, item.labels):
        learned = label != IGNORE
        text = tokenizer.decode([token])
        if pieces and pieces[-1][1] == learned:
            pieces[-1] = (pieces[-1][0] + text, learned)
        else:
            pieces.append((text, learned))
    return pieces


def _histogram(lengths: Counter) -> list[dict[str, int]]:
    low, high = min(lengths), max(lengths)
    width = max(1, (high - low + BINS) // BINS)
    return [{"from": low + i * width, "to": low + (i + 1) * width - 1,
             "count": sum(c for n, c in lengths.items() if low + i * width <= n < low + (i + 1) * width)}
            for i in range(BINS) if low + i * width <= high]


def inspect_data(cfg: FinetuneConfig) -> dict[str, Any]:
    """What `cfg` would train on: its data, model, max_length, batch size, rank and targets. The examples are
    read, encoded and counted one at a time: what is kept is a count per token length, not the examples."""
    from llmctl.finetune.models import choose_template
    from llmctl.finetune.run import method_class

    unit = method_class(cfg.method).unit
    if unit != "examples":
        raise UsageError(f"--dry-run inspects fine-tuning examples, not {unit} (--method {cfg.method})",
                         hint="drop --dry-run; llmctl data inspect shows any data file")
    entry, tokenizer, config, model = _tokenizer_and_size(cfg.base)
    template = choose_template(entry, tokenizer)
    context = getattr(config, "max_position_embeddings", None) or 2048
    limit = cfg.max_length or min(context, 2048)
    report, lengths, first, cut_short = DataReport(), Counter(), None, 0
    for example in iter_examples(cfg.data, cfg.format, cfg.columns, cfg.skip_bad_rows, report):
        item, cut = encode_prefix(tokenizer, example, limit)
        lengths[len(item.ids)] += 1  # for a cut example, the tokens of its first part: already over the limit
        cut_short += cut
        first = first or item
    params = sum(p.numel() for p in model.parameters())
    share = lora_share(config, cfg.rank, cfg.targets)
    lora = share.trainable
    hidden, layers = getattr(config, "hidden_size", 0), getattr(config, "num_hidden_layers", 0)
    total = sum(n * c for n, c in lengths.items())
    mean = total / report.examples
    batch_tokens = cfg.train.batch_size * mean
    # Rough: fp32 weights; LoRA weights, grads and two Adam moments; activations ~ 34 bytes per
    # token per layer per hidden unit (Korthikanti et al.) plus the logits over the vocabulary.
    memory = {"weights_gb": params * 4 / 1e9, "lora_and_optimizer_gb": lora * 16 / 1e9,
              "activations_gb": batch_tokens * layers * hidden * 34 / 1e9
              + batch_tokens * getattr(config, "vocab_size", 0) * 8 / 1e9}
    memory["total_gb"] = sum(memory.values())
    return {
        "format": report.format, "rows": report.rows, "examples": report.examples, "skipped_rows": len(report.skipped),
        "template": template, "model": entry.name, "parameters": params, "lora_parameters": lora,
        "lora": share.to_dict(),
        "max_length": limit, "too_long": sum(c for n, c in lengths.items() if n > limit),
        "too_long_counted_in_part": cut_short,  # tokenized only until past max_length: their counts are lower bounds
        "tokens": {"min": min(lengths), "mean": round(mean, 1), "max": max(lengths), "total": total},
        "histogram": _histogram(lengths), "example": {"source": first.source, "pieces": _pieces(tokenizer, first),
                                                      "masked_tokens": first.labels.count(IGNORE),
                                                      "learned_tokens": len(first.labels) - first.labels.count(IGNORE)},
        "memory_estimate": {k: round(v, 3) for k, v in memory.items()},
    }
