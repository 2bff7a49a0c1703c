"""The inspection commands as main.py registers them, for tests of `tokenize`, `next`, `inspect` and
`pretrain pairs`, and tiny models with experts."""

from __future__ import annotations

import pytest

from llmctl.cli.lazy_group import LazyCommand

COMMANDS = {
    "tokenize": LazyCommand("llmctl.cli.tokenize_cmd:tokenize", "Show how a model splits text into tokens: boundaries, ids, count, characters per token."),
    "next": LazyCommand("llmctl.cli.next_cmd:next_token", "Show the next-token distribution after TEXT, side by side per temperature, with its entropy."),
    "inspect": LazyCommand("llmctl.cli.inspect_cmd:app", "A model's insides on a short text: expert routing and attention weights."),
    "pretrain": LazyCommand("llmctl.cli.pretrain_cmd:app", "Pretrain a GPT on your text: tokenizer, token shards, self-supervised next-token training."),
}


@pytest.fixture
def cli(cli, monkeypatch):
    """The real CLI with the inspection commands registered (a no-op once main.py registers them)."""
    from llmctl.cli import main

    for name, command in COMMANDS.items():
        if name not in main.COMMANDS or main.COMMANDS[name].target != command.target:
            monkeypatch.setitem(main.COMMANDS, name, command)
    return cli


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
