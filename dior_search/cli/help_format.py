"""How `--help` reads: plain text that reflows to the terminal, with conventional metavars.

typer's own help table gives each option six columns and cuts what does not fit an 80-column
terminal, shows `<bool>` for flags and `<str>` for values, and reads help text as rich markup
(`'dior-search[milvus]'` lost its `[milvus]`). The app prints click's plain help instead
(`rich_markup_mode=None`): paragraphs reflow to the width, text is printed literally, flags
show no value; this module names each option's value the way Unix tools do (`--indexes DIR`).
"""

from __future__ import annotations

from typing import Any

from typer._click.core import Command, Context
from typer.core import TyperArgument, TyperGroup, TyperOption

# Values named by what they hold, where the type alone says too little.
METAVARS = {
    "condition": "TEXT",
    "dataset": "NAME",
    "datasets_dir": "DIR",
    "images": "PATH",
    "image": "FILE",
    "image_column": "NAME",
    "index_path": "DIR",
    "indexes": "DIR",
    "store": "URI",
    "model": "NAME",
    "revision": "REV",
    "template": "NAME",
    "source": "NAME",
    "dtype": "NAME",
    "device": "NAME",
    "positions": "NAME",
    "position_scheme": "NAME",
    "memory_budget": "SIZE",
    "index_type": "SPEC",
    "host": "HOST",
    "port": "PORT",
    "out": "DIR",
    "sheet": "FILE",
    "plot": "FILE",
    "json_out": "FILE",
    "where": "COND=VALUE",
    "text": "WORD",
}
# Otherwise, by the value's type.
TYPE_METAVARS: dict[Any, str] = {int: "N", float: "NUMBER", list[int]: "N", list[float]: "NUMBER"}


def conventional_metavar(option: TyperOption) -> str:
    """The metavar a value option shows: by its name (METAVARS), else by its type."""
    if option.name in METAVARS:
        return METAVARS[option.name]
    described = option.type_descriptor
    if described.is_path:
        return "PATH"
    return TYPE_METAVARS.get(described.annotation, "TEXT")


def name_values(command: Command) -> Command:
    """`command` with a conventional metavar on every value option that has none, and its
    arguments named in capitals alone (`IMAGE`, not `image <path>`)."""
    for param in command.params:
        if param.metavar is not None:
            continue
        if isinstance(param, TyperArgument):
            param.metavar = (param.name or "value").upper()
            # typer adds the type after an argument's name; the name says enough.
            setattr(param, "display_type_rich", lambda ctx: None)  # noqa: B010
        elif isinstance(param, TyperOption) and not (param.is_flag or param.count):
            param.metavar = conventional_metavar(param)
    return command


def summary(command: Command) -> str:
    """A verb's first paragraph of help, on one line (the help lists it whole, wrapped)."""
    first = (command.help or "").strip().split("\n\n")[0]
    return " ".join(first.split())


class HelpGroup(TyperGroup):
    """The app's command group: each verb's options name their values (`name_values`)."""

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        command = super().get_command(ctx, cmd_name)
        return None if command is None else name_values(command)

    def format_help(self, ctx: Context, formatter: Any) -> None:
        name_values(self)
        super().format_help(ctx, formatter)

    def format_commands(self, ctx: Context, formatter: Any) -> None:
        """Each verb with its whole summary, wrapped (click cuts it at the width with ...)."""
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, summary(command)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
