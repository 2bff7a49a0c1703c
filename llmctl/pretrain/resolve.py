"""Filling in what `llmctl pretrain` was not told: measure the machine, ask auto.choose, apply the answer.
A resumed run takes its earlier choices from the checkpoint instead, so it continues the same run."""

from __future__ import annotations

import json
import time
from typing import Any, Callable

from llmctl.pretrain.auto import Budget, choose, render
from llmctl.pretrain.config import AUTO_MODEL, AUTO_TRAIN, PretrainConfig
from llmctl.pretrain.data import CorpusSpec, resolve_files
from llmctl.pretrain.model import GPTConfig, check

PROBE = GPTConfig(layers=4, heads=4, width=128, context=128)  # the recipe-sized model the speed probe times
PROBE_BATCH, PROBE_STEPS = 8, 3  # the first step warms up and is not timed


def corpus_bytes(spec: CorpusSpec) -> int:
    return sum(path.stat().st_size for path in resolve_files(spec))


def given_settings(cfg: PretrainConfig) -> dict[str, Any]:
    given = {k: getattr(cfg, k) for k in ("tokenizer", "vocab_size") if getattr(cfg, k) is not None}
    given.update({k: getattr(cfg.model, k) for k in AUTO_MODEL if getattr(cfg.model, k) is not None})
    given.update({k: getattr(cfg.train, k) for k in AUTO_TRAIN if getattr(cfg.train, k) is not None})
    return given


def missing(cfg: PretrainConfig) -> bool:
    return len(given_settings(cfg)) < 2 + len(AUTO_MODEL) + len(AUTO_TRAIN)


def measure_flops(vocab: int) -> float:
    """Training FLOP/s of this machine, now: a few AdamW steps of the probe model on random tokens."""
    import torch

    from llmctl.pretrain.auto import flops_per_token
    from llmctl.pretrain.model import build_model

    model = build_model(PROBE, vocab, 0, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, vocab, (PROBE_BATCH, PROBE.context), generator=torch.Generator().manual_seed(0))
    with torch.random.fork_rng():
        for step in range(PROBE_STEPS):
            if step == 1:
                start = time.perf_counter()
            model(input_ids=tokens, labels=tokens).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    per_step = (time.perf_counter() - start) / (PROBE_STEPS - 1)
    return PROBE_BATCH * PROBE.context * flops_per_token(PROBE.layers, PROBE.width, PROBE.context, vocab) / per_step


def previous_choices(cfg: PretrainConfig) -> dict[str, Any] | None:
    """The settings chosen when this run started, if it is being resumed."""
    from llmctl.training.checkpoint import STATE, resolve_resume

    start = resolve_resume(cfg.resume, cfg.out / "checkpoints")
    if start is None:
        return None
    run = json.loads((start / STATE).read_text()).get("run_config") or {}
    values = {k: run.get(k) for k in ("tokenizer", "vocab_size")}
    values.update({k: (run.get("model") or {}).get(k) for k in AUTO_MODEL})
    values.update({k: (run.get("train") or {}).get(k) for k in AUTO_TRAIN})
    return {k: v for k, v in values.items() if v is not None} | {"chosen": run.get("chosen") or {}}


def apply(cfg: PretrainConfig, values: dict[str, Any]) -> None:
    for name, value in values.items():
        if name in ("tokenizer", "vocab_size"):
            setattr(cfg, name, value)
        elif name in AUTO_MODEL:
            setattr(cfg.model, name, value)
        elif name in AUTO_TRAIN:
            setattr(cfg.train, name, value)


def fill_in(cfg: PretrainConfig, note: Callable[[str], None], flops_source: Callable[[Callable[[], float]], float]) -> None:
    """Choose every setting cfg leaves as None; note the table. `flops_source(measure)` runs the probe
    (the main process measures, the others receive its figure, so every process chooses alike)."""
    if not missing(cfg):
        return
    earlier = previous_choices(cfg) if cfg.resume else None
    if earlier is not None:
        cfg.chosen = {k: v for k, v in earlier.pop("chosen").items() if k not in given_settings(cfg)}
        apply(cfg, {k: v for k, v in earlier.items() if k not in given_settings(cfg)})
    else:
        given = given_settings(cfg)
        budget = Budget(cfg.train.max_time, cfg.train.max_tokens, cfg.train.max_steps)
        size = corpus_bytes(CorpusSpec(cfg.data, cfg.glob, cfg.text_field, cfg.min_chars))
        flops = None
        if budget.seconds is not None:
            vocab = given.get("vocab_size") or choose(Budget(steps=1), size, None, given).values.get("vocab_size", 2048)
            flops = flops_source(lambda: measure_flops(vocab if given.get("tokenizer") != "char" else 256))
        from llmctl.training.distributed import fsdp_requested

        choices = choose(budget, size, flops, given, sharded=fsdp_requested(cfg.train.fsdp))
        apply(cfg, choices.values)
        cfg.chosen = {k: f"{v} ({choices.reasons[k]})" for k, v in choices.values.items()}
        note(render(choices, flops))
    if cfg.train.muon_lr is None:  # only read by Muon; a number keeps the saved config complete
        cfg.train.muon_lr = 0.02
    if cfg.train.optimizer is None:
        cfg.train.optimizer = "adamw"
    check(cfg.model)
