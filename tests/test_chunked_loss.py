"""Every loss is computed on chunks of positions, never on the whole batch's logits: the same
values and gradients as the full-logits formulas (to 1e-5), and the output layer never sees more
positions than a chunk."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmctl.finetune import distill, dpo
from llmctl.finetune.tokenize import IGNORE, Tokenized, pack
from llmctl.training import chunked_loss
from llmctl.training.task import forward, lm_loss

CHUNK = 7  # small, and not a divisor of the row: the last chunk is short


def _model(path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").train()


def _batch(vocab: int, lengths=(11, 23, 9)) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    items = []
    for n in lengths:
        ids = torch.randint(3, vocab, (n,), generator=g).tolist()
        items.append(Tokenized(ids, [IGNORE] * (n // 2) + ids[n // 2:], "t"))
    return pack(items)


def _grads(model) -> list[torch.Tensor]:
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    return grads


def _full_cross_entropy(model, batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The reference: cross-entropy over the whole batch's logits, and the gradients it gives."""
    logits = forward(model, batch).logits
    full = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), batch["labels"].view(-1), ignore_index=IGNORE)
    full.backward()
    return full, _grads(model)


def _assert_lm_loss_matches(model, batch, full: torch.Tensor, expected: list[torch.Tensor]) -> None:
    chunked = lm_loss(model, batch)
    chunked.backward()
    assert float(chunked.detach()) == pytest.approx(float(full.detach()), abs=1e-5)
    got = _grads(model)
    assert len(got) == len(expected) > 0
    for g, want in zip(got, expected):
        torch.testing.assert_close(g, want, atol=1e-5, rtol=1e-4)


def _rows_through(head: torch.nn.Module, monkeypatch) -> list[int]:
    """The number of positions in each call of the output layer, appended as calls happen."""
    rows = []
    real = torch.nn.Linear.forward
    monkeypatch.setattr(torch.nn.Linear, "forward",
                        lambda self, x: (rows.append(x.reshape(-1, x.size(-1)).size(0)) if self is head else None)
                        or real(self, x))
    return rows


def test_cross_entropy_in_chunks_equals_the_full_logits(tiny_chat_model, monkeypatch):
    monkeypatch.setattr(chunked_loss, "CHUNK", CHUNK)
    model = _model(tiny_chat_model)
    batch = _batch(model.config.vocab_size)
    full, expected = _full_cross_entropy(model, batch)
    head = model.get_output_embeddings()
    _assert_lm_loss_matches(model, batch, full, expected)
    assert "forward" not in head.__dict__  # the output layer's own forward is back


def test_the_output_layer_never_sees_more_than_a_chunk(tiny_chat_model, monkeypatch):
    monkeypatch.setattr(chunked_loss, "CHUNK", CHUNK)
    model = _model(tiny_chat_model)
    batch = _batch(model.config.vocab_size)
    head = model.get_output_embeddings()
    rows = _rows_through(head, monkeypatch)
    lm_loss(model, batch).backward()  # backward recomputes each chunk's logits
    length = batch["input_ids"].size(1)
    assert rows and max(rows) <= CHUNK and sum(rows) == 2 * length  # forward + recomputation


def test_dpo_log_probs_in_chunks_equal_the_full_logits(tiny_chat_model, monkeypatch):
    monkeypatch.setattr(chunked_loss, "CHUNK", CHUNK)
    model = _model(tiny_chat_model)
    batch = _batch(model.config.vocab_size)
    batch["segments"] = torch.repeat_interleave(torch.arange(3), torch.tensor([10, 22, 8]))[None]
    batch["ref_logps"] = torch.zeros(3)
    logits = forward(model, batch).logits
    token = -F.cross_entropy(logits.view(-1, logits.size(-1)).float(), batch["labels"].view(-1),
                             ignore_index=IGNORE, reduction="none")
    full = torch.zeros(3).index_add(0, batch["segments"].view(-1), token)
    full.sum().backward()
    expected = _grads(model)
    chunked = dpo.sequence_logps(model, batch)
    chunked.sum().backward()
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=1e-5)
    for got, want in zip(_grads(model), expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("frozen_head", [False, True])  # frozen: two terms a position, both slopes in forward
def test_distillation_in_chunks_equals_the_full_logits(tiny_chat_model, monkeypatch, frozen_head):
    from llmctl.training.config import TrainConfig

    monkeypatch.setattr(chunked_loss, "CHUNK", CHUNK)
    model = _model(tiny_chat_model)
    if frozen_head:
        model.get_input_embeddings().requires_grad_(False)
        model.get_output_embeddings().requires_grad_(False)
    teacher = _model(tiny_chat_model)
    with torch.no_grad():  # a teacher that differs from the student
        for p in teacher.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    batch = _batch(model.config.vocab_size)
    with torch.no_grad():
        teacher_logits = forward(teacher, batch).logits
    terms = distill.distill_terms(forward(model, batch).logits, teacher_logits, batch["labels"], 2.0)
    full = 0.3 * terms.kl.mean() + 0.7 * terms.ce.mean()
    full.backward()
    expected = _grads(model)
    task = distill.DistillTask([], [], TrainConfig(), teacher, temperature=2.0, alpha=0.3)
    chunked = task.loss(model, batch)
    chunked.backward()
    assert float(terms.kl.mean()) > 1e-4  # the KL is not trivially zero
    assert float(chunked.detach()) == pytest.approx(float(full.detach()), abs=1e-5)
    for got, want in zip(_grads(model), expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_a_batch_that_is_one_chunk_runs_a_trained_head_once(tiny_chat_model, monkeypatch):
    """Pretraining's small batches: one chunk holds every position, so its logits are kept for backward
    instead of recomputed (memory holds one chunk either way); the same values and gradients."""
    model = _model(tiny_chat_model)
    batch = _batch(model.config.vocab_size)
    full, expected = _full_cross_entropy(model, batch)
    head = model.get_output_embeddings()
    rows = _rows_through(head, monkeypatch)
    _assert_lm_loss_matches(model, batch, full, expected)
    assert rows == [batch["input_ids"].size(1)]  # forward only, every position at once


def test_a_frozen_head_gets_its_gradient_in_forward_and_is_never_run_again(tiny_chat_model, monkeypatch):
    """LoRA: the output layer is frozen, so each chunk's gradient to the hidden states is taken while its
    logits exist; backward recomputes nothing, and values and gradients still equal the full logits'."""
    monkeypatch.setattr(chunked_loss, "CHUNK", CHUNK)
    model = _model(tiny_chat_model)
    head = model.get_output_embeddings()
    model.get_input_embeddings().requires_grad_(False)
    head.requires_grad_(False)
    batch = _batch(model.config.vocab_size)
    full, expected = _full_cross_entropy(model, batch)
    rows = _rows_through(head, monkeypatch)
    _assert_lm_loss_matches(model, batch, full, expected)
    assert rows and max(rows) <= CHUNK and sum(rows) == batch["input_ids"].size(1)  # forward only


def test_chunks_of_a_large_vocabulary_stay_under_the_logits_budget():
    big = torch.nn.Linear(8, 49152, device="meta")
    small = torch.nn.Linear(8, 320, device="meta")
    assert chunked_loss.chunk_positions(big) * 49152 <= chunked_loss.LOGITS_PER_CHUNK
    assert chunked_loss.chunk_positions(big) == 128 and chunked_loss.chunk_positions(small) == chunked_loss.CHUNK
