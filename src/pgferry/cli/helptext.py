"""``--help`` that shows each command's summary whole.

click cuts a command's summary in a group's command list at the first sentence
and at the terminal's width (``Run the apply and table sync workers of every
enabled...``). :class:`WholeSummaries` lists every subcommand with its whole first
paragraph instead (its ``short_help`` if it has one), wrapped onto more lines
by the formatter rather than cut.
"""

from __future__ import annotations

import inspect

import click


def summary(command: click.Command) -> str:
    """The command's ``short_help``, else the first paragraph of its help, on one line."""
    text = command.short_help or (command.help or "").split("\n\n")[0]
    return " ".join(inspect.cleandoc(text).split())


class WholeSummaries(click.Group):
    """A group whose ``--help`` lists each subcommand's summary whole."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is None or command.hidden:
                continue
            rows.append((name, summary(command)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
