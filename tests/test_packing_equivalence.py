"""Packed rows carry no mask: positions that restart at each example are all transformers needs to
keep attention inside each example. Packed logits equal one example at a time, for every attention
implementation that runs on a CPU, and a 16k-token row trains without a length x length input."""

from __future__ import annotations

import pytest
import torch

from llmctl.finetune.tokenize import IGNORE, Tokenized, pack
from llmctl.training.task import forward, lm_loss


def _examples(vocab: int, lengths: list[int], seed: int = 0) -> list[Tokenized]:
    generator = torch.Generator().manual_seed(seed)
    items = []
    for length in lengths:
        ids = torch.randint(3, vocab, (length,), generator=generator).tolist()
        labels = [IGNORE] * (length // 3) + ids[length // 3:]
        items.append(Tokenized(ids, labels, "test"))
    return items


def _load(path, implementation: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, attn_implementation=implementation).eval()


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("which", ["tiny_chat_model", "tiny_base_model"])
def test_packed_logits_equal_one_example_at_a_time(request, which, implementation):
    model = _load(request.getfixturevalue(which), implementation)
    items = _examples(model.config.vocab_size, [7, 19, 2, 33, 12])
    batch = pack(items)
    assert set(batch) == {"input_ids", "labels", "position_ids"}  # no mask of any shape
    with torch.no_grad():
        packed = forward(model, batch).logits[0]
        alone = torch.cat([forward(model, pack([item])).logits[0] for item in items])
        # and a row where the examples could see each other, to show the test can tell
        leaky = model(input_ids=batch["input_ids"], use_cache=False).logits[0]
    assert packed.shape == alone.shape
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(leaky, alone, atol=1e-3)


def test_packed_loss_is_the_token_mean_over_examples(tiny_chat_model):
    model = _load(tiny_chat_model, "sdpa")
    items = _examples(model.config.vocab_size, [9, 21, 14], seed=1)
    with torch.no_grad():
        packed = lm_loss(model, pack(items))
        sums = [lm_loss(model, pack([i])) * sum(l != IGNORE for l in i.labels[1:]) for i in items]
        count = sum(sum(l != IGNORE for l in i.labels[1:]) for i in items)
    assert float(packed) == pytest.approx(float(sum(sums) / count), abs=1e-5)


def test_a_16k_token_row_trains_with_no_square_input(tiny_chat_model):
    """The mask passed to the model is None and positions restart per example; the step runs."""
    model = _load(tiny_chat_model, "sdpa").train()
    items = _examples(model.config.vocab_size, [120] * 137, seed=2)  # 137 * 119 = 16303 positions
    batch = pack(items)
    length = batch["input_ids"].size(1)
    assert length > 16_000
    seen = {}
    real_forward = model.forward

    def spying(*args, **kwargs):
        seen.update(kwargs)
        return real_forward(*args, **kwargs)

    model.forward = spying
    loss = lm_loss(model, batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert seen["attention_mask"] is None and seen["use_cache"] is False
    positions = seen["position_ids"][0]
    assert positions.shape == (length,) and int((positions == 0).sum()) == len(items)
    assert all(t.numel() < length * length for t in batch.values())
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
