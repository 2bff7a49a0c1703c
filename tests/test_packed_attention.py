"""Packed rows without any length x length tensor: llmctl's packed attention (training/packed_attention.py)
runs SDPA per example, found from the positions. Its logits and gradients equal transformers' own
block-causal SDPA, it builds nothing of the square of the row, and a model switched to it still generates."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from llmctl.finetune.tokenize import IGNORE, Tokenized, pack
from llmctl.training.packed_attention import NAME, use_packed_attention
from llmctl.training.task import forward, lm_loss


def _examples(vocab: int, lengths: list[int], seed: int = 0) -> list[Tokenized]:
    generator = torch.Generator().manual_seed(seed)
    items = []
    for length in lengths:
        ids = torch.randint(3, vocab, (length,), generator=generator).tolist()
        items.append(Tokenized(ids, [IGNORE] * (length // 3) + ids[length // 3:], "test"))
    return items


def _tiny(kind: str):
    """A tiny model of each supported architecture, grouped-query attention included."""
    import transformers

    shapes = dict(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=4096)
    config = {"llama": transformers.LlamaConfig(**shapes), "qwen2": transformers.Qwen2Config(**shapes),
              "qwen3": transformers.Qwen3Config(head_dim=16, **shapes)}[kind]
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_packed_attention_equals_transformers_sdpa_in_logits_and_gradients(kind):
    model = _tiny(kind).train()
    batch = pack(_examples(101, [7, 19, 2, 33, 12]))

    def loss_and_grads():
        model.zero_grad()
        loss = lm_loss(model, batch)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    with torch.no_grad():
        theirs_logits = forward(model, batch).logits
    theirs_loss, theirs_grads = loss_and_grads()
    assert use_packed_attention(model) and model.config._attn_implementation == NAME
    with torch.no_grad():
        ours_logits = forward(model, batch).logits
    ours_loss, ours_grads = loss_and_grads()
    torch.testing.assert_close(ours_logits, theirs_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_loss, theirs_loss, atol=1e-6, rtol=1e-6)
    for ours, theirs in zip(ours_grads, theirs_grads):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


class LargestTensor(TorchDispatchMode):
    """The element count of the largest tensor any operation produced."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def _largest_in_a_step(model, batch) -> int:
    with LargestTensor() as spy:
        lm_loss(model, batch).backward()
    return spy.largest


def test_a_long_packed_row_builds_nothing_of_the_square_of_its_length():
    model = _tiny("llama").train()
    batch = pack(_examples(101, [64] * 48, seed=3))  # 48 examples, 3,024 positions
    length = batch["input_ids"].size(1)
    assert _largest_in_a_step(model, batch) >= length * length  # transformers' SDPA: an L x L mask (the test can tell)
    use_packed_attention(model)
    assert _largest_in_a_step(model, batch) < length * length // 16


def test_a_switched_model_still_generates_alone_and_in_padded_batches():
    model = _tiny("llama").eval()
    prompts = torch.randint(3, 101, (2, 6), generator=torch.Generator().manual_seed(4))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])  # the first row left-padded
    settings = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    before = [model.generate(prompts[1:], **settings), model.generate(prompts, attention_mask=mask, **settings)]
    use_packed_attention(model)
    after = [model.generate(prompts[1:], **settings), model.generate(prompts, attention_mask=mask, **settings)]
    for a, b in zip(after, before):
        assert torch.equal(a, b)


def test_only_supported_sdpa_models_are_switched(tiny_base_model):
    from transformers import AutoModelForCausalLM

    assert not use_packed_attention(AutoModelForCausalLM.from_pretrained(tiny_base_model))  # GPT-2: not in the list
    eager = _tiny("llama")
    eager.set_attn_implementation("eager")
    assert not use_packed_attention(eager) and eager.config._attn_implementation == "eager"  # asked for: kept


def test_boundaries_are_read_again_for_new_positions_at_the_same_address():
    """A later batch's positions may sit where an earlier, freed tensor was, with the same shape: the
    boundaries must come from the new tensor, never from a cache keyed on the address."""
    from llmctl.training.packed_attention import _LastSegments

    storage = torch.tensor([0, 1, 2, 0, 1, 0, 1, 2])
    first = storage[None]
    assert _LastSegments.of(first, 1) == [[(0, 3), (3, 5), (5, 8)]]
    storage.data.copy_(torch.tensor([0, 1, 0, 1, 2, 3, 0, 1]))  # new contents, same address, no version bump
    second = storage[None]
    assert second.data_ptr() == first.data_ptr() and second._version == first._version
    assert _LastSegments.of(second, 1) == [[(0, 2), (2, 6), (6, 8)]]
