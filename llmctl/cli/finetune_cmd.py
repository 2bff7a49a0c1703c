"""`llmctl finetune`: LoRA fine-tuning (supervised, DPO on preference pairs, or logit distillation);
`llmctl finetune merge` folds an adapter into its base."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmctl.cli.options import JsonOpt
from llmctl.cli.output import err, out, print_json
from llmctl.finetune.config import DistillSettings, DPOSettings, FinetuneConfig, FinetuneTrainConfig
from llmctl.finetune.data import ColumnMap
from llmctl.training.config import given

app = typer.Typer(invoke_without_command=True, no_args_is_help=False)
# The library's defaults, for --help: an option left out is not passed, so the config's default holds.
DEFAULTS = FinetuneConfig(data=[])
COLUMNS = DEFAULTS.columns


@app.callback()
def finetune(
    ctx: typer.Context,
    data: Annotated[Optional[list[Path]], typer.Option("--data", "-d", help="JSON/JSONL/CSV/Parquet: Alpaca, chat (messages), prompt/completion or text; for dpo: prompt/chosen/rejected pairs. Repeatable.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help=f"Base model: registry name, hf:REPO, a directory, a pretrained GPT; for dpo/distill also a registered adapter to train further. [default: {DEFAULTS.base}]")] = None,
    method: Annotated[Optional[str], typer.Option("--method", help=f"lora (supervised), dpo (preference pairs) or distill (a teacher's logits). [default: {DEFAULTS.method}]")] = None,
    beta: Annotated[Optional[float], typer.Option("--beta", help=f"dpo: strength of the pull toward the reference (higher: closer). [default: {DEFAULTS.dpo.beta}]")] = None,
    label_smoothing: Annotated[Optional[float], typer.Option("--label-smoothing", help=f"dpo: assumed share of flipped preferences (conservative DPO), in [0, 0.5). [default: {DEFAULTS.dpo.label_smoothing}]")] = None,
    teacher: Annotated[Optional[str], typer.Option("--teacher", help="distill: the teacher, a local registry model sharing the student's tokenizer.")] = None,
    distill_temperature: Annotated[Optional[float], typer.Option("--distill-temperature", help=f"distill: softmax temperature of the KL term (scaled by T²). [default: {DEFAULTS.distill.temperature}]")] = None,
    distill_alpha: Annotated[Optional[float], typer.Option("--distill-alpha", help=f"distill: loss = alpha·KL + (1 − alpha)·cross-entropy. [default: {DEFAULTS.distill.alpha}]")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", "-o", help=f"Adapter directory (also checkpoints and metrics). [default: {DEFAULTS.out}]")] = None,
    format: Annotated[Optional[str], typer.Option("--format", help=f"auto, alpaca, chat, prompt-completion, text. [default: {DEFAULTS.format}]")] = None,
    instruction_field: Annotated[Optional[str], typer.Option("--instruction-field", help=f"[default: {COLUMNS.instruction}]")] = None,
    input_field: Annotated[Optional[str], typer.Option("--input-field", help=f"[default: {COLUMNS.input}]")] = None,
    output_field: Annotated[Optional[str], typer.Option("--output-field", help=f"[default: {COLUMNS.output}]")] = None,
    messages_field: Annotated[Optional[str], typer.Option("--messages-field", help=f"[default: {COLUMNS.messages}]")] = None,
    prompt_field: Annotated[Optional[str], typer.Option("--prompt-field", help=f"[default: {COLUMNS.prompt}]")] = None,
    completion_field: Annotated[Optional[str], typer.Option("--completion-field", help=f"[default: {COLUMNS.completion}]")] = None,
    text_field: Annotated[Optional[str], typer.Option("--text-field", help=f"[default: {COLUMNS.text}]")] = None,
    skip_bad_rows: Annotated[bool, typer.Option("--skip-bad-rows", help="Skip malformed rows (counted and reported) instead of stopping.")] = False,
    rank: Annotated[Optional[int], typer.Option("--rank", min=1, help=f"LoRA rank. [default: {DEFAULTS.rank}]")] = None,
    alpha: Annotated[Optional[int], typer.Option("--alpha", min=1, help=f"LoRA alpha (scale = alpha / rank). [default: {DEFAULTS.alpha}]")] = None,
    dropout: Annotated[Optional[float], typer.Option("--dropout", min=0.0, max=0.9, help=f"LoRA dropout. [default: {DEFAULTS.dropout}]")] = None,
    targets: Annotated[Optional[str], typer.Option("--targets", help="Comma-separated module names (default: all linear layers).")] = None,
    epochs: Annotated[Optional[float], typer.Option("--epochs", min=0.01, help=f"Used unless --max-steps/--max-time is given. [default: {DEFAULTS.epochs}]")] = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", min=1)] = None,
    max_time: Annotated[Optional[str], typer.Option("--max-time", help="90s, 10m, 1h")] = None,
    max_length: Annotated[Optional[int], typer.Option("--max-length", min=2, help="Longest example in tokens (default: context, at most 2048).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help=f"Examples packed per micro-step. [default: {DEFAULTS.train.batch_size}]")] = None,
    grad_accum: Annotated[Optional[int], typer.Option("--grad-accum", min=1, help=f"Micro-steps per optimizer step. [default: {DEFAULTS.train.grad_accum}]")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help=f"Peak learning rate; the cosine ends at a tenth of it. [default: {DEFAULTS.train.lr}]")] = None,
    warmup_steps: Annotated[Optional[int], typer.Option("--warmup-steps", min=0, help=f"[default: {DEFAULTS.train.warmup_steps}]")] = None,
    eval_split: Annotated[Optional[float], typer.Option("--eval-split", help=f"Share of examples held out. [default: {DEFAULTS.eval_split}]")] = None,
    eval_every: Annotated[Optional[int], typer.Option("--eval-every", min=1, help=f"[default: {DEFAULTS.train.eval_every}]")] = None,
    save_every: Annotated[Optional[int], typer.Option("--save-every", min=1, help=f"[default: {DEFAULTS.train.save_every}]")] = None,
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing", help="Trade compute for memory.")] = False,
    keep_mlp_activations: Annotated[bool, typer.Option(
        "--keep-mlp-activations", help="Keep the MLP's gate/up outputs for backward instead of recomputing them: "
                                       "~10% faster on CPUs, more memory.")] = False,
    qlora: Annotated[bool, typer.Option("--qlora", help="4-bit base (CUDA + bitsandbytes).")] = False,
    fsdp: Annotated[bool, typer.Option("--fsdp", help="Fully sharded training (FSDP2) under torchrun / accelerate launch.")] = False,
    fsdp_layers: Annotated[Optional[str], typer.Option("--fsdp-layers", help="Layer classes sharded one by one, comma-separated (default: the model's decoder layer).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", min=0, help=f"[default: {DEFAULTS.train.seed}]")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Registry name (default: the --out directory's name).")] = None,
    resume: Annotated[Optional[str], typer.Option("--resume", help="auto or a checkpoint path.")] = None,
    no_register: Annotated[bool, typer.Option("--no-register")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be trained (as `finetune inspect`) and stop.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """LoRA fine-tuning of a local model; the loss is on the response tokens only.

    Example: llmctl finetune --data examples/pirate.jsonl -m smollm2 --epochs 2 --out runs/pirate

    DPO: llmctl finetune --method dpo --data prefs.jsonl -m pirate --out runs/pirate-dpo

    Distillation: llmctl finetune --method distill --teacher big --data d.jsonl -m small --out runs/small-kd
    """
    if ctx.invoked_subcommand:
        return
    from llmctl.cli.train_progress import TrainProgress
    from llmctl.errors import UsageError
    from llmctl.finetune.run import finetune as run_finetune
    from llmctl.training.budget import parse_duration

    if not data:
        raise UsageError("no training data", hint="pass --data FILE (see llmctl finetune --help)")
    train = FinetuneTrainConfig(**given(max_steps=max_steps, max_time=parse_duration(max_time), batch_size=batch_size,
                                        grad_accum=grad_accum, lr=lr, warmup_steps=warmup_steps, eval_every=eval_every,
                                        save_every=save_every, seed=seed, fsdp_layers=fsdp_layers), fsdp=fsdp)
    columns = ColumnMap(**given(instruction=instruction_field, input=input_field, output=output_field,
                                messages=messages_field, prompt=prompt_field, completion=completion_field,
                                text=text_field))
    config = FinetuneConfig(
        **given(data=list(data), base=model, out=out_dir, method=method, format=format, rank=rank, alpha=alpha,
                dropout=dropout, targets=[t.strip() for t in targets.split(",") if t.strip()] if targets else None,
                epochs=epochs, max_length=max_length, eval_split=eval_split, name=name, resume=resume),
        train=train, columns=columns, skip_bad_rows=skip_bad_rows, gradient_checkpointing=gradient_checkpointing,
        keep_mlp_activations=keep_mlp_activations,
        qlora=qlora, register=not no_register,
        dpo=DPOSettings(**given(beta=beta, label_smoothing=label_smoothing)),
        distill=DistillSettings(**given(teacher=teacher, temperature=distill_temperature, alpha=distill_alpha)))
    if dry_run:
        _show_inspection(config, json_out)
        return
    import os

    main = os.environ.get("RANK", "0") == "0"  # under torchrun / accelerate launch only rank 0 reports
    with TrainProgress(enabled=main) as progress:
        summary = run_finetune(config, note=(lambda text: err.print(f"[dim]{text}[/]")) if main else (lambda text: None),
                               on_progress=progress.update)
    if not main:
        return
    if json_out:
        print_json(summary)
        return
    err.print(f"[bold green]done[/]: {summary['steps']} steps in {summary['seconds']:.0f} s · validation loss "
              f"{summary['val_loss_before']} before → {summary['val_loss_after']} after")
    if any(key.endswith("_after") and key != "val_loss_after" for key in summary):  # DPO rewards, KL, ...
        _show_before_after(summary)
    if summary.get("name"):
        err.print(f"adapter registered as [bold]{summary['name']}[/] ({summary['output_dir']}); "
                  f"try: llmctl prompt -m {summary['name']} \"...\"")


def _show_before_after(summary: dict) -> None:
    from rich.table import Table

    from llmctl.cli.train_progress import fixed4

    table = Table(title="held-out validation", title_justify="left", show_edge=False, pad_edge=False)
    for column in ("metric", "before", "after"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for key in [k[:-len("_after")] for k in summary if k.endswith("_after")]:
        before, after = summary.get(f"{key}_before"), summary[f"{key}_after"]
        table.add_row(key.replace("_", " "), "-" if before is None else fixed4(before), fixed4(after))
    err.print(table)


@app.command("merge")
def merge(name: Annotated[str, typer.Argument(help="A registered adapter.")],
          out_dir: Annotated[Path, typer.Option("--out", "-o", help="Directory for the merged model.")],
          new_name: Annotated[Optional[str], typer.Option("--name", help="Registry name of the merged model.")] = None,
          json_out: JsonOpt = False) -> None:
    """Write base + adapter as one full Hugging Face model (registered too)."""
    from llmctl.finetune.merge import merge_adapter

    with err.status(f"merging {name}…"):
        result = merge_adapter(name, out_dir, new_name)
    if json_out:
        print_json(result)
    else:
        out.print(f"merged {name} into {result['output_dir']}" + (f", registered as {result['name']}" if result.get("name") else ""))


def _show_inspection(config: FinetuneConfig, json_out: bool) -> None:
    from rich.table import Table
    from rich.text import Text

    from llmctl.cli.render import bar_text, lora_share_table
    from llmctl.finetune.inspect import inspect_data
    from llmctl.finetune.lora_share import LoraShare

    doc = inspect_data(config)
    if json_out:
        print_json(doc)
        return
    ex = doc["example"]
    out.print(f"[bold]{doc['format']}[/] data: {doc['examples']} examples from {doc['rows']} rows"
              f" ({doc['skipped_rows']} skipped) · model {doc['model']} · template {doc['template']}")
    out.print(f"\nexample ({ex['source']}): [dim]dim = prompt, no loss ({ex['masked_tokens']} tokens)[/] · "
              f"[bold green]green = learned ({ex['learned_tokens']} tokens)[/]")
    text = Text()
    for piece, learned in ex["pieces"]:
        text.append(piece, style="bold green" if learned else "dim")
    out.print(text)
    table = Table(title="tokens per example", title_justify="left", show_edge=False, pad_edge=False)
    for column in ("tokens", "examples", ""):
        table.add_column(column, justify="right" if column else "left")
    peak = max(b["count"] for b in doc["histogram"]) or 1
    for b in doc["histogram"]:
        table.add_row(f"{b['from']}-{b['to']}", str(b["count"]), Text(bar_text(b["count"] / peak, 30), style="cyan"))
    out.print(table)
    t, m = doc["tokens"], doc["memory_estimate"]
    cut = doc.get("too_long_counted_in_part", 0)
    out.print(f"min {t['min']} · mean {t['mean']} · max {t['max']} tokens · {doc['too_long']} longer than "
              f"--max-length {doc['max_length']}" + (f" ({cut} tokenized only past it: their counts are lower bounds)"
                                                     if cut else ""))
    out.print(lora_share_table(LoraShare.from_dict(doc["lora"])))
    out.print(f"memory estimate ~{m['total_gb']:.2f} GB (weights {m['weights_gb']:.2f}, activations "
              f"{m['activations_gb']:.2f} at batch {config.train.batch_size})")


@app.command("inspect")
def inspect(
    data: Annotated[list[Path], typer.Option("--data", "-d", help="Training data file(s).")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help=f"Base model. [default: {DEFAULTS.base}]")] = None,
    format: Annotated[Optional[str], typer.Option("--format", help=f"[default: {DEFAULTS.format}]")] = None,
    max_length: Annotated[Optional[int], typer.Option("--max-length", min=2)] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help=f"[default: {DEFAULTS.train.batch_size}]")] = None,
    rank: Annotated[Optional[int], typer.Option("--rank", min=1, help=f"[default: {DEFAULTS.rank}]")] = None,
    skip_bad_rows: Annotated[bool, typer.Option("--skip-bad-rows")] = False,
    json_out: JsonOpt = False,
) -> None:
    """One example through the chat template with masked tokens marked, lengths, what LoRA trains, and a memory estimate."""
    config = FinetuneConfig(**given(data=list(data), base=model, format=format, max_length=max_length, rank=rank),
                            train=FinetuneTrainConfig(**given(batch_size=batch_size)), skip_bad_rows=skip_bad_rows)
    _show_inspection(config, json_out)
