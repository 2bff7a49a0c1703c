"""Logit distillation on tiny models: the KL term by hand, zero KL against itself, a run that moves
the student toward a teacher, and the shared-tokenizer check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmctl.finetune.distill import distill_terms
from tests.cli_helpers import write_jsonl
from tests.tiny_models import CHATML, CORPUS, SPECIALS

PAIRS = [{"instruction": f"Name item {i}.", "input": "", "output": f"Ahoy! Item {i} be treasure."} for i in range(30)]




def test_kl_and_cross_entropy_terms_by_hand():
    student = torch.tensor([[[1.0, 0.0, -1.0], [0.5, 0.5, 0.0], [2.0, 1.0, 0.0]]])
    teacher = torch.tensor([[[0.0, 2.0, 0.0], [0.5, 0.5, 0.0], [9.0, 9.0, 9.0]]])
    labels = torch.tensor([[1, 0, -100]])  # the last position is a prompt token: no loss there
    terms = distill_terms(student, teacher, labels, temperature=2.0)
    p = torch.softmax(teacher[0, 0] / 2, -1)
    q = torch.softmax(student[0, 0] / 2, -1)
    by_hand = 4 * float((p * (p.log() - q.log())).sum())  # KL(teacher ‖ student) · T²
    assert terms.kl.shape == (2,) and terms.kl[0].item() == pytest.approx(by_hand, rel=1e-5)
    assert terms.kl[1].item() == pytest.approx(0.0, abs=1e-7)  # identical rows: nothing to learn
    assert terms.ce[0].item() == pytest.approx(float(-torch.log_softmax(student[0, 0], -1)[1]), rel=1e-5)
    same = distill_terms(student, student.clone(), torch.tensor([[0, 1, 2]]), temperature=1.0)
    assert torch.all(same.kl.abs() < 1e-6)


def test_kl_is_zero_when_the_teacher_is_the_student(cli, tmp_path, tiny_chat_model):
    data = write_jsonl(tmp_path / "d.jsonl", PAIRS[:10])
    r = cli("finetune", "--method", "distill", "--teacher", str(tiny_chat_model), "--data", str(data),
            "-m", str(tiny_chat_model), "--out", str(tmp_path / "kd"), "--max-steps", "1", "--batch-size", "4",
            "--no-register", "--json")
    assert r.code == 0, r.err
    s = r.json()
    assert s["kl_before"] == pytest.approx(0.0, abs=1e-6) and s["ce_before"] > 1.0
    assert s["val_loss_before"] == pytest.approx(0.5 * s["ce_before"], rel=1e-4)  # α = 0.5: half the CE


def test_distillation_moves_the_student_toward_the_teacher(cli, tmp_path, tiny_chat_model):
    # A relative path (the test runs in its own folder): the held-out rows are chosen by file:line, so an
    # absolute temporary path would hold out different rows each run, and the figures below would vary.
    data = write_jsonl(Path("d.jsonl"), PAIRS)
    # the teacher: the same tiny model after supervised fine-tuning (a registered adapter)
    teacher = cli("finetune", "--data", str(data), "-m", str(tiny_chat_model), "--out", str(tmp_path / "teacher"),
                  "--max-steps", "15", "--batch-size", "4", "--lr", "3e-2", "--warmup-steps", "2", "--rank", "4")
    assert teacher.code == 0, teacher.err
    out = tmp_path / "student"
    r = cli("finetune", "--method", "distill", "--teacher", "teacher", "--data", str(data), "-m", str(tiny_chat_model),
            "--out", str(out), "--max-steps", "15", "--batch-size", "4", "--lr", "3e-2", "--warmup-steps", "2",
            "--rank", "4", "--eval-every", "5", "--distill-alpha", "1", "--json")
    assert r.code == 0, r.err
    s = r.json()
    assert s["kl_after"] < s["kl_before"] / 3 and s["ce_after"] < s["ce_before"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "val_kl" in row] == [0, 5, 10, 15]
    assert all("kl" in row and "ce" in row for row in rows if "loss" in row)
    shown = cli("models", "show", "student", "--json").json()
    assert shown["lineage"]["method"] == "distill" and shown["lineage"]["teacher"] == "teacher"
    assert shown["lineage"]["temperature"] == 2.0 and shown["base"] == str(tiny_chat_model)


def test_a_teacher_of_another_architecture_with_the_same_tokenizer_works(cli, tmp_path, tiny_chat_model,
                                                                          tiny_base_model):
    data = write_jsonl(tmp_path / "d.jsonl", PAIRS[:10])
    r = cli("finetune", "--method", "distill", "--teacher", str(tiny_base_model), "--data", str(data),
            "-m", str(tiny_chat_model), "--out", str(tmp_path / "kd"), "--max-steps", "2", "--batch-size", "4",
            "--no-register", "--json")
    assert r.code == 0, r.err
    assert r.json()["kl_before"] > 0.001  # two different random models


def build_other_tokenizer_model(path: Path, vocab_size: int) -> Path:
    """A tiny chat model whose BPE learned its merges from the same sentences written backwards:
    the same alphabet and specials, other ids (and, at another vocab_size, another size)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([text[::-1] for text in CORPUS], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>")
    fast.chat_template = CHATML
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(fast), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=128)).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def test_teachers_with_another_tokenizer_are_refused(cli, tmp_path, tiny_chat_model):
    from transformers import AutoTokenizer

    data = write_jsonl(tmp_path / "d.jsonl", PAIRS[:4])
    size = len(AutoTokenizer.from_pretrained(tiny_chat_model))
    for vocab_size, message in ((size, "token id"), (size - 20, "vocabularies have")):
        other = build_other_tokenizer_model(tmp_path / f"other-{vocab_size}", vocab_size)
        r = cli("finetune", "--method", "distill", "--teacher", str(other), "--data", str(data),
                "-m", str(tiny_chat_model), "--out", str(tmp_path / "o"), "--max-steps", "1")
        errors = [line for line in r.err.splitlines() if line.startswith("error:")]
        assert r.code == 2 and len(errors) == 1 and "must share a tokenizer" in errors[0], r.err
        assert message in errors[0] and "llmctl data distill" in r.err and "Traceback" not in r.err


@pytest.mark.parametrize("teacher, args, code, message", [
    ("openai:gpt-4o", [], 2, "gives no logits to distil"),
    (None, [], 2, "--method distill needs a teacher"),
    ("nosuch", [], 3, "unknown model 'nosuch'"),
    ("same", ["--distill-alpha", "1.5"], 2, "--distill-alpha must be between 0 and 1"),
    ("same", ["--distill-temperature", "0"], 2, "--distill-temperature must be positive"),
])
def test_errors(cli, tmp_path, tiny_chat_model, teacher, args, code, message):
    data = write_jsonl(tmp_path / "d.jsonl", PAIRS[:4])
    flag = ["--teacher", str(tiny_chat_model) if teacher == "same" else teacher] if teacher else []
    r = cli("finetune", "--method", "distill", *flag, "--data", str(data), "-m", str(tiny_chat_model), *args,
            "--out", str(tmp_path / "o"), "--max-steps", "1")
    errors = [line for line in r.err.splitlines() if line.startswith("error:")]
    assert r.code == code and len(errors) == 1 and message in errors[0], r.err
    assert "Traceback" not in r.err and not (tmp_path / "o" / "adapter_model.safetensors").exists()
