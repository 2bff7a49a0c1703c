"""Perplexity of a local model on text, with a sliding window over texts longer than its context.

Each token is scored once, with as much left context as the window allows (stride = half the
window), as in the Hugging Face perplexity guide. Bits per character and per byte make models with
different tokenizers comparable.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from llmctl.errors import UsageError
from llmctl.pretrain.data import CorpusReport, CorpusSpec, iter_documents


@torch.no_grad()
def document_nll(model, ids: list[int], window: int, device) -> tuple[float, int]:
    """Summed negative log-likelihood (nats) of ids[1:] and how many tokens that covers."""
    stride = max(1, window // 2)
    total, counted, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids) - 1, stride):
        end = min(begin + window, len(ids))
        chunk = torch.tensor([ids[begin:end]], device=device)
        nll = torch.nn.functional.cross_entropy(model(input_ids=chunk).logits[0, :-1].float(), chunk[0, 1:],
                                                reduction="none")
        fresh = min(end - prev_end, nll.numel())  # score only tokens no earlier window scored
        total += float(nll[-fresh:].sum())
        counted += fresh
        prev_end = end
        if end == len(ids):
            break
    return total, counted


def perplexity(model_ref: str, data: list[str], text_field: str = "text", window: int | None = None,
               config=None) -> dict[str, Any]:
    from llmctl.config import Config
    from llmctl.prompting import open_backend, resolve_entry

    from llmctl.providers import require_local

    entry = resolve_entry(model_ref)
    require_local(entry, "perplexity")
    backend = open_backend(entry, config or Config())
    model, tokenizer = backend.model, backend.tokenizer
    window = min(window or backend.context_length, backend.context_length)
    if window < 2:
        raise UsageError(f"--window must be at least 2, got {window}")
    report = CorpusReport()
    nll = tokens = chars = nbytes = 0
    for text in iter_documents(CorpusSpec(data, text_field=text_field), report):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", False):
            ids = [tokenizer.bos_token_id] + ids
        if len(ids) < 2:
            continue
        doc_nll, doc_tokens = document_nll(model, ids, window, backend.device)
        nll, tokens = nll + doc_nll, tokens + doc_tokens
        chars, nbytes = chars + len(text), nbytes + len(text.encode("utf-8"))
    if tokens == 0:
        raise UsageError("no text to score", hint="check --data (and --text-field for JSONL/CSV/Parquet)")
    loss = nll / tokens
    backend.close()
    return {"model": model_ref, "documents": report.documents, "tokens": tokens, "characters": chars, "bytes": nbytes,
            "window": window, "loss": round(loss, 5), "perplexity": round(math.exp(min(loss, 50)), 4),
            "bits_per_char": round(nll / math.log(2) / chars, 5), "bits_per_byte": round(nll / math.log(2) / nbytes, 5),
            "skipped_files": len(report.skipped_files)}


PERPLEXITY_METRICS = ("loss", "perplexity", "bits_per_char", "bits_per_byte")


def perplexity_run(model_ref: str, data: list[str], text_field: str = "text", window: int | None = None,
                   config=None, save_dir=None):
    """`llmctl eval perplexity` saved as an eval run (its figures are the metrics; one row with them all)."""
    from llmctl.evaluate.runs import measured_run

    rows: list[dict[str, Any]] = []

    def work(writer) -> dict[str, Any]:
        doc = perplexity(model_ref, data, text_field, window, config)
        rows.append({"index": 0, **doc})
        writer.append(rows[0])
        return {name: doc[name] for name in PERPLEXITY_METRICS}

    summary = {"models": [model_ref], "data": list(data), "settings": {"text_field": text_field, "window": window}}
    return measured_run("perplexity", summary, save_dir, work, lambda: rows)
