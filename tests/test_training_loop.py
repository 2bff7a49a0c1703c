"""The one training loop pinned to exact numbers, as torchtune pins its recipes: tiny seeded models,
a few steps, the loss of every step against values computed once.

Update these values only when a numerics change is intended (a new initialisation, schedule, loss or
data order), and say so in the commit. They were computed on CPU in fp32, and were the same over
three runs (one torch thread, and two threads under load from other processes) and with the code as
it was before fine-tuning methods became modules.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from llmctl.finetune.config import DistillSettings, FinetuneConfig, FinetuneTrainConfig
from llmctl.finetune.run import finetune
from llmctl.pretrain.config import PretrainConfig
from llmctl.pretrain.model import preset
from llmctl.pretrain.run import pretrain
from llmctl.training.config import TrainConfig
from tests.cli_helpers import write_jsonl

TOLERANCE = 1e-4  # the progress rows round losses to 5 decimals

PRETRAIN_LOSSES = [3.72221, 3.71082, 3.70024, 3.68496, 3.65993]
PRETRAIN_VAL_LOSS = 3.65598

# method: (per-step training losses, validation loss after training)
# LoRA's dropout masks come from finetune/fast_lora.py's draws (other draws than peft's Bernoulli, so
# other values than before it); with --dropout 0 these runs give peft's own numbers to 5 decimals.
FINETUNE_LOSSES = {
    "lora": ([5.78594, 5.76934, 5.75400, 5.72857, 5.71048], 5.69690),
    "dpo": ([0.69315, 0.68224, 0.66076, 0.63254, 0.61474], 0.59812),
    "distill": ([2.89297, 2.88468, 2.87848], 2.87009),
}
LORA_VAL_LOSS_BEFORE = 5.77482

EXAMPLES = [{"instruction": f"Name item {i}.", "input": "", "output": f"Ahoy! Item {i} be treasure."} for i in range(30)]
PREFERENCES = [{"prompt": f"Tell me about item {i}.", "chosen": f"Ahoy! Item {i} be treasure.",
                "rejected": f"The item {i} is fine."} for i in range(16)]


def train_losses(rows: list[dict]) -> list[float]:
    return [row["loss"] for row in rows if "loss" in row]


def test_pretraining_losses_are_pinned():
    corpus = Path("verses.txt")  # relative: nothing depends on where the test runs
    corpus.write_text("".join(f"ROMEO: line {i} of the play, spoken softly.\nJULIET: answer {i * 7 % 13}.\n"
                              for i in range(300)))
    rows = []
    summary = pretrain(PretrainConfig(
        data=[str(corpus)], out=Path("gpt"), tokenizer="char", register=False,
        model=preset("tiny", layers=2, heads=2, width=32, context=32),
        train=TrainConfig(max_steps=5, batch_size=4, log_every=1, warmup_steps=5, eval_every=100, save_every=100,
                          eval_batches=2)), on_progress=rows.append)
    assert train_losses(rows) == pytest.approx(PRETRAIN_LOSSES, abs=TOLERANCE)
    assert summary["final_val_loss"] == pytest.approx(PRETRAIN_VAL_LOSS, abs=TOLERANCE)


@pytest.mark.parametrize("method", list(FINETUNE_LOSSES))
def test_finetuning_losses_are_pinned(tiny_chat_model, method):
    # Relative data paths: the validation split is chosen by file:line, so an absolute temporary
    # path would pick other examples on every run.
    data = write_jsonl(Path("prefs.jsonl" if method == "dpo" else "examples.jsonl"),
                       PREFERENCES if method == "dpo" else EXAMPLES)
    expected_losses, expected_val_loss = FINETUNE_LOSSES[method]
    rows = []
    summary = finetune(FinetuneConfig(
        data=[data], base=str(tiny_chat_model), out=Path(method), method=method, rank=4, register=False,
        distill=DistillSettings(teacher=str(tiny_chat_model) if method == "distill" else None),
        train=FinetuneTrainConfig(max_steps=len(expected_losses), batch_size=2, lr=1e-2)), on_progress=rows.append)
    assert train_losses(rows) == pytest.approx(expected_losses, abs=TOLERANCE)
    assert summary["val_loss_after"] == pytest.approx(expected_val_loss, abs=TOLERANCE)
    if method == "lora":
        assert summary["val_loss_before"] == pytest.approx(LORA_VAL_LOSS_BEFORE, abs=TOLERANCE)
    if method == "dpo":  # the policy starts as the reference: log 2 exactly
        assert train_losses(rows)[0] == pytest.approx(0.693147, abs=1e-5)

