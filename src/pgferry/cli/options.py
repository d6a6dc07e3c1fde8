"""The global options, accepted before and after any subcommand.

``-d/--dsn``, ``-v/--verbose``, ``-q/--quiet`` and ``--log-format`` are options
of the ``pgferry`` group; :func:`share_with` adds the same options to every command
under it as it is loaded (walked recursively).
Given after a subcommand they merge with what came before it: ``-d`` and
``--log-format`` replace, ``-v`` and ``-q`` add up (``pgferry -v status -v`` is
``-vv``). The DSN is ``ctx.obj["dsn"]``; the rest is :func:`given`, which
:func:`configure_logging` applies.

The log level: WARNING (a command may ask for another default: ``run``'s is
INFO), one step up per ``-v`` (``-vv`` is always DEBUG), one down per ``-q``;
with neither flag, ``$PGFERRY_LOG_LEVEL`` when set. The format: ``--log-format``,
else ``$PGFERRY_LOG_FORMAT``, else text.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click
from click.core import ParameterSource

from pgferry import logs
from pgferry.conninfo import mask
from pgferry.runner.env import LOG_FORMAT_ENV, LOG_LEVEL_ENV

DSN_HELP = "libpq conninfo or URI; without it the PG* environment variables are used, as psql."
VERBOSE_HELP = "Log more to stderr: -v progress (INFO), -vv debug with tracebacks."
QUIET_HELP = "Log less: -q one level fewer (warnings and errors, or errors only)."
FORMAT_HELP = f"Log lines as text or as one JSON object each [env {LOG_FORMAT_ENV}]."

_META_KEY = "pgferry.options"
#: The name under which :func:`share_with` adds each option (never a command's own).
_SHARED_PREFIX = "pgferry_global_"


@dataclass
class GlobalOptions:
    """What the global options said, merged over the command line."""

    verbose: int = 0
    quiet: int = 0
    log_format: str = "text"


def given(ctx: click.Context) -> GlobalOptions:
    """The global options of this invocation (shared by its contexts)."""
    found = ctx.meta.get(_META_KEY)
    if not isinstance(found, GlobalOptions):
        found = ctx.meta[_META_KEY] = GlobalOptions()
    return found


def log_level(options: GlobalOptions, default: int = logging.WARNING) -> int:
    if not options.verbose and not options.quiet:
        text = os.environ.get(LOG_LEVEL_ENV, "")
        if text.strip():
            return logs.parse_level(text, LOG_LEVEL_ENV)
    return logs.level_for(options.verbose, options.quiet, default=default)


def configure_logging(ctx: click.Context, default: int = logging.WARNING) -> int:
    """Log as the global options say; returns the level."""
    options = given(ctx)
    level = log_level(options, default)
    logs.configure(level, options.log_format)
    return level


def declare(group: click.Group) -> None:
    """Give the ``pgferry`` group the global options (their values reach its
    callback as ``dsn``, ``verbose``, ``quiet`` and ``log_format``)."""
    group.params[:0] = _options(shared=False)


def _options(*, shared: bool) -> list[click.Option]:
    """The four options, for the group or (``shared``) for a command under it,
    where they take no parameter of the command's and merge into the group's
    values."""

    def decls(name: str, *opts: str) -> list[str]:
        return [f"{_SHARED_PREFIX}{name}", *opts] if shared else [name, *opts]

    def merging(merge: Callable[[click.Context, Any], None]) -> dict[str, Any]:
        return {"expose_value": False, "callback": _merging(merge)} if shared else {}

    return [
        click.Option(
            decls("dsn", "-d", "--dsn"),
            default="",
            metavar="DSN",
            help=DSN_HELP,
            **merging(_merge_dsn),
        ),
        click.Option(
            decls("verbose", "-v", "--verbose"),
            count=True,
            help=VERBOSE_HELP,
            **merging(_merge_verbose),
        ),
        click.Option(
            decls("quiet", "-q", "--quiet"),
            count=True,
            help=QUIET_HELP,
            **merging(_merge_quiet),
        ),
        click.Option(
            decls("log_format", "--log-format"),
            type=click.Choice(logs.FORMATS),
            default="text",
            show_default=not shared,
            help=FORMAT_HELP,
            envvar=None if shared else LOG_FORMAT_ENV,
            **merging(_merge_format),
        ),
    ]


def _merging(
    merge: Callable[[click.Context, Any], None],
) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if param.name is None or ctx.get_parameter_source(param.name) not in (
            ParameterSource.COMMANDLINE,
        ):
            return
        merge(ctx, value)
        configure_logging(ctx)

    return callback


def _merge_dsn(ctx: click.Context, value: str) -> None:
    ctx.ensure_object(dict)["dsn"] = value
    logging.getLogger("pgferry").debug("using %s", mask(value) or "the PG* environment")


def _merge_verbose(ctx: click.Context, value: int) -> None:
    given(ctx).verbose += value


def _merge_quiet(ctx: click.Context, value: int) -> None:
    given(ctx).quiet += value


def _merge_format(ctx: click.Context, value: str) -> None:
    given(ctx).log_format = value


def share_with(command: click.Command) -> None:
    """Give ``command`` and every command under it, at any depth, the global
    options (an option whose flag a command uses itself is left out)."""
    _add(command)
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            share_with(sub)


def _add(command: click.Command) -> None:
    taken = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    names = {p.name for p in command.params}
    for option in _options(shared=True):
        if option.name in names or taken & {*option.opts, *option.secondary_opts}:
            continue
        command.params.append(option)
