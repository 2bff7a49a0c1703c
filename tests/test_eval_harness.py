"""`eval harness`: the offline example task on a tiny model, its accuracy checked against log-likelihoods
computed here by hand; gates on its metrics; lm-eval missing and unknown tasks as usage errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from llmctl.errors import EXIT_GATE, EXIT_USAGE, UsageError

TASK = Path(__file__).resolve().parent.parent / "examples" / "harness" / "llmctl_capitals.jsonl"


def by_hand(model_dir) -> tuple[float, float]:
    """acc and acc_norm as lm-eval defines them: the choice with the highest summed log-probability of its
    tokens after the context (acc_norm: divided by the choice's length in characters)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    right = right_norm = 0
    rows = [json.loads(line) for line in TASK.read_text().splitlines()]
    for row in rows:
        context = f"Question: What is the capital of {row['country']}?\nAnswer:"
        scores = []
        for choice in row["choices"]:
            start = len(tokenizer(context, add_special_tokens=False)["input_ids"])
            ids = tokenizer(context + " " + choice, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
            scores.append(sum(float(logp[i - 1, ids[i]]) for i in range(start, len(ids))))
        right += max(range(len(scores)), key=scores.__getitem__) == row["label"]
        normed = [s / len(c) for s, c in zip(scores, row["choices"])]
        right_norm += max(range(len(normed)), key=normed.__getitem__) == row["label"]
    return right / len(rows), right_norm / len(rows)


def test_offline_task_on_a_tiny_model(cli, tiny_base_model):
    pytest.importorskip("lm_eval")
    acc, acc_norm = by_hand(tiny_base_model)
    r = cli("eval", "harness", "-m", str(tiny_base_model), "--tasks", "llmctl_capitals", "--batch-size", "4",
            "--fail-under", f"acc={acc}", "--fail-over", "acc_norm:llmctl_capitals=1", "--json")
    assert r.code == 0, r.err
    doc = r.json()
    assert doc["metrics"]["acc"] == pytest.approx(acc) and doc["metrics"]["acc:llmctl_capitals"] == pytest.approx(acc)
    assert doc["metrics"]["acc_norm"] == pytest.approx(acc_norm)
    assert doc["rows"][0]["samples"]["effective"] == 8
    shown = cli("eval", "show", doc["id"], "--json").json()
    assert shown["summary"]["kind"] == "harness" and shown["summary"]["metrics"] == doc["metrics"]
    failed = cli("eval", "harness", "-m", str(tiny_base_model), "--tasks", "llmctl_capitals", "--limit", "4",
                 "--baseline", doc["id"], "--max-drop", "acc=0", "--fail-under", "acc=1.01")
    assert failed.code == EXIT_GATE and "acc = " in failed.err and "must be at least 1.01" in failed.err


def test_unknown_task_and_missing_lm_eval(cli, tiny_base_model, monkeypatch):
    pytest.importorskip("lm_eval")
    from llmctl.evaluate.harness import LOCAL_TASKS, check_tasks
    from lm_eval.tasks import TaskManager

    with pytest.raises(UsageError, match="unknown harness task 'llmctl_capital'.*did you mean llmctl_capitals"):
        check_tasks(TaskManager(include_path=[str(LOCAL_TASKS)], include_defaults=False), ["llmctl_capital"])
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if it were not installed
    r = cli("eval", "harness", "-m", str(tiny_base_model), "--tasks", "llmctl_capitals")
    assert r.code == EXIT_USAGE and "needs lm-evaluation-harness" in r.err and "llmctl[eval]" in r.err


def test_an_adapter_goes_in_through_peft(cli, tmp_path, tiny_chat_model):
    pytest.importorskip("lm_eval")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.test_eval_lineage import make_adapter

    adapter = make_adapter(tiny_chat_model, tmp_path / "adapter")
    merged = tmp_path / "merged"
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_chat_model), adapter).merge_and_unload() \
        .save_pretrained(merged)
    AutoTokenizer.from_pretrained(tiny_chat_model).save_pretrained(merged)
    acc, acc_norm = by_hand(merged)
    assert by_hand(tiny_chat_model)[0] != acc  # so the figures below show that the adapter was applied
    assert cli("models", "add", "base", str(tiny_chat_model)).code == 0
    assert cli("models", "add", "tuned", str(adapter), "--base", "base").code == 0
    r = cli("eval", "harness", "-m", "tuned", "--tasks", "llmctl_capitals", "--json")
    assert r.code == 0, r.err
    assert r.json()["metrics"]["acc"] == pytest.approx(acc) and r.json()["metrics"]["acc_norm"] == pytest.approx(acc_norm)
