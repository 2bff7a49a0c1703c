"""`llmctl pretrain`: build your own GPT from a text corpus. Thin: flags -> PretrainConfig -> pretrain()."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from llmctl.cli.options import JsonOpt
from llmctl.cli.output import err, print_json
from llmctl.pretrain.config import PretrainConfig, auto_train
from llmctl.training.config import given

# The library's defaults, for --help: an option left out is not passed, so the config's default holds.
DEFAULTS = PretrainConfig(data=[])
TRAIN = DEFAULTS.train

app = typer.Typer(invoke_without_command=True, no_args_is_help=True)


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


@app.callback()
def pretrain(
    ctx: typer.Context,
    data: Annotated[Optional[list[str]], typer.Option("--data", "-d", help="Text file, directory, JSONL/CSV/Parquet file, or 'python-stdlib'. Repeatable.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help=f"Run directory: the model, data/, checkpoints/, metrics. [default: {DEFAULTS.out}]")] = None,
    preset: Annotated[Optional[str], typer.Option("--preset", help="tiny (~1M params), small (~10M), gpt2-124m. [default: a shape chosen from the budget, corpus and machine]")] = None,
    tokenizer: Annotated[Optional[str], typer.Option("--tokenizer", help="bpe (trained here), char, or a registry model to borrow from. [default: chosen from the corpus size]")] = None,
    vocab_size: Annotated[Optional[int], typer.Option("--vocab-size", min=2, help="BPE vocabulary size. [default: chosen from the corpus size]")] = None,
    tokenizer_sample: Annotated[Optional[int], typer.Option("--tokenizer-sample", min=1, help=f"Bytes of the corpus BPE is trained on, spread over it. [default: {DEFAULTS.tokenizer_sample}]")] = None,
    glob: Annotated[Optional[str], typer.Option("--glob", help=f"Files to take from --data directories. [default: {DEFAULTS.glob}]")] = None,
    text_field: Annotated[Optional[str], typer.Option("--text-field", help=f"Text column of JSONL/CSV/Parquet data. [default: {DEFAULTS.text_field}]")] = None,
    min_chars: Annotated[Optional[int], typer.Option("--min-chars", min=1, help=f"Drop documents shorter than this. [default: {DEFAULTS.min_chars}]")] = None,
    val_fraction: Annotated[Optional[float], typer.Option("--val-fraction", help=f"Share of documents held out for validation. [default: {DEFAULTS.val_fraction}]")] = None,
    layers: Annotated[Optional[int], typer.Option("--layers", min=1)] = None,
    heads: Annotated[Optional[int], typer.Option("--heads", min=1)] = None,
    width: Annotated[Optional[int], typer.Option("--width", min=1, help="Embedding width.")] = None,
    context: Annotated[Optional[int], typer.Option("--context", min=2, help="Context length in tokens.")] = None,
    mlp_size: Annotated[Optional[int], typer.Option("--mlp-size", min=1, help="MLP hidden size.")] = None,
    rope: Annotated[Optional[bool], typer.Option("--rope/--no-rope", help="Rotary positions (Llama) or learned ones (GPT-2).")] = None,
    tied: Annotated[Optional[bool], typer.Option("--tied/--untied", help="Share input and output embeddings.")] = None,
    dropout: Annotated[Optional[float], typer.Option("--dropout", min=0.0, max=1.0, help="Dropout on embeddings and each block's attention and MLP output, while training. [default: chosen from the passes over the corpus]")] = None,
    experts: Annotated[Optional[int], typer.Option("--experts", min=0, help="Mixture of experts: experts per layer.")] = None,
    experts_per_token: Annotated[Optional[int], typer.Option("--experts-per-token", min=1)] = None,
    qk_norm: Annotated[Optional[bool], typer.Option("--qk-norm/--no-qk-norm", help="RMSNorm on queries and keys (saved as a Qwen3 model).")] = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", min=1)] = None,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", min=1, help="Stop after this many training tokens.")] = None,
    max_time: Annotated[Optional[str], typer.Option("--max-time", help="Train until this budget (90s, 10m, 1h), then evaluate and save.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Sequences per device per micro-step. [default: chosen from the budget]")] = None,
    grad_accum: Annotated[Optional[int], typer.Option("--grad-accum", min=1, help=f"Micro-steps per optimizer step. [default: {TRAIN.grad_accum}]")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate (AdamW; with muon: embeddings, norms, output). [default: chosen from the budget]")] = None,
    optimizer: Annotated[Optional[str], typer.Option("--optimizer", help="adamw, or muon (Muon for hidden matrices, AdamW for the rest). [default: chosen from the budget]")] = None,
    muon_lr: Annotated[Optional[float], typer.Option("--muon-lr", help="Muon's peak learning rate for hidden matrices. [default: 0.02]")] = None,
    min_lr: Annotated[Optional[float], typer.Option("--min-lr", help="Learning rate at the end of the cosine. [default: chosen from the budget]")] = None,
    warmup_steps: Annotated[Optional[int], typer.Option("--warmup-steps", min=0, help="[default: chosen from the budget]")] = None,
    weight_decay: Annotated[Optional[float], typer.Option("--weight-decay", min=0.0, help=f"[default: {TRAIN.weight_decay}]")] = None,
    grad_clip: Annotated[Optional[float], typer.Option("--grad-clip", min=0.0, help=f"0 turns clipping off. [default: {TRAIN.grad_clip}]")] = None,
    eval_every: Annotated[Optional[int], typer.Option("--eval-every", min=1, help="[default: chosen from the budget]")] = None,
    eval_batches: Annotated[Optional[int], typer.Option("--eval-batches", min=1, help=f"[default: {TRAIN.eval_batches}]")] = None,
    save_every: Annotated[Optional[int], typer.Option("--save-every", min=1, help="[default: chosen from the budget]")] = None,
    log_every: Annotated[Optional[int], typer.Option("--log-every", min=1, help=f"[default: {TRAIN.log_every}]")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", min=0, help=f"[default: {TRAIN.seed}]")] = None,
    precision: Annotated[Optional[str], typer.Option("--precision", help=f"auto (bf16 on GPU, fp32 on CPU), fp32, bf16, fp16. [default: {TRAIN.precision}]")] = None,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model (GPU).")] = False,
    fsdp: Annotated[bool, typer.Option("--fsdp", help="Fully sharded training (FSDP2) under torchrun / accelerate launch.")] = False,
    fsdp_layers: Annotated[Optional[str], typer.Option("--fsdp-layers", help="Layer classes sharded one by one, comma-separated (default: the model's decoder layer).")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Registry name (default: the --out directory's name).")] = None,
    resume: Annotated[Optional[str], typer.Option("--resume", help="auto (this run's last checkpoint) or a checkpoint path.")] = None,
    prepare_only: Annotated[bool, typer.Option("--prepare-only", help="Only train the tokenizer and write token shards.")] = False,
    no_register: Annotated[bool, typer.Option("--no-register", help="Do not add the model to the registry.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Pretrain a GPT on your text: tokenizer, token shards, self-supervised next-token training.

    Example: llmctl pretrain --data python-stdlib --preset tiny --max-time 2m --out runs/pystd
    Many devices: torchrun --nproc_per_node 2 -m llmctl pretrain ... (or accelerate launch -m llmctl pretrain ...)
    See the training pairs it learns from: llmctl pretrain pairs "Every effort moves you forward"
    """
    if ctx.invoked_subcommand:
        return
    if not data:
        from llmctl.errors import UsageError

        raise UsageError("no training data", hint="pass --data FILE_OR_DIR, or --data python-stdlib")
    from llmctl.cli.train_progress import TrainProgress
    from llmctl.pretrain.model import preset as make_preset
    from llmctl.pretrain.run import pretrain as run_pretrain
    from llmctl.training.budget import parse_duration

    train = replace(auto_train(), **given(max_steps=max_steps, max_tokens=max_tokens, max_time=parse_duration(max_time),
                                batch_size=batch_size, grad_accum=grad_accum, lr=lr, min_lr=min_lr, optimizer=optimizer, muon_lr=muon_lr,
                                warmup_steps=warmup_steps, weight_decay=weight_decay, grad_clip=grad_clip,
                                eval_every=eval_every, eval_batches=eval_batches, save_every=save_every,
                                log_every=log_every, seed=seed, precision=precision, fsdp_layers=fsdp_layers),
                        compile=compile, fsdp=fsdp)
    config = PretrainConfig(**given(data=data, out=out, preset=preset, glob=glob, text_field=text_field,
                                    min_chars=min_chars, val_fraction=val_fraction, tokenizer=tokenizer,
                                    vocab_size=vocab_size, tokenizer_sample=tokenizer_sample, name=name, resume=resume),
                            train=train, prepare_only=prepare_only, register=not no_register)
    shape = dict(layers=layers, heads=heads, width=width, context=context, mlp=mlp_size, rope=rope, tied=tied,
                 dropout=dropout, experts=experts, experts_per_token=experts_per_token, qk_norm=qk_norm)
    # A preset fixes the shape; without one, what is not given is chosen when the run starts (pretrain/auto.py).
    config.model = make_preset(config.preset, **shape) if config.preset else replace(config.model, **given(**shape))
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


@app.command("pairs")
def pairs(
    ctx: typer.Context,
    text: Annotated[Optional[str], typer.Argument(help="Plain text. Also read from stdin when piped (both: joined).")] = None,
    tokenizer: Annotated[Optional[str], typer.Option("--tokenizer", "-m", help="A registry model, model directory or pretraining run: its tokenizer cuts the text, its weights give the loss. Default: config 'model' (smollm2).")] = None,
    context: Annotated[Optional[int], typer.Option("--context", min=1, help="Input tokens per training sample. [default: the whole text, up to the model's context]")] = None,
    no_loss: Annotated[bool, typer.Option("--no-loss", help="Only the pairs: read the tokenizer, not the weights.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """The self-supervised training pairs TEXT makes (input tokens -> next token), with the loss the model gives each target.

    Example: llmctl pretrain pairs "Every effort moves you forward" · llmctl pretrain pairs -m runs/pystd-gpt --context 8 "def add(a, b):"
    """
    from contextlib import nullcontext

    from llmctl.cli.options import state
    from llmctl.inspect.pairs import training_pairs
    from llmctl.prompting import read_prompt_text

    body = read_prompt_text(text, "pretrain pairs")
    cfg = state(ctx).config({"model": tokenizer}).config
    with err.status(f"loading {cfg.model}…", spinner="dots") if not json_out else nullcontext():
        result = training_pairs(cfg.model, body, context, with_loss=not no_loss, config=cfg)
    if json_out:
        print_json(result.to_dict())
        return
    from llmctl.cli.output import out
    from llmctl.cli.render import pairs_summary, pairs_table

    out.print(pairs_table(result))
    out.print(pairs_summary(result))
