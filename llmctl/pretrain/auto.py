"""Settings `llmctl pretrain` chooses when they are not given: from the budget, the corpus size and the
machine's measured speed. `choose` is a pure function of those three, so each rule can be tested.

The rules start from compute-optimal scaling (a budget buys C FLOPs; a model of N hidden parameters
costs ~6N per token, Chinchilla) but use the ratio measured at this scale: in 90-second CPU runs
(bench/RESULTS.md, 2026-12-04) 3 layers x 96 (0.33M hidden parameters, ~2.4M tokens: ~7 a parameter)
beat 4 x 128 (0.79M, ~1.3M tokens: ~1.7) and 2 x 128 at equal time; Chinchilla's twenty is for far larger
budgets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from llmctl.errors import UsageError

# (layers, width): the ladder of shapes, from a few seconds of CPU to a GPU-day. Heads are 32 wide.
SHAPES = ((2, 64), (3, 96), (4, 128), (4, 192), (6, 256), (6, 384), (8, 512), (12, 768), (16, 1024))
TOKENS_PER_PARAM = 4.0  # tokens seen per hidden parameter at the best shape for a budget (measured, small scale)
# Optimizer steps a run should get. Fewer, larger batches learn less per token at this scale: 8 x 128 tokens
# a step beat 16 x 128 at the same tokens/s in every pair measured (4x128 in 2026-12-03's runs, 3x96 with
# AdamW or Muon and vocabularies of 1,024 or 2,048 in 2026-12-04's: bench/RESULTS.md); 4 x 128 halved the
# tokens/s and lost. A 90 s CPU run of 3x96 gets ~2,400 steps of 8 x 128 (the smallest batch allowed).
TARGET_STEPS = 3000
MIN_BATCH_TOKENS, MAX_BATCH_TOKENS = 1024, 512 * 1024
MIN_BPE_CORPUS = 100_000  # bytes: below this a BPE vocabulary of even 512 is mostly noise; use characters
STEP_BUDGET_BATCH = 2048  # tokens a step when the budget is --max-steps
DEFAULT_STEPS = 1000  # no budget at all (as TrainConfig.check)
CHARS_PER_TOKEN = {"char": 1.0, "bpe": 3.5}  # rough: for the passes over the corpus a budget makes
# Dropout against memorising a corpus the budget passes over many times. 3x96 on tinyshakespeare with Muon
# (bench/RESULTS.md, 2026-12-04), bits/char at dropout 0 / 0.05 / 0.1 / 0.2, by the passes the runs made:
# ~6 passes 2.152 / - / 2.189 / 2.225; ~12 passes 2.136 / 2.118 / 2.099 / -; ~18 passes 2.184 / - / 2.088 /
# 2.118. The thresholds are in the passes estimated here from the probe's FLOP rate, which ran ~40% above the
# passes a 90 s run then made on 2 cores (~8.8 against 6.1: small shapes use the FLOPs less well than the
# probe's 4x128), and moved by the probe's own noise (7.7-11.0 in three 90 s probes of one quiet machine):
# none up to DROPOUT_FROM, then rising to MAX_DROPOUT by DROPOUT_FULL.
DROPOUT_FROM, DROPOUT_FULL, MAX_DROPOUT = 11, 15, 0.1


@dataclass
class Budget:
    seconds: float | None = None
    tokens: int | None = None
    steps: int | None = None


@dataclass
class Choices:
    """The chosen values by setting name, and one line each saying why."""
    values: dict[str, Any] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    def set(self, name: str, value: Any, reason: str) -> None:
        self.values[name], self.reasons[name] = value, reason


def hidden_params(layers: int, width: int) -> int:
    """Attention (4 w^2) plus a SwiGLU MLP (3 x w x 8/3 w) per layer."""
    return layers * 12 * width * width


def flops_per_token(layers: int, width: int, context: int, vocab: int) -> float:
    """PaLM's estimate: 6 x (hidden + output-layer parameters) plus attention's 12 x layers x width x context."""
    return 6 * (hidden_params(layers, width) + vocab * width) + 12 * layers * width * context


def heads_for(width: int) -> int:
    return max(1, width // (64 if width >= 512 else 32))


def context_for(width: int) -> int:
    # Short contexts for small models: attention's cost grows with context while such models use little of it.
    return 128 if width <= 192 else 256 if width <= 384 else 512 if width <= 512 else 1024


def _pow2(x: float) -> int:
    return 1 << max(0, round(math.log2(max(1.0, x))))


def choose_tokenizer(corpus_bytes: int, given: dict[str, Any], out: Choices) -> None:
    if "tokenizer" not in given:
        if corpus_bytes < MIN_BPE_CORPUS:
            out.set("tokenizer", "char", f"corpus of {corpus_bytes:,} bytes is too small for BPE")
        else:
            out.set("tokenizer", "bpe", "byte-level BPE: about 3-4 characters a token, so more text per step")
    if "vocab_size" not in given:
        vocab = min(8192, max(512, _pow2(2 * math.sqrt(corpus_bytes))))
        out.set("vocab_size", vocab, f"~2 x sqrt(corpus bytes), a power of two in [512, 8192]")


def choose_shape(budget_tokens, flops_per_s: float | None, seconds: float | None, vocab: int) -> tuple[int, int, float]:
    """The largest shape the budget can feed TOKENS_PER_PARAM tokens per hidden parameter; its tokens."""
    best = None
    for layers, width in SHAPES:
        context = context_for(width)
        tokens = budget_tokens if budget_tokens else flops_per_s * seconds / flops_per_token(layers, width, context, vocab)
        if best is None or tokens >= TOKENS_PER_PARAM * hidden_params(layers, width):
            best = (layers, width, tokens)
    return best


def choose(budget: Budget, corpus_bytes: int, flops_per_s: float | None, given: dict[str, Any],
           sharded: bool = False) -> Choices:
    """Every setting not in `given` (tokenizer, vocab_size, layers, heads, width, context, batch_size,
    dropout, lr, min_lr, warmup_steps, eval_every, save_every, optimizer, muon_lr), with a reason each.
    `flops_per_s`: the training FLOP rate measured here (needed only for a time budget); `sharded`:
    the run is fully sharded (FSDP), which trains with AdamW only."""
    out = Choices()
    choose_tokenizer(corpus_bytes, given, out)
    tokenizer = given.get("tokenizer", out.values.get("tokenizer"))
    vocab = 256 if tokenizer == "char" else given.get("vocab_size") or out.values["vocab_size"]
    if budget.seconds is None and budget.tokens is None and budget.steps is None:
        budget = Budget(steps=DEFAULT_STEPS)
    if budget.seconds is not None and not flops_per_s:
        raise ValueError("a time budget needs the measured FLOP rate")
    # A token budget is the tokens; a step budget, steps of STEP_BUDGET_BATCH tokens; a time budget, FLOPs.
    fixed = budget.tokens or (budget.steps * STEP_BUDGET_BATCH if budget.steps else None)
    layers, width, tokens = choose_shape(fixed, flops_per_s, budget.seconds, vocab)
    why = (f"~{tokens / 1e6:.2f}M tokens in the budget feed ~{TOKENS_PER_PARAM:g} tokens per hidden parameter "
           f"({hidden_params(layers, width) / 1e6:.2f}M)")
    width = given.get("width", width)
    layers = given.get("layers", layers)
    _maybe(out, given, "layers", layers, why)
    _maybe(out, given, "width", width, why)
    _maybe(out, given, "heads", heads_for(width) if width % heads_for(width) == 0 else 1, "32-wide heads (64 from width 512)")
    context = given.get("context") or context_for(width)
    if "context" not in given:
        limit = _pow2(corpus_bytes / 64) if corpus_bytes < 64 * context else context
        context = min(context, max(16, limit))
        out.set("context", context, "short for small models: attention costs grow with context, small models use little"
                if context == context_for(width) else "the corpus is short")
    if budget.seconds is not None:  # what the budget buys for the shape trained, which a flag may have set
        tokens = flops_per_s * budget.seconds / flops_per_token(layers, width, context, vocab)
    batch_tokens = STEP_BUDGET_BATCH if budget.steps else _batch_tokens(tokens)
    batch = given.get("batch_size") or max(1, batch_tokens // context)
    _maybe(out, given, "batch_size", batch, f"~{batch_tokens:,} tokens a step: about {TARGET_STEPS} optimizer steps")
    if budget.seconds is not None and flops_per_s:
        step_seconds = batch * context * flops_per_token(layers, width, context, vocab) / flops_per_s
        if step_seconds > budget.seconds:
            raise UsageError(f"--max-time {budget.seconds:g}s is shorter than one training step here "
                             f"(~{step_seconds:.1f} s)", hint="give a longer --max-time, or a smaller model and batch")
    if budget.tokens is not None and budget.tokens < context:
        raise UsageError(f"--max-tokens {budget.tokens} is less than one sequence of {context} tokens",
                         hint="give a larger --max-tokens")
    steps = budget.steps or max(1, int(tokens // (batch * context)))
    _choose_optimisation(out, given, width, steps, sharded)
    epochs = tokens * CHARS_PER_TOKEN.get(tokenizer, 3.5) / max(1, corpus_bytes)
    if "batch_size" in out.reasons:
        out.reasons["batch_size"] += f"; ~{steps:,} steps, ~{epochs:.1f} passes over the corpus"
    _maybe(out, given, "dropout", dropout_for(epochs),
           f"~{epochs:.0f} passes over the corpus: " + ("too few to memorise it" if epochs <= DROPOUT_FROM else
                                                        "against memorising it, more the more passes"))
    return out


def dropout_for(passes: float) -> float:
    return round(MAX_DROPOUT * min(1.0, max(0.0, (passes - DROPOUT_FROM) / (DROPOUT_FULL - DROPOUT_FROM))), 2)


def _batch_tokens(tokens: float) -> int:
    return min(MAX_BATCH_TOKENS, max(MIN_BATCH_TOKENS, _pow2(tokens / TARGET_STEPS)))


def _choose_optimisation(out: Choices, given: dict[str, Any], width: int, steps: int, sharded: bool) -> None:
    # Muon learns more per step and, at the shapes chosen here, more per second too: at equal time it reached
    # 0.6-2.2% fewer bits/char than AdamW in all four pairs of 2026-12-04's runs (bench/RESULTS.md). Its
    # Newton-Schulz steps cost ~15 matmuls of width^3 a matrix a step, so it gains more with larger batches.
    # It orthogonalises whole matrices, and FSDP gives each process a shard of each: sharded runs get AdamW.
    default, why = (("adamw", "fully sharded (FSDP) runs train with AdamW") if sharded else
                    ("muon", "fewer bits/char than AdamW at equal time in every pair measured (bench/RESULTS.md)"))
    optimizer = given.get("optimizer", default)
    _maybe(out, given, "optimizer", default, why)
    # AdamW's rate falls as 1/width past 128 (3e-3 at 128 wide, 5e-4 at 768: GPT-2's 6e-4).
    lr = given.get("lr") or min(3e-3, 3e-3 * 128 / width)
    _maybe(out, given, "lr", lr, "3e-3 x 128/width, at most 3e-3" + (" (embeddings, norms, output)" if optimizer == "muon" else ""))
    if optimizer == "muon":
        _maybe(out, given, "muon_lr", 0.02, "Muon's rate for hidden matrices (modded-nanogpt scale, per matrix shape)")
    # Decaying to zero: no worse than to a tenth at this scale (bench/RESULTS.md), and better in the
    # literature on longer runs (e.g. "Straight to Zero", Bergsma et al. 2025).
    _maybe(out, given, "min_lr", 0.0, "the cosine decays to zero by the end of the budget")
    _maybe(out, given, "warmup_steps", max(5, min(200, steps // 15)), "~7% of the steps, 5 to 200")
    every = max(50, steps // 3)
    _maybe(out, given, "eval_every", every, "a few evaluations: they count against the budget")
    _maybe(out, given, "save_every", every, "checkpoint at each evaluation")


def _maybe(out: Choices, given: dict[str, Any], name: str, value: Any, reason: str) -> None:
    if name not in given:
        out.set(name, value, reason)


def render(choices: Choices, flops_per_s: float | None) -> str:
    """The table printed before training (stderr)."""
    rows = [("setting", "chosen", "why")] + [(k.replace("_", "-"), _fmt(v), choices.reasons[k])
                                             for k, v in choices.values.items()]
    wide = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"{a:<{wide[0]}}  {b:<{wide[1]}}  {c}" for a, b, c in rows]
    speed = f" (measured {flops_per_s / 1e9:.1f} GFLOP/s training)" if flops_per_s else ""
    return f"settings chosen from the budget and corpus{speed}; any flag you give wins:\n" + "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.2g}" if isinstance(value, float) else str(value)
