"""A tiny mixture-of-experts model for the inspection tests."""

from __future__ import annotations


def build_moe_model(path, experts: int = 4, per_token: int = 2):
    """A tiny mixture-of-experts GPT, built as `llmctl pretrain --experts` builds one (Mixtral)."""
    from llmctl.pretrain.model import GPTConfig, build_model
    from tests.tiny_models import build_tokenizer

    tokenizer = build_tokenizer(None)
    config = GPTConfig(layers=2, heads=4, width=32, context=64, experts=experts, experts_per_token=per_token)
    model = build_model(config, len(tokenizer), tokenizer.eos_token_id, seed=0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
