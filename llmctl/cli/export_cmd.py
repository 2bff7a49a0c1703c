"""`llmctl export`: a model as one GGUF file for llama.cpp, ollama and LM Studio. Thin: flags -> export_gguf()."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmctl.cli.options import JsonOpt, state
from llmctl.cli.output import err, fmt_value, out, print_json, warn

FORMATS = ("gguf",)


def export(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Registry name or alias, a model or adapter directory, hf:PATH.")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="The GGUF file to write (its folder must exist).")],
    to: Annotated[str, typer.Option("--to", help="Format: gguf (llama.cpp, ollama, LM Studio).")] = "gguf",
    quant: Annotated[str, typer.Option("--quant", "-q", help="f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1.")] = "q8_0",
    name: Annotated[Optional[str], typer.Option("--name", help="Registry name for the export. [default: the file's name]")] = None,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Load the file back and compare it with the source.")] = True,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file, Modelfile and registry entry.")] = False,
    ollama: Annotated[Optional[str], typer.Option("--ollama", help="Also write a Modelfile and run `ollama create NAME` (or print it).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Export a model to one GGUF file for llama.cpp, ollama and LM Studio, checked by a round trip."""
    from llmctl.errors import RemoteError, UsageError
    from llmctl.export.run import export_gguf
    from llmctl.export.verify import RoundTripFailed

    if to not in FORMATS:
        raise UsageError(f"unknown export format '{to}'", hint="use one of: " + ", ".join(FORMATS))
    config = state(ctx).config().config
    with err.status(f"exporting {model}…") as status:
        result = export_gguf(model, out_file, quant=quant, name=name, verify=verify, force=force, ollama=ollama,
                             config=config, progress=lambda step: status.update(f"{step}…"))
    if json_out:
        print_json(result.to_dict())
    else:
        _report(result)
    if result.passed is False:
        raise RoundTripFailed(f"round trip FAILED ({'; '.join(result.round_trip['failures'])}); "
                              f"the file is kept as {result.path} and not registered")
    if result.ollama and result.ollama["ran"] and not result.ollama["ok"]:
        raise RemoteError(f"ollama create {result.ollama['name']} failed: {result.ollama['output']}",
                          hint=f"the GGUF and Modelfile are written; retry: {result.ollama['command']}")


def _report(result) -> None:
    from rich.markup import escape
    from rich.table import Table

    rt = result.round_trip
    table = Table(show_header=False, show_edge=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows = [("model", result.source), ("file", result.path), ("architecture", result.architecture),
            ("quantization", f"{result.quant} ({_types(result.tensor_types)})"),
            ("size", f"{result.bytes / 1e6:,.1f} MB ({result.parameters:,} parameters)"),
            ("time", f"{result.seconds:.1f} s" + (f" + {rt['seconds']:.1f} s round trip" if rt else ""))]
    if rt:
        rows += [("loaded back by", rt["loader"]),
                 ("tokenizer", "same ids" if rt["tokenizer_equal"] else "DIFFERENT ids"),
                 ("chat template", {None: "none (base model)", True: "same text", False: "DIFFERENT"}[rt["template_equal"]]),
                 ("max logit diff", f"{rt['max_logit_diff']:.3g}"),
                 ("greedy continuations", "equal" if rt["greedy_equal"] else "differ"),
                 ("perplexity export/source", f"{rt['ppl_ratio']:.4f} ({rt['ppl_export']:.2f} / {rt['ppl_source']:.2f})"),
                 ("round trip", "[green]PASS[/]" if rt["passed"] else "[red]FAIL[/]: " + escape("; ".join(rt["failures"])))]
    else:
        rows.append(("round trip", "skipped (--no-verify)"))
    rows += [("registered as", fmt_value(result.name)), ("sha256", result.sha256)]
    if result.modelfile:
        rows.append(("Modelfile", result.modelfile))
    for key, value in rows:
        table.add_row(key, value if key == "round trip" else escape(value))
    out.print(table)
    for note in result.notes:
        warn(note)
    if result.ollama and not result.ollama["ran"]:
        out.print(f"ollama is not on PATH; to add the model to ollama run:\n  {result.ollama['command']}")
    elif result.ollama and result.ollama["ok"]:
        out.print(f"ollama: created {result.ollama['name']} (ollama run {result.ollama['name']})")
    if result.name:
        out.print(f"next: llmctl prompt -m {result.name} \"Hello\"")


def _types(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {t}" for t, n in sorted(counts.items(), key=lambda kv: -kv[1]))
