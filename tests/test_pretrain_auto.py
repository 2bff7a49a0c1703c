"""The settings `llmctl pretrain` chooses from the budget, corpus and machine (pretrain/auto.py): each rule
on plain numbers, the flags that win over it, the table and the record of a real run."""

from __future__ import annotations

import json

import pytest

from llmctl.errors import UsageError
from llmctl.pretrain.auto import (SHAPES, TOKENS_PER_PARAM, Budget, choose, context_for, dropout_for, flops_per_token,
                                  hidden_params, render)

SHAKESPEARE_BYTES = 1_115_394
RECIPE_RATE = 9.1e3 * flops_per_token(4, 128, 128, 2048)  # the machine where the 4x128 recipe ran 400 steps in 90 s


def test_a_quiet_two_core_machine_gets_the_measured_best_in_90_seconds():
    c = choose(Budget(seconds=90), SHAKESPEARE_BYTES, RECIPE_RATE, {}).values
    assert (c["tokenizer"], c["vocab_size"], c["layers"], c["width"], c["heads"], c["context"]) == \
        ("bpe", 2048, 3, 96, 3, 128)
    assert c["batch_size"] * c["context"] == 1024 and c["optimizer"] == "muon" and c["muon_lr"] == 0.02
    assert c["lr"] == pytest.approx(3e-3) and c["min_lr"] == 0.0


def test_a_slower_machine_or_shorter_budget_gets_a_smaller_model():
    slow = choose(Budget(seconds=90), SHAKESPEARE_BYTES, RECIPE_RATE / 8, {}).values
    assert (slow["layers"], slow["width"]) == (2, 64)
    fast = choose(Budget(seconds=3600), SHAKESPEARE_BYTES, RECIPE_RATE * 10, {}).values
    assert fast["width"] > 128 and fast["lr"] < 3e-3 and fast["batch_size"] * fast["context"] > 2048
    # Every shape is the largest the budget feeds TOKENS_PER_PARAM tokens per hidden parameter.
    tokens = RECIPE_RATE * 10 * 3600 / flops_per_token(fast["layers"], fast["width"], fast["context"], 2048)
    assert tokens >= TOKENS_PER_PARAM * hidden_params(fast["layers"], fast["width"])
    layers, width = SHAPES[SHAPES.index((fast["layers"], fast["width"])) + 1]  # the next shape up is not fed
    tokens = RECIPE_RATE * 10 * 3600 / flops_per_token(layers, width, context_for(width), 2048)
    assert tokens < TOKENS_PER_PARAM * hidden_params(layers, width)


def test_token_and_step_budgets_need_no_measurement():
    by_tokens = choose(Budget(tokens=3_200_000), SHAKESPEARE_BYTES, None, {}).values
    assert (by_tokens["layers"], by_tokens["width"]) == (4, 128)
    assert (choose(Budget(tokens=3_100_000), SHAKESPEARE_BYTES, None, {}).values["width"]) == 96
    by_steps = choose(Budget(steps=400), SHAKESPEARE_BYTES, None, {}).values
    assert by_steps["batch_size"] * by_steps["context"] == 2048 and by_steps["warmup_steps"] == 26
    assert by_steps["eval_every"] == 133 and by_steps["save_every"] == 133


def test_dropout_comes_with_many_passes_over_the_corpus():
    """None while a budget passes over the corpus up to 11 times (as estimated, which runs above the passes
    made; the 90 s runs measured), then rising to 0.1 by 15, where 0.1 beat none in the 180 s and 270 s runs
    (bench/RESULTS.md)."""
    assert [dropout_for(p) for p in (0.5, 10.9, 11, 13, 15, 19, 50)] == [0.0, 0.0, 0.0, 0.05, 0.1, 0.1, 0.1]
    quiet = choose(Budget(seconds=90), SHAKESPEARE_BYTES, RECIPE_RATE, {})
    assert quiet.values["dropout"] == 0.0 and "~5 passes over the corpus: too few" in quiet.reasons["dropout"]
    longer = choose(Budget(seconds=270), SHAKESPEARE_BYTES, RECIPE_RATE, {})
    assert longer.values["dropout"] == 0.1 and "~15 passes" in longer.reasons["dropout"]
    # A token budget counts its passes from the corpus size: ~3.5 characters a BPE token.
    assert choose(Budget(tokens=6_000_000), SHAKESPEARE_BYTES, None, {}).values["dropout"] == 0.1
    assert choose(Budget(tokens=6_000_000), 10 * SHAKESPEARE_BYTES, None, {}).values["dropout"] == 0.0
    assert "dropout" not in choose(Budget(seconds=270), SHAKESPEARE_BYTES, RECIPE_RATE, {"dropout": 0.0}).values


def test_the_corpus_size_picks_the_tokenizer():
    assert choose(Budget(steps=10), 50_000, None, {}).values["tokenizer"] == "char"
    assert choose(Budget(steps=10), 31_525_224, None, {}).values["vocab_size"] == 8192  # python-stdlib
    assert choose(Budget(steps=10), 300_000, None, {}).values["vocab_size"] == 1024


def test_given_settings_win_and_are_not_chosen():
    given = {"tokenizer": "char", "width": 96, "lr": 1e-3, "optimizer": "adamw", "batch_size": 3}
    assert choose(Budget(steps=10), 10**6, None, {"optimizer": "muon"}).values["muon_lr"] == 0.02
    c = choose(Budget(seconds=90), SHAKESPEARE_BYTES, RECIPE_RATE, given)
    assert not set(given) & set(c.values)
    assert c.values["heads"] == 3 and "muon_lr" not in c.values and c.values["min_lr"] == 0.0
    table = render(c, RECIPE_RATE)
    assert "GFLOP/s" in table and "any flag you give wins" in table
    assert all(name.replace("_", "-") in table for name in c.values)


def test_a_budget_too_small_for_one_step_is_a_usage_error():
    with pytest.raises(UsageError, match="shorter than one training step"):
        choose(Budget(seconds=0.001), SHAKESPEARE_BYTES, RECIPE_RATE, {})
    with pytest.raises(UsageError, match="less than one sequence"):
        choose(Budget(tokens=10), SHAKESPEARE_BYTES, None, {})


def test_a_run_records_what_it_chose(cli, tmp_path):
    data = tmp_path / "a.txt"
    data.write_text("".join(f"KING: my lord, the {i}th messenger is come.\nQUEEN: and then?\n" for i in range(400)))
    out = tmp_path / "run"
    r = cli("pretrain", "--data", str(data), "--out", str(out), "--max-tokens", "600", "--width", "32",
            "--layers", "1", "--context", "16", "--eval-batches", "1", "--no-register", "--json")
    assert r.code == 0, r.err
    assert "settings chosen from the budget" in r.err and "tokenizer     char" in r.err
    record = json.loads((out / "llmctl-train.json").read_text())["config"]
    assert record["tokenizer"] == "char" and record["model"]["width"] == 32 and record["model"]["heads"] == 1
    assert set(record["chosen"]) >= {"tokenizer", "heads", "batch_size", "lr", "optimizer"}
    assert "width" not in record["chosen"] and record["train"]["optimizer"] == "muon"
    assert r.json()["tokens"] >= 600


def test_cli_budget_too_small(cli, tmp_path):
    data = tmp_path / "a.txt"
    data.write_text("x y z\n" * 5000)
    r = cli("pretrain", "--data", str(data), "--out", str(tmp_path / "o"), "--max-tokens", "3")
    assert r.code == 2 and "less than one sequence" in r.err


@pytest.mark.parametrize("how", ["flag", "accelerate config"])
def test_a_fully_sharded_run_chooses_adamw(tmp_path, monkeypatch, how):
    """Muon orthogonalises whole matrices and FSDP gives each process a shard of each: a sharded run's
    chosen optimizer is AdamW, whether --fsdp or an accelerate FSDP config (its env) asked for sharding."""
    from llmctl.pretrain.config import PretrainConfig
    from llmctl.pretrain.resolve import fill_in

    assert choose(Budget(steps=10), 10**6, None, {}, sharded=True).values["optimizer"] == "adamw"
    data = tmp_path / "a.txt"
    data.write_text("to be or not to be\n" * 200)
    cfg = PretrainConfig(data=[str(data)])
    cfg.train.max_steps = 10
    if how == "flag":
        cfg.train.fsdp = True
    else:
        monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    fill_in(cfg, lambda line: None, lambda measure: measure())
    assert cfg.train.optimizer == "adamw" and "fully sharded" in cfg.chosen["optimizer"]
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    plain = PretrainConfig(data=[str(data)])
    plain.train.max_steps = 10
    fill_in(plain, lambda line: None, lambda measure: measure())
    assert plain.train.optimizer == "muon"


def test_a_given_shape_gets_the_batch_and_steps_its_own_speed_buys():
    """--preset tiny (4x128) on a machine where the chooser would pick 3x96: the batch, warmup and
    evaluation cadence follow the tokens 90 s buy for 4x128, not for the shape it did not train."""
    shape = {"layers": 4, "width": 128, "heads": 4, "context": 128}
    assert choose(Budget(seconds=90), SHAKESPEARE_BYTES, RECIPE_RATE, {}).values["width"] == 96
    c = choose(Budget(seconds=90), SHAKESPEARE_BYTES, RECIPE_RATE, shape).values
    steps = 9.1e3 * 90 // (c["batch_size"] * 128)  # RECIPE_RATE is 9.1K tokens/s of 4x128
    assert c["batch_size"] == 8 and steps == 799
    assert c["warmup_steps"] == steps // 15 and c["eval_every"] == steps // 3
