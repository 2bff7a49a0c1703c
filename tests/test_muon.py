"""--optimizer muon: Muon on hidden matrices and AdamW on the rest, as one optimizer the loop, accelerate
and checkpoints handle like AdamW; exact resume; clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmctl.errors import UsageError
from llmctl.pretrain.config import PretrainConfig
from llmctl.pretrain.model import GPTConfig, build_model, preset
from llmctl.pretrain.run import pretrain
from llmctl.training.config import TrainConfig
from llmctl.training.optim import MuonWithAdamW, build_optimizer


@pytest.fixture(scope="module")
def verses(tmp_path_factory):
    path = tmp_path_factory.mktemp("muon") / "verses.txt"
    path.write_text("".join(f"ROMEO: line {i} of the play, spoken softly.\nJULIET: answer {i * 7 % 13}.\n"
                            for i in range(300)))
    return path


def run(verses: Path, out: Path, **train) -> dict:
    settings = dict(max_steps=6, batch_size=4, log_every=1, warmup_steps=2, eval_every=100, save_every=3,
                    eval_batches=2, keep_checkpoints=5, optimizer="muon", lr=3e-3)
    resume = train.pop("resume", None)
    return pretrain(PretrainConfig(data=[str(verses)], out=out, tokenizer="char", register=False, resume=resume,
                                   model=preset("tiny", layers=2, heads=2, width=32, context=32),
                                   train=TrainConfig(**{**settings, **train})))


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_the_split_muon_for_hidden_matrices_adamw_for_the_rest():
    model = build_model(GPTConfig(layers=2, heads=2, width=32, context=16, tied=False), 40, 0, 0)
    opt = build_optimizer(model, TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.02))
    assert isinstance(opt, MuonWithAdamW)
    muon = {id(p) for g in opt.muon.param_groups for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in muon}
    assert names and all(("proj" in n) for n in names)
    assert not any("embed" in n or "lm_head" in n or "norm" in n for n in names)
    assert len(muon) + sum(len(g["params"]) for g in opt.adamw.param_groups) == len(list(model.parameters()))
    assert opt.muon.param_groups[0]["lr_scale"] == pytest.approx(20)


def test_muon_learns_faster_than_adamw_per_step_here(verses, tmp_path):
    adamw = run(verses, tmp_path / "adamw", optimizer="adamw", max_steps=20)
    muon = run(verses, tmp_path / "muon", max_steps=20)
    assert muon["final_val_loss"] < adamw["final_val_loss"]


def test_resume_from_a_muon_checkpoint_is_exact(verses, tmp_path):
    """Training 3 -> 6 from the step-3 checkpoint gives the weights of the uninterrupted run, bit for bit:
    Muon's momentum and AdamW's moments both come back."""
    run(verses, tmp_path / "full")
    run(verses, tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoints" / "step-0000003"))
    a, b = weights(tmp_path / "full"), weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    state = torch.load(tmp_path / "full" / "checkpoints" / "step-0000006" / "optimizer.pt", weights_only=True)
    assert set(state) == {"muon", "adamw"} and state["muon"]["state"]


def test_an_adamw_checkpoint_does_not_resume_under_muon(verses, tmp_path):
    run(verses, tmp_path / "a", optimizer="adamw")
    with pytest.raises(UsageError, match="saved by another optimizer"):
        run(verses, tmp_path / "b", resume=str(tmp_path / "a" / "checkpoints" / "step-0000003"))


def test_bad_optimizer_settings(verses, tmp_path):
    with pytest.raises(UsageError, match="unknown --optimizer 'sgd'"):
        run(verses, tmp_path / "x", optimizer="sgd")
    class EmbeddingsOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens, self.norm = torch.nn.Embedding(10, 4), torch.nn.LayerNorm(4)

    model = EmbeddingsOnly()
    with pytest.raises(UsageError, match="no 2-D hidden weight matrices"):
        build_optimizer(model, TrainConfig(optimizer="muon"))


def test_cli_unknown_optimizer_exits_2(cli, verses, tmp_path):
    r = cli("pretrain", "--data", str(verses), "--out", str(tmp_path / "o"), "--max-steps", "2", "--optimizer", "lion")
    assert r.code == 2 and "unknown --optimizer 'lion'" in r.err
