"""`llmctl finetune`: LoRA fine-tuning (supervised, DPO on preference pairs, or logit distillation);
`llmctl finetune merge` folds an adapter into its base."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmctl.cli.options import JsonOpt
from llmctl.cli.output import err, out, print_json

app = typer.Typer(invoke_without_command=True, no_args_is_help=False)


@app.callback()
def finetune(
    ctx: typer.Context,
    data: Annotated[Optional[list[Path]], typer.Option("--data", "-d", help="JSON/JSONL/CSV/Parquet: Alpaca, chat (messages), prompt/completion or text; for dpo: prompt/chosen/rejected pairs. Repeatable.")] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="Base model: registry name, hf:REPO, a directory, a pretrained GPT; for dpo/distill also a registered adapter to train further.")] = "smollm2",
    method: Annotated[str, typer.Option("--method", help="lora (supervised), dpo (preference pairs) or distill (a teacher's logits).")] = "lora",
    beta: Annotated[float, typer.Option("--beta", help="dpo: strength of the pull toward the reference (higher: closer).")] = 0.1,
    label_smoothing: Annotated[float, typer.Option("--label-smoothing", help="dpo: assumed share of flipped preferences (conservative DPO), in [0, 0.5).")] = 0.0,
    teacher: Annotated[Optional[str], typer.Option("--teacher", help="distill: the teacher, a local registry model sharing the student's tokenizer.")] = None,
    distill_temperature: Annotated[float, typer.Option("--distill-temperature", help="distill: softmax temperature of the KL term (scaled by T²).")] = 2.0,
    distill_alpha: Annotated[float, typer.Option("--distill-alpha", help="distill: loss = alpha·KL + (1 − alpha)·cross-entropy.")] = 0.5,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Adapter directory (also checkpoints and metrics).")] = Path("runs/lora"),
    format: Annotated[str, typer.Option("--format", help="auto, alpaca, chat, prompt-completion, text.")] = "auto",
    instruction_field: Annotated[str, typer.Option("--instruction-field")] = "instruction",
    input_field: Annotated[str, typer.Option("--input-field")] = "input",
    output_field: Annotated[str, typer.Option("--output-field")] = "output",
    messages_field: Annotated[str, typer.Option("--messages-field")] = "messages",
    prompt_field: Annotated[str, typer.Option("--prompt-field")] = "prompt",
    completion_field: Annotated[str, typer.Option("--completion-field")] = "completion",
    text_field: Annotated[str, typer.Option("--text-field")] = "text",
    skip_bad_rows: Annotated[bool, typer.Option("--skip-bad-rows", help="Skip malformed rows (counted and reported) instead of stopping.")] = False,
    rank: Annotated[int, typer.Option("--rank", min=1, help="LoRA rank.")] = 8,
    alpha: Annotated[int, typer.Option("--alpha", min=1, help="LoRA alpha (scale = alpha / rank).")] = 16,
    dropout: Annotated[float, typer.Option("--dropout", min=0.0, max=0.9)] = 0.05,
    targets: Annotated[Optional[str], typer.Option("--targets", help="Comma-separated module names (default: all linear layers).")] = None,
    epochs: Annotated[float, typer.Option("--epochs", min=0.01, help="Used unless --max-steps/--max-tokens/--max-time is given.")] = 3.0,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", min=1)] = None,
    max_time: Annotated[Optional[str], typer.Option("--max-time", help="90s, 10m, 1h")] = None,
    max_length: Annotated[Optional[int], typer.Option("--max-length", min=2, help="Longest example in tokens (default: context, at most 2048).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Examples packed per micro-step.")] = 8,
    grad_accum: Annotated[int, typer.Option("--grad-accum", min=1)] = 1,
    lr: Annotated[float, typer.Option("--lr")] = 2e-4,
    warmup_steps: Annotated[int, typer.Option("--warmup-steps", min=0)] = 10,
    eval_split: Annotated[float, typer.Option("--eval-split", help="Share of examples held out.")] = 0.1,
    eval_every: Annotated[int, typer.Option("--eval-every", min=1)] = 50,
    save_every: Annotated[int, typer.Option("--save-every", min=1)] = 50,
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing", help="Trade compute for memory.")] = False,
    qlora: Annotated[bool, typer.Option("--qlora", help="4-bit base (CUDA + bitsandbytes).")] = False,
    seed: Annotated[int, typer.Option("--seed", min=0)] = 1337,
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
    from llmctl.cli.pretrain_cmd import parse_duration
    from llmctl.cli.train_progress import TrainProgress
    from llmctl.errors import UsageError
    from llmctl.finetune.data import ColumnMap
    from llmctl.finetune.run import FinetuneConfig, finetune as run_finetune
    from llmctl.training.loop import TrainConfig

    if not data:
        raise UsageError("no training data", hint="pass --data FILE (see llmctl finetune --help)")
    columns = ColumnMap(instruction_field, input_field, output_field, messages_field, prompt_field, completion_field,
                        text_field)
    target_list = [t.strip() for t in targets.split(",") if t.strip()] if targets else None
    if dry_run:
        if method == "dpo":
            raise UsageError("--dry-run inspects fine-tuning examples, not preference pairs",
                             hint="drop --dry-run; llmctl data inspect shows a preference file")
        _show_inspection(list(data), model, format, columns, max_length, batch_size, rank, target_list,
                         skip_bad_rows, json_out)
        return
    train = TrainConfig(max_steps=max_steps, max_time=parse_duration(max_time), batch_size=batch_size,
                        grad_accum=grad_accum, lr=lr, min_lr=lr / 10, warmup_steps=warmup_steps, weight_decay=0.0,
                        eval_every=eval_every, save_every=save_every, log_every=1, seed=seed)
    config = FinetuneConfig(data=list(data), base=model, out=out_dir, train=train, format=format, columns=columns,
                            skip_bad_rows=skip_bad_rows, rank=rank, alpha=alpha, dropout=dropout,
                            targets=target_list,
                            epochs=epochs, max_length=max_length, eval_split=eval_split,
                            gradient_checkpointing=gradient_checkpointing, qlora=qlora, name=name, resume=resume,
                            register=not no_register, method=method, beta=beta, label_smoothing=label_smoothing,
                            teacher=teacher, distill_temperature=distill_temperature, distill_alpha=distill_alpha)
    with TrainProgress() as progress:
        summary = run_finetune(config, note=lambda text: err.print(f"[dim]{text}[/]"),
                               on_progress=progress.update)
    if json_out:
        print_json(summary)
        return
    err.print(f"[bold green]done[/]: {summary['steps']} steps in {summary['seconds']:.0f} s · validation loss "
              f"{summary['val_loss_before']} before → {summary['val_loss_after']} after")
    if method != "lora":
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


def _show_inspection(data, model, fmt, columns, max_length, batch_size, rank, targets, skip_bad_rows, json_out) -> None:
    from rich.table import Table
    from rich.text import Text

    from llmctl.cli.render import bar_text
    from llmctl.finetune.inspect import inspect_data

    doc = inspect_data(data, model, fmt, columns, max_length, batch_size, rank, targets, skip_bad_rows)
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
    out.print(f"min {t['min']} · mean {t['mean']} · max {t['max']} tokens · {doc['too_long']} longer than "
              f"--max-length {doc['max_length']}")
    out.print(f"LoRA rank {rank}: {doc['lora_parameters']:,} trainable of {doc['parameters']:,} parameters · "
              f"memory estimate ~{m['total_gb']:.2f} GB (weights {m['weights_gb']:.2f}, activations "
              f"{m['activations_gb']:.2f} at batch {batch_size})")


@app.command("inspect")
def inspect(
    data: Annotated[list[Path], typer.Option("--data", "-d", help="Training data file(s).")],
    model: Annotated[str, typer.Option("--model", "-m", help="Base model.")] = "smollm2",
    format: Annotated[str, typer.Option("--format")] = "auto",
    max_length: Annotated[Optional[int], typer.Option("--max-length", min=2)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 8,
    rank: Annotated[int, typer.Option("--rank", min=1)] = 8,
    skip_bad_rows: Annotated[bool, typer.Option("--skip-bad-rows")] = False,
    json_out: JsonOpt = False,
) -> None:
    """One example through the chat template with masked tokens marked, lengths, and a memory estimate."""
    from llmctl.finetune.data import ColumnMap

    _show_inspection(list(data), model, format, ColumnMap(), max_length, batch_size, rank, None, skip_bad_rows, json_out)
