"""`eval harness`: standard benchmarks (arc_easy, hellaswag, ...) through lm-evaluation-harness's Python API
and its Hugging Face model, for any local registry model (an adapter through its `peft` option); saved as an
eval run whose metrics are `METRIC:TASK` (and plain `METRIC` when one task is run), so they can be gated.

lm-eval is an optional extra (`pip install 'llmctl[eval]'`): it brings scipy, scikit-learn and nltk.
Tasks come from the Hub; `examples/harness` holds a small task that runs offline.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any

from llmctl.errors import ModelError, UsageError

LOCAL_TASKS = Path(__file__).resolve().parents[2] / "examples" / "harness"  # in a source checkout
INSTALL_HINT = "install it with: pip install 'llmctl[eval]' (or: .venv/bin/pip install lm-eval)"


def require_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise UsageError("eval harness needs lm-evaluation-harness, which is not installed", hint=INSTALL_HINT) from None


def task_manager(tasks: list[str], include: list[Path]):
    """lm-eval's task index over the local example tasks and any --include folders, and, unless every task
    asked for is found there, lm-eval's own thousands of tasks (indexing those takes seconds to a minute)."""
    from lm_eval.tasks import TaskManager

    for path in include:
        if not Path(path).is_dir():
            raise UsageError(f"--include {path}: no such folder of task YAML files")
    paths = [str(p) for p in include] + ([str(LOCAL_TASKS)] if LOCAL_TASKS.is_dir() else [])
    if paths:
        local = TaskManager(include_path=paths, include_defaults=False)
        if set(tasks) <= set(local.all_tasks):
            return local
    return TaskManager(include_path=paths or None)


def check_tasks(manager, tasks: list[str]) -> None:
    known = set(manager.all_tasks)
    for task in tasks:
        if task not in known:
            close = difflib.get_close_matches(task, sorted(known), n=3)
            raise UsageError(f"unknown harness task '{task}'",
                             hint=(f"did you mean {', '.join(close)}? " if close else "") +
                             "`lm-eval ls tasks` lists them; a task of your own needs --include FOLDER")


def hf_model(entry, config, batch_size: int):
    """lm-eval's HFLM on the entry's weights, as llmctl would load them (hf.device, hf.dtype, offline)."""
    from lm_eval.models.huggingface import HFLM

    from llmctl.loading import pick_device, pick_dtype, quiet_transformers, weights_source

    quiet_transformers()
    source, _ = weights_source(entry, config)
    device = pick_device(config.hf.device)
    tokenizer = source
    if entry.adapter and (Path(entry.adapter) / "tokenizer_config.json").is_file():
        tokenizer = entry.adapter  # saved with the adapter, with the template it was trained with
    try:
        return HFLM(pretrained=source, tokenizer=tokenizer, peft=entry.adapter or None, device=str(device),
                    dtype=str(pick_dtype(config.hf.dtype, device)).removeprefix("torch."), batch_size=batch_size,
                    trust_remote_code=config.hf.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"lm-eval could not load '{entry.name}' from {source}: {e}") from None


def flat_metrics(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """`acc,none` of task `arc_easy` -> `acc:arc_easy`; a filter other than none stays: `exact_match/strict-match:gsm8k`.
    Standard errors are left out (they are kept in the rows); with one task, its metrics also go by their bare name."""
    metrics: dict[str, float] = {}
    for task, figures in results.items():
        for key, value in figures.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or "," not in key or "_stderr" in key:
                continue
            name, _, filt = key.partition(",")
            name = name if filt == "none" else f"{name}/{filt}"
            metrics[f"{name}:{task}"] = round(float(value), 6) if math.isfinite(value) else None
    if len(results) == 1:
        metrics.update({k.rsplit(":", 1)[0]: v for k, v in list(metrics.items())})
    return metrics


def run_harness(model_ref: str, tasks: list[str], limit: int | None = None, num_fewshot: int | None = None,
                batch_size: int = 8, include: list[Path] | None = None, config=None, save_dir=None):
    """`llmctl eval harness`: lm_eval.simple_evaluate on a local model; one row per task with its figures."""
    from llmctl.evaluate.runs import measured_run
    from llmctl.loading import default_config, local_entry

    require_lm_eval()
    if not tasks:
        raise UsageError("give --tasks, e.g. --tasks arc_easy,hellaswag (or llmctl_capitals, offline)")
    entry = local_entry(model_ref, "eval harness")
    config = default_config(config)
    manager = task_manager(tasks, include or [])
    check_tasks(manager, tasks)
    rows: list[dict[str, Any]] = []

    def work(writer) -> dict[str, Any]:
        import logging

        import lm_eval

        logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its notes on every task would bury our output
        model = hf_model(entry, config, batch_size)
        try:
            out = lm_eval.simple_evaluate(model=model, tasks=tasks, num_fewshot=num_fewshot, limit=limit,
                                          task_manager=manager, log_samples=False, bootstrap_iters=0)
        except (FileNotFoundError, ConnectionError) as e:
            raise UsageError(f"a harness task's data could not be loaded: {e}",
                             hint="tasks from the Hub need a connection (HF_HUB_OFFLINE=0)") from None
        results = out["results"]
        for index, (task, figures) in enumerate(results.items()):
            rows.append({"index": index, "task": task, "figures": figures,
                         "samples": (out.get("n-samples") or {}).get(task), "n_shot": (out.get("n-shot") or {}).get(task)})
            writer.append(rows[-1])
        return flat_metrics(results)

    summary = {"models": [model_ref], "tasks": tasks,
               "settings": {"limit": limit, "num_fewshot": num_fewshot, "batch_size": batch_size,
                            "include": [str(p) for p in include or []]}}
    return measured_run("harness", summary, save_dir, work, lambda: rows)
