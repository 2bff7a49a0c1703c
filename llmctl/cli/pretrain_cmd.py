"""`llmctl pretrain`: build your own GPT from a text corpus. Thin: flags -> PretrainConfig -> pretrain()."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from llmctl.cli.options import JsonOpt
from llmctl.cli.output import err, print_json
from llmctl.errors import UsageError

DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?$")


def parse_duration(text: str | None) -> float | None:
    """'90s', '10m', '1h30m', '45' (seconds) -> seconds."""
    if text is None:
        return None
    match = DURATION.match(text.strip().lower())
    if not text.strip() or not match or not any(match.groups()):
        raise UsageError(f"--max-time {text!r} is not a duration", hint="e.g. 90s, 10m, 1h30m")
    h, m, s = (float(g) if g else 0.0 for g in match.groups())
    seconds = h * 3600 + m * 60 + s
    if seconds <= 0:
        raise UsageError("--max-time must be positive")
    return seconds


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


def pretrain(
    data: Annotated[list[str], typer.Option("--data", "-d", help="Text file, directory, JSONL/CSV/Parquet file, or 'python-stdlib'. Repeatable.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory: the model, data/, checkpoints/, metrics.")] = Path("runs/gpt"),
    preset: Annotated[str, typer.Option("--preset", help="tiny (~1M params), small (~10M), gpt2-124m.")] = "tiny",
    tokenizer: Annotated[str, typer.Option("--tokenizer", help="bpe (trained here), char, or a registry model to borrow from.")] = "bpe",
    vocab_size: Annotated[int, typer.Option("--vocab-size", min=2, help="BPE vocabulary size.")] = 4096,
    glob: Annotated[str, typer.Option("--glob", help="Files to take from --data directories.")] = "**/*",
    text_field: Annotated[str, typer.Option("--text-field", help="Text column of JSONL/CSV/Parquet data.")] = "text",
    min_chars: Annotated[int, typer.Option("--min-chars", min=1, help="Drop documents shorter than this.")] = 1,
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Share of documents held out for validation.")] = 0.1,
    layers: Annotated[Optional[int], typer.Option("--layers", min=1)] = None,
    heads: Annotated[Optional[int], typer.Option("--heads", min=1)] = None,
    width: Annotated[Optional[int], typer.Option("--width", min=1, help="Embedding width.")] = None,
    context: Annotated[Optional[int], typer.Option("--context", min=2, help="Context length in tokens.")] = None,
    mlp_size: Annotated[Optional[int], typer.Option("--mlp-size", min=1, help="MLP hidden size.")] = None,
    rope: Annotated[Optional[bool], typer.Option("--rope/--no-rope", help="Rotary positions (Llama) or learned ones (GPT-2).")] = None,
    tied: Annotated[Optional[bool], typer.Option("--tied/--untied", help="Share input and output embeddings.")] = None,
    dropout: Annotated[Optional[float], typer.Option("--dropout")] = None,
    experts: Annotated[Optional[int], typer.Option("--experts", min=0, help="Mixture of experts: experts per layer.")] = None,
    experts_per_token: Annotated[Optional[int], typer.Option("--experts-per-token", min=1)] = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", min=1)] = None,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", min=1, help="Stop after this many training tokens.")] = None,
    max_time: Annotated[Optional[str], typer.Option("--max-time", help="Train until this budget (90s, 10m, 1h), then evaluate and save.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Sequences per device per micro-step.")] = 16,
    grad_accum: Annotated[int, typer.Option("--grad-accum", min=1, help="Micro-steps per optimizer step.")] = 1,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate.")] = 1e-3,
    min_lr: Annotated[float, typer.Option("--min-lr", help="Learning rate at the end of the cosine.")] = 1e-4,
    warmup_steps: Annotated[int, typer.Option("--warmup-steps", min=0)] = 50,
    weight_decay: Annotated[float, typer.Option("--weight-decay", min=0.0)] = 0.1,
    grad_clip: Annotated[float, typer.Option("--grad-clip", min=0.0, help="0 turns clipping off.")] = 1.0,
    eval_every: Annotated[int, typer.Option("--eval-every", min=1)] = 100,
    eval_batches: Annotated[int, typer.Option("--eval-batches", min=1)] = 10,
    save_every: Annotated[int, typer.Option("--save-every", min=1)] = 100,
    log_every: Annotated[int, typer.Option("--log-every", min=1)] = 10,
    seed: Annotated[int, typer.Option("--seed", min=0)] = 1337,
    precision: Annotated[str, typer.Option("--precision", help="auto (bf16 on GPU, fp32 on CPU), fp32, bf16, fp16.")] = "auto",
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model (GPU).")] = False,
    name: Annotated[Optional[str], typer.Option("--name", help="Registry name (default: the --out directory's name).")] = None,
    resume: Annotated[Optional[str], typer.Option("--resume", help="auto (this run's last checkpoint) or a checkpoint path.")] = None,
    prepare_only: Annotated[bool, typer.Option("--prepare-only", help="Only train the tokenizer and write token shards.")] = False,
    no_register: Annotated[bool, typer.Option("--no-register", help="Do not add the model to the registry.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Pretrain a GPT on your text: tokenizer, token shards, self-supervised next-token training.

    Example: llmctl pretrain --data python-stdlib --preset tiny --max-time 2m --out runs/pystd
    Many devices: torchrun --nproc_per_node 2 -m llmctl pretrain ... (or accelerate launch -m llmctl pretrain ...)
    """
    from llmctl.cli.train_progress import TrainProgress
    from llmctl.pretrain.model import preset as make_preset
    from llmctl.pretrain.run import PretrainConfig, pretrain as run_pretrain
    from llmctl.training.loop import TrainConfig

    model = make_preset(preset, layers=layers, heads=heads, width=width, context=context, mlp=mlp_size, rope=rope,
                        tied=tied, dropout=dropout, experts=experts, experts_per_token=experts_per_token)
    train = TrainConfig(max_steps=max_steps, max_tokens=max_tokens, max_time=parse_duration(max_time),
                        batch_size=batch_size, grad_accum=grad_accum, lr=lr, min_lr=min_lr, warmup_steps=warmup_steps,
                        weight_decay=weight_decay, grad_clip=grad_clip, eval_every=eval_every,
                        eval_batches=eval_batches, save_every=save_every, log_every=log_every, seed=seed,
                        precision=precision, compile=compile)
    config = PretrainConfig(data=data, out=out, model=model, train=train, preset=preset, glob=glob,
                            text_field=text_field, min_chars=min_chars, val_fraction=val_fraction, tokenizer=tokenizer,
                            vocab_size=vocab_size, name=name, resume=resume, prepare_only=prepare_only,
                            register=not no_register)
    main = _is_main_rank()
    note = (lambda text: err.print(f"[dim]{text}[/]")) if main else (lambda text: None)
    with TrainProgress(enabled=main) as progress:
        summary = run_pretrain(config, note=note, on_progress=progress.update, on_data_progress=progress.data)
    if not main:
        return
    if json_out:
        print_json(summary)
    elif summary.get("prepared"):
        err.print(f"prepared {summary['train_tokens']:,} train and {summary['val_tokens']:,} validation tokens "
                  f"in {summary['data_dir']}")
    else:
        progress.print_summary(summary)
