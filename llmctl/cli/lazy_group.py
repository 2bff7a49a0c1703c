"""A command group whose commands are imported only when one runs, shows its help or is completed.

The root lists every command from a table of names and one-line help, so `llmctl --help` costs
little more than importing typer; a command module (and what it imports) loads only when needed.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import typer
from typer.core import TyperGroup


@dataclass(frozen=True)
class LazyCommand:
    """Where a command lives and what the root's --help says of it.

    `target` is "module:attribute", a command function or a `typer.Typer` group; `subcommands`
    adds (name, "module:function") commands defined in other modules to that group.
    """

    target: str
    help: str
    subcommands: tuple[tuple[str, str], ...] = ()

    def build(self, name: str):
        """The click command, as typer would have built it had it been registered on the root."""
        group = _as_click_command(name, _resolve(self.target), self.help)
        for sub_name, sub_target in self.subcommands:
            group.add_command(_as_click_command(sub_name, _resolve(sub_target), None), sub_name)
        return group


def _resolve(target: str):
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _as_click_command(name: str, obj, help: str | None):
    # A throwaway holder: registering on it leaves the command module's own objects untouched, so
    # building twice (tests run the CLI many times in one process) registers nothing twice.
    # Plain help, as on the root: typer's rich help renderer alone takes longer to import than typer.
    holder = typer.Typer(rich_markup_mode=None, add_completion=False)
    if isinstance(obj, typer.Typer):
        holder.add_typer(obj, name=name, help=help, cls=PlainGroup)
    else:
        holder.command(name)(obj)
    return typer.main.get_group(holder).commands[name]


class PlainGroup(TyperGroup):
    """A group with plain help that, called bare, prints its help on stdout and exits 2."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if not args and self.no_args_is_help and not ctx.resilient_parsing:
            # As with typer's rich help: the help on stdout, then a usage error with no message, on
            # which `run` prints nothing more (typer's plain help would put the help in the message).
            typer.echo(ctx.get_help())
            raise typer.TyperException("")
        return super().parse_args(ctx, args)

    def format_commands(self, ctx, formatter) -> None:
        # Each command's whole first paragraph, as the rich help showed it: click's own listing cuts
        # it at the first full stop or about 45 characters.
        rows = [(name, self.summary(ctx, name)) for name in self.list_commands(ctx)]
        rows = [(name, text) for name, text in rows if text is not None]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def summary(self, ctx, name: str) -> str | None:
        """The one-line help of command `name`; None for a hidden one."""
        command = self.get_command(ctx, name)
        if command is None or command.hidden:
            return None
        text = command.short_help or inspect.cleandoc(command.help or "").split("\n\n")[0]
        return " ".join(text.split())


class _LazyCommands(Mapping):
    """A group's commands: every name known up front, each command built on first use."""

    def __init__(self, table: Mapping[str, LazyCommand], registered: Mapping):
        self.table = table
        self.built = dict(registered)  # commands registered on the group the usual way, then those built

    def __getitem__(self, name: str):
        if name not in self.built:
            self.built[name] = self.table[name].build(name)  # KeyError for an unknown name, as a dict
        return self.built[name]

    def __iter__(self) -> Iterator[str]:
        return iter({**dict.fromkeys(self.table), **dict.fromkeys(self.built)})

    def __len__(self) -> int:
        return len(set(self.table) | set(self.built))


class LazyGroup(PlainGroup):
    """A typer group over `table` (set by a subclass: typer builds the group from the class alone)."""

    table: Mapping[str, LazyCommand] = {}

    def __init__(self, **attrs):
        super().__init__(**attrs)
        # typer's lookup and "did you mean" suggestions read self.commands; it is lazy here.
        self.commands = _LazyCommands(self.table, self.commands)

    def list_commands(self, ctx) -> list[str]:
        return list(self.commands)

    def summary(self, ctx, name: str) -> str | None:
        if name in self.table:
            return self.table[name].help  # listing the commands must import none of them
        return super().summary(ctx, name)
