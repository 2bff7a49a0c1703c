"""`llmctl data`: make and check training data: self-instruct generation, distillation, inspection
(and preference pairs, registered from main.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from llmctl.cli.options import JsonOpt, state
from llmctl.cli.output import err, out, print_json, warn

app = typer.Typer(no_args_is_help=True)

TeacherOpt = Annotated[str, typer.Option("--teacher", help="Any registry model: openai:MODEL, a served model's entry, a local model.")]
WorkersOpt = Annotated[int, typer.Option("--workers", min=1, max=64, help="Concurrent requests to a remote teacher.")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", min=1, max=256, help="Requests a local teacher decodes together (1: one at a time).")]


class DataProgress:
    """A progress bar on stderr (rows done of wanted, requests, ETA); warnings print above it."""

    def __init__(self, label: str):
        self.label = label
        self.progress = Progress(TextColumn(f"[bold]{escape(label)}[/]"), BarColumn(bar_width=30), MofNCompleteColumn(),
                                 TextColumn("rows · {task.fields[requests]} requests"), TimeElapsedColumn(),
                                 TextColumn("ETA"), TimeRemainingColumn(), console=err)
        self.task = None
        self.done = 0

    def __enter__(self) -> "DataProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def warn(self, message: str) -> None:
        warn(message)

    def update(self, done: int, total: int, requests: int) -> None:
        self.done = done
        if self.task is None:  # created at the first count so rows from an earlier run do not skew the ETA
            self.task = self.progress.add_task(self.label, total=total, completed=done, requests=requests)
        self.progress.update(self.task, completed=done, total=total, requests=requests)


def _run_with_progress(label: str, out_file: Path, work) -> Any:
    """Run `work(events)` under a progress bar; on Ctrl-C say where the rows are, then let it propagate."""
    with DataProgress(label) as progress:
        try:
            return work(progress)
        except KeyboardInterrupt:
            progress.progress.stop()
            err.print(f"{progress.done} rows are in {out_file}; run the same command again to continue")
            raise


def _counts_table(title: str, rows: list[tuple[str, int]]) -> Table:
    table = Table(title=title, show_edge=False, pad_edge=False, title_justify="left")
    table.add_column("")
    table.add_column("rows", justify="right")
    for name, count in rows:
        table.add_row(name, f"{count:,}")
    return table


@app.command("generate")
def generate(
    ctx: typer.Context,
    teacher: TeacherOpt,
    seeds: Annotated[Path, typer.Option("--seeds", help="Seed tasks, JSONL: the Alpaca seed layout (instruction, instances) or instruction/input/output.")],
    n: Annotated[int, typer.Option("-n", min=1, help="Rows wanted in --out (rows already there count).")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="Alpaca JSONL to write; an existing file is continued.")],
    examples_per_prompt: Annotated[int, typer.Option("--examples-per-prompt", min=1, max=20, help="Seed tasks shown per request (plus one generated, once there are some).")] = 3,
    tasks_per_request: Annotated[int, typer.Option("--tasks-per-request", min=1, max=50, help="New tasks asked for per request.")] = 8,
    max_similarity: Annotated[float, typer.Option("--max-similarity", min=0.01, max=1.0, help="Drop a task whose instruction has a ROUGE-L F above this with a seed or a kept task.")] = 0.7,
    min_words: Annotated[int, typer.Option("--min-words", min=1, help="Fewest words in an instruction.")] = 3,
    max_words: Annotated[int, typer.Option("--max-words", min=1, help="Most words in an instruction.")] = 150,
    max_output_words: Annotated[int, typer.Option("--max-output-words", min=1, help="Most words in an output.")] = 400,
    max_requests: Annotated[Optional[int], typer.Option("--max-requests", min=1, help="Stop after this many requests. [default: max(10, N)]")] = None,
    workers: WorkersOpt = 4,
    temperature: Annotated[float, typer.Option("--temperature", "-t", min=0.0, max=2.0, help="High for diverse tasks.")] = 1.0,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0)] = 1.0,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Most tokens per reply.")] = 2048,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Which seed tasks each request shows (and the sampling seed).")] = 0,
    batch_size: BatchSizeOpt = 8,
    json_out: JsonOpt = False,
) -> None:
    """Self-instruct: a teacher writes new tasks from a few seed tasks; filtered, deduplicated, resumable.

    Example: llmctl data generate --teacher openai:gpt-4o-mini --seeds examples/seed_tasks.jsonl -n 500 --out gen.jsonl
    """
    from llmctl.data.generate import GenerateOptions, generate as run

    options = GenerateOptions(teacher, seeds, n, out_file, examples_per_prompt, tasks_per_request, max_similarity,
                              min_words, max_words, max_output_words, max_requests, workers, temperature, top_p,
                              max_tokens, seed, batch_size)
    config = state(ctx).config().config
    report = _run_with_progress(f"generating with {teacher}", out_file, lambda events: run(options, config, events))
    if report.message and not report.complete:
        warn(report.message)
    if json_out:
        print_json(report.to_dict())
        return
    rows = [("kept (new)", report.new), ("kept (from an earlier run)", report.resumed)]
    rows += [(f"filtered: {reason.replace('_', ' ')}", count) for reason, count in sorted(report.filtered.items())]
    out.print(_counts_table(f"{out_file}: {report.kept} of {n} rows", rows))
    failed = f", {report.failed_requests} failed ({report.errors[0]})" if report.failed_requests else ""
    out.print(f"{report.requests} requests to {teacher}{failed}")


@app.command("distill")
def distill(
    ctx: typer.Context,
    teacher: TeacherOpt,
    prompts: Annotated[Path, typer.Option("--prompts", help="JSONL (prompt, question, instruction+input or messages) or text, one prompt a line.")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="Fine-tuning JSONL to write; an existing file is continued.")],
    format: Annotated[str, typer.Option("--format", help="chat (messages rows) or alpaca (needs Alpaca prompt rows).")] = "chat",
    system: Annotated[Optional[str], typer.Option("--system", "-s", help="System prompt for prompts that have none (kept in the rows).")] = None,
    temperature: Annotated[float, typer.Option("--temperature", "-t", min=0.0, max=2.0)] = 0.7,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0)] = 1.0,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Most tokens per answer; longer answers are not written.")] = 1024,
    seed: Annotated[Optional[int], typer.Option("--seed", min=0)] = None,
    workers: WorkersOpt = 4,
    keep_truncated: Annotated[bool, typer.Option("--keep-truncated", help="Also write answers cut off by --max-tokens.")] = False,
    batch_size: BatchSizeOpt = 8,
    json_out: JsonOpt = False,
) -> None:
    """A teacher answers every prompt; the answers become a fine-tuning file with provenance, resumable.

    Example: llmctl data distill --teacher openai:gpt-4o-mini --prompts questions.jsonl --out sft.jsonl
    """
    from llmctl.data.distill import DistillOptions, distill as run

    options = DistillOptions(teacher, prompts, out_file, format, system, temperature, top_p, max_tokens, seed, workers,
                             keep_truncated, batch_size)
    config = state(ctx).config().config
    report = _run_with_progress(f"answering with {teacher}", out_file, lambda events: run(options, config, events))
    if json_out:
        print_json(report.to_dict())
        return
    rows = [("written", report.written), ("answered in an earlier run", report.resumed), ("failed", report.failed),
            ("empty answer", report.empty), ("cut off by --max-tokens", report.truncated)]
    out.print(_counts_table(f"{out_file}: {report.resumed + report.written} of {report.prompts} prompts answered", rows))
    for error in report.errors:
        err.print(f"[red]failed:[/] {escape(error)}")
    if not report.complete:
        warn("some prompts have no answer yet: run the same command again to retry them")


@app.command("inspect")
def inspect(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="JSONL, JSON array, CSV or Parquet data file.")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Also count tokens with this local model's tokenizer.")] = None,
    examples: Annotated[int, typer.Option("--examples", min=0, help="Rows to show.")] = 3,
    max_similarity: Annotated[float, typer.Option("--max-similarity", min=0.01, max=1.0, help="Near duplicates: prompts with a ROUGE-L F above this.")] = 0.7,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 2 if there is any problem.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Format, length statistics, duplicates, examples and every problem (by line) of a data file."""
    from llmctl.data.inspect import inspect_file
    from llmctl.errors import UsageError

    with err.status(f"reading {file}…"):
        doc = inspect_file(file, model, examples, max_similarity, state(ctx).config().config)
    if json_out:
        print_json(doc)
    else:
        render_inspection(doc)
    if strict and doc["problems"]:
        raise UsageError(f"{len(doc['problems'])} problems in {file} (--strict)")


def _stat(value: dict | None) -> str:
    return f"{value['min']:,} / {value['mean']:,} / {value['median']:,} / {value['max']:,}" if value else "-"


def render_inspection(doc: dict) -> None:
    out.print(f"[bold]{escape(doc['file'])}[/]: {doc['format'] or 'unknown format'}, {doc['rows']:,} rows")
    if doc["fields"]:
        table = Table(title="lengths (min / mean / median / max)", show_edge=False, pad_edge=False, title_justify="left")
        for column in ("field", "count", "chars", "words") + (("tokens",) if doc["tokenizer"] else ()):
            table.add_column(column, justify="left" if column == "field" else "right")
        for name, stat in doc["fields"].items():
            table.add_row(name, f"{stat['count']:,}", _stat(stat["chars"]), _stat(stat["words"]),
                          *((_stat(stat.get("tokens")),) if doc["tokenizer"] else ()))
        out.print(table)
    dup = doc["duplicates"]
    out.print(f"duplicates: {dup['exact']} exact, {dup['near']} near (similar prompts)")
    for lines in dup["exact_groups"][:10]:
        out.print(f"  same row on lines {', '.join(map(str, lines))}")
    for pair in dup["near_pairs"][:10]:
        out.print(f"  lines {pair['lines'][0]} and {pair['lines'][1]}: ROUGE-L {pair['similarity']:.2f}")
    for example in doc["examples"]:
        out.print(f"[dim]line {example['line']}[/]")
        for name, text in example["fields"].items():
            shown = text if len(text) <= 300 else text[:300] + "…"
            out.print(f"  [bold]{name}[/]: {escape(shown)}")
    if not doc["problems"]:
        out.print("[green]no problems[/]")
        return
    table = Table(title=f"{len(doc['problems'])} problems", show_edge=False, pad_edge=False, title_justify="left")
    table.add_column("line", justify="right")
    table.add_column("problem", overflow="fold")
    for problem in doc["problems"]:
        table.add_row(str(problem["line"] or "-"), escape(problem["problem"]))
    out.print(table)
