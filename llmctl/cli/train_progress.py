"""The live training display (stderr): step, loss, lr, tokens/s, ETA; evaluations as lines."""

from __future__ import annotations

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from llmctl.cli.output import err

SCALE = 10_000  # the bar tracks the run's progress fraction (steps, tokens or time, whichever leads)


def fixed4(value: float) -> str:
    """Four decimals, with no "-0.0000" for a value that rounds to zero."""
    text = f"{value:.4f}"
    return "0.0000" if text == "-0.0000" else text


def validation_line(row: dict) -> str:
    """Pretraining and LoRA report perplexity (and bits/char); DPO and distillation their own metrics."""
    if "val_ppl" in row:
        bpc = f" · {row['val_bpc']:.3f} bits/char" if "val_bpc" in row else ""
        return f"val loss {row['val_loss']:.4f} · ppl {row['val_ppl']:.2f}{bpc}"
    extras = [f"{key[4:].replace('_', ' ')} {fixed4(value)}" for key, value in row.items()
              if key.startswith("val_") and key != "val_loss" and isinstance(value, (int, float))]
    return " · ".join([f"val loss {row['val_loss']:.4f}", *extras])


class TrainProgress:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("{task.fields[step]}"), BarColumn(bar_width=24),
            TextColumn("loss {task.fields[loss]}"), TextColumn("lr {task.fields[lr]}"),
            TextColumn("{task.fields[tps]} tok/s"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=err, transient=False, disable=not enabled)
        self.task = None
        self.data_task = None

    def __enter__(self) -> "TrainProgress":
        self.progress.__enter__()
        self.task = self.progress.add_task("train", total=SCALE, step="step 0", loss="-", lr="-", tps="-", visible=False)
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def data(self, documents: int, total: int, tokens: int) -> None:
        """Tokenizing into shards: documents done of total, tokens so far."""
        if not self.enabled:
            return
        if self.data_task is None:
            self.data_task = self.progress.add_task("shards", total=total, step="tokenizing", loss="-", lr="-",
                                                    tps=f"{tokens:,} tokens")
        self.progress.update(self.data_task, completed=documents, tps=f"{tokens:,} tokens")

    def update(self, row: dict) -> None:
        if not self.enabled:
            return
        if "val_loss" in row:
            best = " (best)" if row.get("best") else ""
            self.progress.console.print(f"[bold]step {row['step']}[/] · {validation_line(row)}{best}")
            if row.get("sample"):
                sample = " ".join(row["sample"].split())[:150]
                self.progress.console.print(f"  [dim]sample:[/] {sample}", markup=True, highlight=False)
            return
        if self.data_task is not None:
            self.progress.remove_task(self.data_task)
            self.data_task = None
        self.progress.update(self.task, completed=min(SCALE, int(row["progress"] * SCALE)), visible=True,
                             step=f"step {row['step']}", loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}",
                             tps=f"{row['tokens_per_s']:,.0f}")

    def print_summary(self, summary: dict) -> None:
        err.print(f"[bold green]done[/]: {summary['steps']} steps, {summary['tokens']:,} tokens in "
                  f"{summary['seconds']:.0f} s ({summary['tokens_per_s']:,.0f} tok/s) · "
                  f"val loss {summary['final_val_loss']:.4f} · {summary.get('val_bpc')} bits/char")
        where = f"registered as [bold]{summary['name']}[/]: " if summary.get("name") else ""
        err.print(f"{where}model in {summary['output_dir']} (loss curve: loss.png)")
        if summary.get("name"):
            err.print(f'try: llmctl prompt -m {summary["name"]} "..."')
