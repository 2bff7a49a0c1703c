"""`llmctl eval`: perplexity on text, exact-match accuracy on question-answer sets, standard benchmarks
(lm-evaluation-harness), lineage checks, LLM as a judge, side-by-side comparison, and saved runs to show and
score by hand. Every measuring command saves a run and takes the same gates and CI reports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from llmctl.cli.eval_tables import JUDGED_KINDS, StageProgress, clip, fmt, render_gates, render_run
from llmctl.cli.options import JsonOpt, state
from llmctl.cli.output import err, out, print_json, warn

app = typer.Typer(no_args_is_help=True)


# -- gates and CI reports, shared by every command that measures ----------------------------------

FailUnderOpt = Annotated[Optional[list[str]], typer.Option("--fail-under", metavar="METRIC=VALUE", help="Exit 6 if METRIC is below VALUE, e.g. exact_match=0.6 (repeatable).")]
FailOverOpt = Annotated[Optional[list[str]], typer.Option("--fail-over", metavar="METRIC=VALUE", help="Exit 6 if METRIC is above VALUE, e.g. perplexity=25 (repeatable).")]
BaselineOpt = Annotated[Optional[str], typer.Option("--baseline", metavar="RUN", help="A saved run (id or directory) to compare with --max-drop.")]
MaxDropOpt = Annotated[Optional[list[str]], typer.Option("--max-drop", metavar="METRIC=DELTA", help="Exit 6 if METRIC got worse than the --baseline run by more than DELTA (repeatable).")]
JUnitOpt = Annotated[Optional[Path], typer.Option("--junit", metavar="FILE", help="Write a JUnit XML report: a test case per gate (and per question for exact).")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", min=1, max=256, help="Prompts a local model decodes together (1: one at a time).")]


def ci_options(fail_under, fail_over, baseline, max_drop, junit):
    from llmctl.evaluate.ci import CIOptions

    return CIOptions.parse(fail_under, fail_over, baseline, max_drop, junit)


def close_gated(run, options, json_doc: Optional[dict], render, cases=None, metrics=None) -> None:
    """Check the gates, write the reports, show the run (JSON or text), then exit 6 if a gate failed."""
    from llmctl.evaluate.ci import conclude
    from llmctl.evaluate.gates import raise_if_failed

    results = conclude(run, options, cases, metrics)
    if json_doc is not None:
        print_json({**json_doc, "metrics": run.summary["metrics"], "gates": run.summary["gates"],
                    "id": run.id, "path": str(run.directory)})
    else:
        render()
        render_gates(results)
    raise_if_failed(results)


@app.command("perplexity")
def perplexity(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="Local model: registry name, directory, adapter, pretrained GPT.")],
    data: Annotated[list[str], typer.Option("--data", "-d", help="Text file, directory, JSONL/CSV/Parquet, or python-stdlib.")],
    text_field: Annotated[str, typer.Option("--text-field")] = "text",
    window: Annotated[Optional[int], typer.Option("--window", min=2, help="Tokens per window (default: the context).")] = None,
    save: Annotated[Optional[Path], typer.Option("--save", help="Run directory (default: LLMCTL_HOME/evals/<run-id>).")] = None,
    fail_under: FailUnderOpt = None, fail_over: FailOverOpt = None, baseline: BaselineOpt = None,
    max_drop: MaxDropOpt = None, junit: JUnitOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Loss, perplexity, bits per character and per byte, with a sliding window over long texts; saved as
    an eval run. Metrics: loss, perplexity, bits_per_char, bits_per_byte."""
    from llmctl.evaluate.perplexity import PERPLEXITY_METRICS, perplexity_run

    options = ci_options(fail_under, fail_over, baseline, max_drop, junit)
    options.check_metrics_known(list(PERPLEXITY_METRICS), "eval perplexity")
    with err.status(f"scoring with {model}…"):
        run = perplexity_run(model, data, text_field, window, state(ctx).config().config, save)
    doc = run.rows[0]

    def render() -> None:
        out.print(f"[bold]{model}[/] on {doc['documents']} documents ({doc['tokens']:,} tokens, window {doc['window']}):")
        out.print(f"loss {doc['loss']:.4f} nats/token · perplexity {doc['perplexity']:.3f} · "
                  f"{doc['bits_per_char']:.4f} bits/char · {doc['bits_per_byte']:.4f} bits/byte")
        out.print(f"[dim]saved as {escape(run.id)}[/]")

    close_gated(run, options, {k: v for k, v in doc.items() if k != "index"} if json_out else None, render)


@app.command("exact")
def exact(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="Any registry model (local or remote).")],
    data: Annotated[Path, typer.Option("--data", "-d", help="JSONL of {question, answer} (answer: string or list).")],
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1)] = 32,
    system: Annotated[Optional[str], typer.Option("--system", "-s")] = None,
    save: Annotated[Optional[Path], typer.Option("--save", help="Also write every question, answer and verdict as JSONL.")] = None,
    batch_size: BatchSizeOpt = 8,
    fail_under: FailUnderOpt = None, fail_over: FailOverOpt = None, baseline: BaselineOpt = None,
    max_drop: MaxDropOpt = None, junit: JUnitOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Exact-match and contains accuracy (greedy answers, SQuAD-style normalisation), saved as an eval run.
    Metrics: exact_match, contains (0-1)."""
    from rich.table import Table

    from llmctl.evaluate.exact import EXACT_METRICS, exact_match
    from llmctl.evaluate.reports import exact_cases
    from llmctl.fsutil import atomic_write_text
    from llmctl.jsonl import jsonl_line

    options = ci_options(fail_under, fail_over, baseline, max_drop, junit)
    options.check_metrics_known(list(EXACT_METRICS), "eval exact")
    with err.status(f"asking {model}…"):
        run = exact_match(model, data, max_tokens, system, state(ctx).config().config, batch_size=batch_size)
    results = [{k: v for k, v in r.items() if k != "index"} for r in run.rows]
    if save:
        atomic_write_text(save, "".join(jsonl_line(r) for r in results))
    metrics = run.summary["metrics"]

    def render() -> None:
        table = Table(show_edge=False, pad_edge=False)
        for column in ("question", "expected", "answer", "exact", "contains"):
            table.add_column(column, overflow="fold")
        for r in results:
            table.add_row(escape(r["question"]), escape(" | ".join(r["answers"])), clip(r["response"], 80),
                          "✓" if r["exact"] else "·", "✓" if r["contains"] else "·")
        out.print(table)
        out.print(f"[bold]{model}[/]: exact match {metrics['exact_match']:.1%} · contains {metrics['contains']:.1%} "
                  f"of {len(results)} questions [dim](saved as {escape(run.id)})[/]")

    doc = {"model": model, "questions": len(results), **metrics, "results": results} if json_out else None
    close_gated(run, options, doc, render, exact_cases(results))


@app.command("harness")
def harness(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="Local model: registry name, directory or adapter.")],
    tasks: Annotated[str, typer.Option("--tasks", help="lm-evaluation-harness tasks, comma-separated: arc_easy,hellaswag (llmctl_capitals runs offline).")],
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="At most this many examples per task.")] = None,
    num_fewshot: Annotated[Optional[int], typer.Option("--num-fewshot", min=0, help="Examples shown before each question (default: the task's).")] = None,
    include: Annotated[Optional[list[Path]], typer.Option("--include", help="A folder of your own task YAML files (repeatable).")] = None,
    batch_size: BatchSizeOpt = 8,
    save: Annotated[Optional[Path], typer.Option("--save", help="Run directory (default: LLMCTL_HOME/evals/<run-id>).")] = None,
    fail_under: FailUnderOpt = None, fail_over: FailOverOpt = None, baseline: BaselineOpt = None,
    max_drop: MaxDropOpt = None, junit: JUnitOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Standard benchmarks through lm-evaluation-harness (pip install 'llmctl[eval]'). Metrics: METRIC:TASK
    (acc:arc_easy, acc_norm:hellaswag), and METRIC alone when one task is run."""
    from rich.table import Table

    from llmctl.evaluate.harness import run_harness

    options = ci_options(fail_under, fail_over, baseline, max_drop, junit)
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    with err.status(f"running {', '.join(names)} on {model}…"):
        run = run_harness(model, names, limit, num_fewshot, batch_size, include, state(ctx).config().config, save)

    def render() -> None:
        table = Table(show_edge=False, pad_edge=False)
        for column in ("task", "metric", "value", "stderr", "examples"):
            table.add_column(column, justify="left" if column in ("task", "metric") else "right")
        for row in run.rows:
            for key, value in row["figures"].items():
                if "," in key and "_stderr" not in key and isinstance(value, (int, float)):
                    name, _, filt = key.partition(",")
                    stderr = row["figures"].get(f"{name}_stderr,{filt}")
                    table.add_row(escape(row["task"]), escape(name if filt == "none" else f"{name}/{filt}"),
                                  fmt(float(value), 4), fmt(stderr if isinstance(stderr, float) else None, 4),
                                  str((row.get("samples") or {}).get("effective", "-")))
        out.print(table)
        out.print(f"[bold]{escape(model)}[/] [dim]saved as {escape(run.id)}[/]")

    close_gated(run, options, {**run.summary, "rows": run.rows} if json_out else None, render)


@app.command("lineage")
def lineage(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="A registered local model: its ancestors and descendants are compared.")],
    prompts: Annotated[Optional[Path], typer.Option("--prompts", "-p", help="Prompts: JSONL or text, one per line (default: four short built-in prompts).")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, max=512, help="Greedy tokens per answer.")] = 16,
    save: Annotated[Optional[Path], typer.Option("--save", help="Run directory (default: LLMCTL_HOME/evals/<run-id>).")] = None,
    fail_under: FailUnderOpt = None, fail_over: FailOverOpt = None, baseline: BaselineOpt = None,
    max_drop: MaxDropOpt = None, junit: JUnitOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Run a model's registered relatives (base, adapter, merged model, export) on the same prompts, greedy, and
    compare each parent-child pair. Metrics: agreement (lowest token agreement) and max_logit_diff (highest)
    over merges and exports, and agreement:PARENT->CHILD, max_logit_diff:PARENT->CHILD for every pair.

    Example: llmctl eval lineage my-adapter --fail-under agreement=1.0 --fail-over max_logit_diff=0.01
    """
    from rich.table import Table

    from llmctl.answering import load_prompts
    from llmctl.evaluate.lineage import run_lineage

    options = ci_options(fail_under, fail_over, baseline, max_drop, junit)
    texts = [item.text for item in load_prompts(prompts)] if prompts else None
    with StageProgress() as progress:
        run = run_lineage(name, texts, max_tokens, state(ctx).config().config, save, progress.update)
    metrics = run.summary["metrics"]

    def render() -> None:
        table = Table(show_edge=False, pad_edge=False)
        for column in ("parent -> child", "kind", "agreement", "max logit diff", "first difference"):
            table.add_column(column, justify="left" if column in ("parent -> child", "kind") else "right")
        for edge in run.summary["edges"]:
            label = f"{edge['parent']}->{edge['child']}"
            firsts = [f"#{r['index'] + 1} at token {r['first_difference']}" for r in run.rows
                      if r["edge"] == label and r["first_difference"] is not None]
            table.add_row(escape(label), "merge/export" if edge["same_output"] else "fine-tune",
                          fmt(metrics[f"agreement:{label}"], 4), fmt(metrics[f"max_logit_diff:{label}"], 6),
                          escape(", ".join(firsts[:3]) or "-"))
        out.print(table)
        out.print(f"[bold]{escape(name)}[/]: agreement {fmt(metrics['agreement'], 4)} · max logit diff "
                  f"{fmt(metrics['max_logit_diff'], 6)} (merges and exports) [dim]saved as {escape(run.id)}[/]")

    close_gated(run, options, {**run.summary, "rows": run.rows} if json_out else None, render)


# -- LLM as a judge, comparison, saved runs ---------------------------------------------------------

PromptsOpt = Annotated[Optional[Path], typer.Option("--prompts", "-p", help="Prompts: JSONL (prompt/question/instruction/messages; a 'response' field is judged as given) or text, one per line.")]
JudgeOpt = Annotated[Optional[str], typer.Option("--judge", "-j", help="Judge model: any registry model (OpenAI, a served model, a local one).")]
RubricOpt = Annotated[Optional[str], typer.Option("--rubric", "-r", help="Criteria, comma-separated: age-appropriateness, grammar, choice-of-story, creativity, helpfulness, correctness, or names from --rubric-file.")]
RubricFileOpt = Annotated[Optional[Path], typer.Option("--rubric-file", help="Custom criteria: TOML or JSON, name = description (or a table with description and scale).")]
JudgeRetriesOpt = Annotated[int, typer.Option("--retries", min=0, max=10, help="Asks again when a judgment cannot be parsed, with the error fed back.")]
WorkersOpt = Annotated[int, typer.Option("--workers", min=1, max=64, help="Concurrent requests to remote models.")]
AnswerTokensOpt = Annotated[int, typer.Option("--max-tokens", min=1, help="Most tokens per answer.")]
JudgeTokensOpt = Annotated[int, typer.Option("--judge-max-tokens", min=16, help="Most tokens per judgment.")]
AnswerTempOpt = Annotated[float, typer.Option("--temperature", "-t", min=0.0, max=2.0, help="Answers' temperature (0 = greedy).")]
SeedOpt = Annotated[int, typer.Option("--seed", min=0, help="Seed for answers, judgments and the --human order.")]
SystemOpt = Annotated[Optional[str], typer.Option("--system", "-s", help="System prompt for prompts that have none.")]
SaveOpt = Annotated[Optional[Path], typer.Option("--save", help="Run directory (default: LLMCTL_HOME/evals/<run-id>).")]


def finish(run, json_out: bool, human: bool, seed: int, options) -> None:
    if human:
        from llmctl.evaluate.human import judge_by_hand

        judge_by_hand(run, seed=seed)
    close_gated(run, options, run.summary if json_out else None, lambda: render_run(run, with_rows=run.kind == "compare"))


@app.command("judge")
def judge(
    ctx: typer.Context,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model that answers the prompts (not needed with --answers).")] = None,
    judge_model: JudgeOpt = None,
    prompts: PromptsOpt = None,
    answers: Annotated[Optional[Path], typer.Option("--answers", help="JSONL of prompt + response rows to judge as they are.")] = None,
    rubric: RubricOpt = None,
    rubric_file: RubricFileOpt = None,
    retries: JudgeRetriesOpt = 2,
    workers: WorkersOpt = 4,
    samples: Annotated[int, typer.Option("--samples", min=1, max=32, help="Answers per prompt (needs --temperature > 0).")] = 1,
    temperature: AnswerTempOpt = 0.0,
    max_tokens: AnswerTokensOpt = 256,
    judge_max_tokens: JudgeTokensOpt = 512,
    system: SystemOpt = None,
    seed: SeedOpt = 0,
    save: SaveOpt = None,
    human: Annotated[bool, typer.Option("--human", help="Score the answers yourself in the terminal instead of a judge model.")] = False,
    batch_size: BatchSizeOpt = 8,
    fail_under: FailUnderOpt = None, fail_over: FailOverOpt = None, baseline: BaselineOpt = None,
    max_drop: MaxDropOpt = None, junit: JUnitOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Score answers 1-10 per criterion with a judge model (or by hand), with mean, spread, min and max.
    Metrics: each criterion's mean score, by its name (e.g. helpfulness)."""
    from llmctl.answering import load_prompts
    from llmctl.errors import UsageError
    from llmctl.evaluate.judge import AnswerSettings, JudgeSettings, run_judge
    from llmctl.evaluate.rubrics import select_criteria

    if (prompts is None) == (answers is None):
        raise UsageError("give --prompts FILE or --answers FILE (one of them)")
    if human == bool(judge_model):
        raise UsageError("give --judge MODEL, or --human to score by hand (one of them)")
    criteria = select_criteria(rubric, rubric_file)
    options = ci_options(fail_under, fail_over, baseline, max_drop, junit)
    options.check_metrics_known([c.name for c in criteria], "eval judge")
    items = load_prompts(prompts or answers)
    if answers and model:
        warn("--answers are judged as given; -m is not used")
        model = None
    settings = JudgeSettings(criteria, retries, judge_max_tokens, 0.0, seed, workers)
    answering = AnswerSettings(max_tokens, temperature, samples, seed, system, workers, batch_size)
    with StageProgress() as progress:
        run = run_judge(items, model, judge_model, settings, answering, state(ctx).config().config, save,
                        progress.update)
    finish(run, json_out, human, seed, options)


@app.command("compare")
def compare(
    ctx: typer.Context,
    models: Annotated[list[str], typer.Option("--model", "-m", help="A model to compare (repeat: -m A -m B).")],
    prompts: Annotated[Path, typer.Option("--prompts", "-p", help="Prompts: JSONL (prompt/question/instruction/messages) or text, one per line.")],
    judge_model: JudgeOpt = None,
    rubric: RubricOpt = None,
    rubric_file: RubricFileOpt = None,
    retries: JudgeRetriesOpt = 2,
    workers: WorkersOpt = 4,
    temperature: AnswerTempOpt = 0.0,
    max_tokens: AnswerTokensOpt = 256,
    judge_max_tokens: JudgeTokensOpt = 512,
    system: SystemOpt = None,
    seed: SeedOpt = 0,
    save: SaveOpt = None,
    human: Annotated[bool, typer.Option("--human", help="Then choose the better answer of each pair yourself.")] = False,
    batch_size: BatchSizeOpt = 8,
    fail_under: FailUnderOpt = None, fail_over: FailOverOpt = None, baseline: BaselineOpt = None,
    max_drop: MaxDropOpt = None, junit: JUnitOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """The same prompts through several models side by side; with --judge, pairwise verdicts (asked in both
    orders) and win rates. Metrics (with --judge): win_rate:MODEL for each model, and win_rate for the last
    -m given (the candidate: -m baseline -m candidate)."""
    from llmctl.answering import load_prompts
    from llmctl.evaluate.compare import run_compare
    from llmctl.evaluate.judge import AnswerSettings, JudgeSettings
    from llmctl.evaluate.rubrics import select_criteria

    from llmctl.evaluate.gates import compare_metric_names

    criteria = select_criteria(rubric, rubric_file) if rubric or rubric_file else []
    options = ci_options(fail_under, fail_over, baseline, max_drop, junit)
    options.check_metrics_known(compare_metric_names(models) if judge_model else [],
                                "eval compare" + ("" if judge_model else " without --judge"))
    items = load_prompts(prompts)
    settings = JudgeSettings(criteria, retries, judge_max_tokens, 0.0, seed, workers)
    answering = AnswerSettings(max_tokens, temperature, 1, seed, system, workers, batch_size)
    with StageProgress() as progress:
        run = run_compare(items, models, judge_model, settings, answering, state(ctx).config().config, save,
                          progress.update)
    finish(run, json_out, human, seed, options)


@app.command("show")
def show(
    run_ref: Annotated[Optional[str], typer.Argument(metavar="RUN", help="Run id (see `llmctl eval list`) or run directory.")] = None,
    human: Annotated[bool, typer.Option("--human", help="Score (or go on scoring) this run by hand.")] = False,
    seed: SeedOpt = 0,
    json_out: JsonOpt = False,
) -> None:
    """A saved run: a judge or compare run's answers, scores and verdicts; any run's metrics and gates. No RUN:
    list the runs."""
    from llmctl.errors import UsageError
    from llmctl.evaluate.runs import load_run

    if run_ref is None:
        return list_runs(json_out)
    run = load_run(run_ref)
    if human and run.kind not in JUDGED_KINDS:
        raise UsageError(f"--human scores judge and compare runs; {run.id} is an {run.kind} run")
    if human:
        from llmctl.evaluate.human import judge_by_hand

        judge_by_hand(run, seed=seed)
    if json_out:
        print_json({"summary": run.summary, "path": str(run.directory), "rows": run.rows})
    else:
        render_run(run, with_rows=True, with_gates=True)


@app.command("list")
def list_runs(json_out: JsonOpt = False) -> None:
    """Saved eval runs (judge, compare, exact, perplexity, harness, lineage), newest first."""
    from rich.table import Table

    from llmctl.evaluate.runs import list_runs as saved_runs

    runs = saved_runs()
    if json_out:
        print_json(runs)
        return
    if not runs:
        err.print("no saved eval runs yet (every eval command but `show` and `list` saves one)")
        return
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("run", no_wrap=True)
    for column in ("kind", "models", "judge", "status", "created"):
        table.add_column(column, overflow="fold")
    for r in runs:
        table.add_row(r["id"], r["kind"], escape(", ".join(r["models"])), escape(str(r["judge"] or "-")), r["status"],
                      (r["created"] or "-").replace("+00:00", "Z"))
    out.print(table)
