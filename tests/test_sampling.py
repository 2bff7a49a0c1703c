"""Sampling knobs mean the same as in HF generate and vLLM; stop strings and detokenizing stream well."""

from __future__ import annotations

import torch

from llmctl.backends.detokenize import StreamDetokenizer
from llmctl.sampling import StopMatcher, apply_repetition_penalty, filter_top_k_top_p, sample_next
from tests.tiny_models import build_tokenizer


def kept(logits):
    return torch.isfinite(logits).nonzero().flatten().tolist()


def test_top_k_keeps_the_k_likeliest():
    logits = torch.tensor([1.0, 4.0, 3.0, 2.0])
    assert kept(filter_top_k_top_p(logits, 2, 1.0)) == [1, 2]
    assert kept(filter_top_k_top_p(logits, 0, 1.0)) == [0, 1, 2, 3]


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    assert kept(filter_top_k_top_p(logits, 0, 0.5)) == [0]
    assert kept(filter_top_k_top_p(logits, 0, 0.6)) == [0, 1]
    assert kept(filter_top_k_top_p(logits, 0, 0.81)) == [0, 1, 2]
    assert kept(filter_top_k_top_p(logits, 0, 0.0)) == [0]  # never empty


def test_repetition_penalty_matches_hf():
    from transformers import RepetitionPenaltyLogitsProcessor

    logits = torch.tensor([2.0, -2.0, 1.0, 0.5])
    seen = torch.tensor([0, 1, 1])
    ours = apply_repetition_penalty(logits, seen, 2.0)
    assert ours.tolist() == [1.0, -4.0, 1.0, 0.5]
    theirs = RepetitionPenaltyLogitsProcessor(2.0)(seen.view(1, -1), logits.view(1, -1).clone())
    assert torch.equal(ours, theirs[0])


def test_greedy_and_seeded_sampling():
    logits = torch.tensor([0.0, 3.0, 1.0])
    assert sample_next(logits, 0.0, 0, 1.0, None) == 1
    draws = [sample_next(logits, 1.0, 0, 1.0, torch.Generator().manual_seed(0)) for _ in range(3)]
    assert len(set(draws)) == 1
    g = torch.Generator().manual_seed(0)
    assert {sample_next(logits, 1.0, 1, 1.0, g) for _ in range(20)} == {1}  # top-k 1 is greedy


def test_stop_matcher_holds_back_partial_matches():
    m = StopMatcher(["STOP"])
    assert m.feed("Hel") == ("Hel", False)
    assert m.feed("lo ST") == ("lo ", False)
    assert m.feed("OP and more") == ("", True)
    m = StopMatcher(["\n\n"])
    assert m.feed("a\n") == ("a", False)
    assert m.feed("b") == ("\nb", False)
    assert m.flush() == ""


def test_stop_matcher_without_stops_passes_through():
    assert StopMatcher([]).feed("anything") == ("anything", False)


def test_detokenizer_never_splits_a_character():
    tokenizer = build_tokenizer(None)
    text = "Größe über café — ok"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    detok = StreamDetokenizer(tokenizer)
    deltas = [detok.add(i) for i in ids] + [detok.flush()]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)
