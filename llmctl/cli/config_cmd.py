"""`llmctl config`: see the resolved configuration and where each value came from; change files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmctl.cli.options import JsonOpt, state
from llmctl.cli.output import fmt_value, out, print_json
from llmctl.config import PROJECT_FILE, REDACTED, set_config_value, spec_for, trust_project
from llmctl.paths import user_config_path

app = typer.Typer(no_args_is_help=True)

ProjectOpt = Annotated[bool, typer.Option("--project", help=f"Write ./{PROJECT_FILE} instead of the user file.")]
FileOpt = Annotated[Optional[Path], typer.Option("--file", help="Write this TOML file instead.")]


def _target(project: bool, file: Path | None) -> Path:
    if file is not None:
        return file
    return Path.cwd() / PROJECT_FILE if project else user_config_path()


@app.command("show")
def show(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Every setting's resolved value and its source (default, a file, env or flag). Secrets are redacted."""
    resolved = state(ctx).config()
    rows = resolved.rows(redact=True)
    if json_out:
        print_json({key: {"value": value, "source": source, **({"ignored": resolved.ignored[key]}
                                                                if key in resolved.ignored else {})}
                    for key, value, source in rows})
        return
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False)
    for column in ("key", "value", "source", "meaning"):
        table.add_column(column, overflow="fold")
    for key, value, source in rows:
        if key in resolved.ignored:
            source += f" (ignored: {resolved.ignored[key]})"
        table.add_row(key, fmt_value(value), source, spec_for(key, "config show").help, style="dim" if source == "default" else "")
    out.print(table)


@app.command("trust")
def trust(folder: Annotated[Optional[Path], typer.Argument(help="The folder whose llmctl.toml you trust (default: this one).")] = None,
          remove: Annotated[bool, typer.Option("--remove", help="Stop trusting it.")] = False,
          json_out: JsonOpt = False) -> None:
    """Let a folder's ./llmctl.toml set trusted settings (hf.trust_remote_code, openai.base_url), as git's
    safe.directory does; recorded in your user config file."""
    target = (folder or Path.cwd()).expanduser().resolve()
    if not target.is_dir():
        from llmctl.errors import UsageError

        raise UsageError(f"{target} is not a folder")
    trusted = trust_project(user_config_path(), target, remove=remove)
    if json_out:
        print_json({"folder": str(target), "trusted": not remove, "projects": trusted})
    else:
        print(f"{'no longer trusted' if remove else 'trusted'}: {target}  ({user_config_path()})")


@app.command("get")
def get(ctx: typer.Context, key: Annotated[str, typer.Argument(help="Dotted key, e.g. sampling.temperature.")],
        json_out: JsonOpt = False) -> None:
    """Print one resolved value."""
    spec = spec_for(key, "config get")
    resolved = state(ctx).config()
    value = resolved.config.get(key)
    if spec.secret and value:
        value = REDACTED
    if json_out:
        print_json({"key": key, "value": value, "source": resolved.sources[key]})
    else:
        print(fmt_value(value))


@app.command("set")
def set_(key: Annotated[str, typer.Argument(help="Dotted key, e.g. sampling.temperature.")],
         value: Annotated[str, typer.Argument(help="New value ('none' clears an optional setting).")],
         project: ProjectOpt = False, file: FileOpt = None) -> None:
    """Set a value in the user config file (`llmctl config path`) or, with --project, ./llmctl.toml."""
    path = _target(project, file)
    stored = set_config_value(path, key, value)
    print(f"{key} = {fmt_value(stored)}  ({path})")


@app.command("unset")
def unset(key: Annotated[str, typer.Argument(help="Dotted key.")], project: ProjectOpt = False,
          file: FileOpt = None) -> None:
    """Remove a value from a config file, so the next source down applies."""
    path = _target(project, file)
    set_config_value(path, key, None)
    print(f"{key} removed from {path}")


@app.command("path")
def path(json_out: JsonOpt = False) -> None:
    """Where the config files are looked for, lowest precedence first."""
    paths = {"user": str(user_config_path()), "project": str(Path.cwd() / PROJECT_FILE)}
    if json_out:
        print_json(paths)
    else:
        for name, p in paths.items():
            print(f"{name}: {p}{'' if Path(p).is_file() else '  (not present)'}")
