"""``pgferry subscription``: create, alter, drop and list subscriptions.

::

    pgferry [-d DSN] subscription create NAME --connection CONNINFO
            --publication PUB [--publication PUB ...] [--with KEY=VALUE ...]
    pgferry [-d DSN] subscription alter NAME
            (--enable | --disable | --connection CONNINFO | --set-publication PUB ...
             | --add-publication PUB | --drop-publication PUB | --refresh-publication
             | --skip LSN | --with KEY=VALUE | --table-resolution TABLE=SPEC
             | --owner ROLE | --rename NEW) ...
    pgferry [-d DSN] subscription drop NAME [--if-exists]
    pgferry [-d DSN] subscription list [--json]
    pgferry [-d DSN] subscription wait NAME [--timeout SECONDS]

* ``-d`` is the SUBSCRIBER database: the catalog (schema ``pgferry``) lives there;
  ``--connection`` is the publisher's conninfo, stored in the catalog (which
  PUBLIC cannot read) and never printed unmasked.
* ``--with`` keys are native's plus pgferry's own; see
  :mod:`pgferry.subscription.options`. ``create --help`` and ``alter --help``
  list the keys each takes with their defaults, generated from that one
  definition (:func:`~pgferry.subscription.options.help_epilog`).
  ``two_phase`` changes only while disabled; ``refresh`` and ``copy_data`` go
  with a publication change or ``--refresh-publication``;
  ``--table-resolution`` gives one table its own conflict resolution.
* ``--owner ROLE`` and ``--rename NEW`` are native's OWNER TO and RENAME TO:
  ``--owner`` comes last in alter's transaction, ``--rename`` goes in a command
  of its own and stops the subscription's workers first (see
  :mod:`pgferry.subscription.naming`).
* Success prints one line on stdout; warnings print on stderr as
  ``pgferry: warning: ...`` and do not change the exit status. Errors are one
  ``pgferry: error:`` line (plus ``hint:``), exit status 1.
* ``list`` prints one block per subscription, ``key: value`` lines that stay
  readable in 80 columns and when piped: state, owner, publications, slot,
  connection (masked), tables by state, the options that differ from their
  defaults, the skip LSN if set, and the last error with its next action
  (``hint:``); ``list --json`` prints the JSON array documented in
  :mod:`pgferry.subscription.manage` (every option).
* ``wait`` exits 0 once every table is ready and everything the publisher had
  written when it started is applied; 1 with one line saying why on timeout, error
  or a disabled subscription (see :mod:`pgferry.status.wait`).
"""

from __future__ import annotations

import click

from pgferry import conninfo as ci
from pgferry.cli.helptext import WholeSummaries
from pgferry.sqltext import ident, printable
from pgferry.subscription.manage import (
    AlterRequest,
    SubscriptionInfo,
    alter_subscription,
    create_subscription,
    drop_subscription,
    list_subscriptions,
    shown,
    to_json,
)
from pgferry.subscription.options import ALTER_KEYS, CREATE_KEYS, REFRESH_KEYS, help_epilog


def _warn(lines: tuple[str, ...]) -> None:
    for line in lines:
        click.echo(f"pgferry: warning: {printable(line)}", err=True)


@click.group(cls=WholeSummaries)
def subscription() -> None:
    """Manage subscriptions (-d DSN is the subscriber database)."""


@subscription.command(
    epilog=help_epilog(CREATE_KEYS, "--with keys (KEY=DEFAULT, then the values it takes):")
)
@click.argument("name")
@click.option(
    "--connection", required=True, metavar="CONNINFO", help="The publisher's libpq conninfo."
)
@click.option(
    "--publication",
    "publications",
    multiple=True,
    required=True,
    metavar="PUB",
    help="Publication to subscribe to (repeatable).",
)
@click.option(
    "--with",
    "with_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Subscription option, as native's WITH (...) (repeatable).",
)
@click.pass_obj
def create(
    obj: dict[str, str],
    name: str,
    connection: str,
    publications: tuple[str, ...],
    with_options: tuple[str, ...],
) -> None:
    """Create subscription NAME: slot on the publisher, tables in the catalog."""
    result = create_subscription(obj["dsn"], name, connection, publications, with_options)
    _warn(result.warnings)
    states = {t.state for t in result.tables}
    tables = f"{len(result.tables)} table{'' if len(result.tables) == 1 else 's'}"
    if states:
        tables += f" (state {'/'.join(sorted(states))})"
    slot = (
        "no slot"
        if result.slot_name is None
        else f"slot {shown(result.slot_name)}"
        + (" created on the publisher" if result.slot_created else " (not created)")
    )
    click.echo(
        f"created subscription {shown(name)}: {slot}, {tables},"
        f" {'enabled' if result.enabled else 'disabled'}"
    )


@subscription.command(
    epilog=help_epilog(
        ALTER_KEYS + REFRESH_KEYS,
        "--with keys (KEY=DEFAULT, then the values it takes; refresh and copy_data\n"
        "only with a publication change or --refresh-publication):",
    )
)
@click.argument("name")
@click.option("--enable", is_flag=True, help="Enable the subscription.")
@click.option("--disable", is_flag=True, help="Disable the subscription.")
@click.option("--connection", metavar="CONNINFO", help="New conninfo of the publisher.")
@click.option(
    "--set-publication",
    "set_publications",
    multiple=True,
    metavar="PUB",
    help="Replace the publications (repeatable).",
)
@click.option(
    "--add-publication",
    "add_publications",
    multiple=True,
    metavar="PUB",
    help="Add a publication (repeatable).",
)
@click.option(
    "--drop-publication",
    "drop_publications",
    multiple=True,
    metavar="PUB",
    help="Remove a publication (repeatable).",
)
@click.option(
    "--refresh-publication",
    is_flag=True,
    help="Register newly published tables, forget tables no longer published.",
)
@click.option("--skip", metavar="LSN", help="Skip the remote transaction finishing at LSN.")
@click.option("--with", "with_options", multiple=True, metavar="KEY=VALUE", help="Set an option.")
@click.option(
    "--table-resolution",
    "table_resolutions",
    multiple=True,
    metavar="TABLE=SPEC",
    help="A table's own conflict_resolution (SPEC 'default' removes it; repeatable).",
)
@click.option("--owner", metavar="ROLE", help="Make ROLE the owner (native's OWNER TO).")
@click.option(
    "--rename",
    metavar="NEW",
    help="Rename it to NEW (native's RENAME TO); its origin keeps its progress.",
)
@click.pass_obj
def alter(
    obj: dict[str, str],
    name: str,
    enable: bool,
    disable: bool,
    connection: str | None,
    set_publications: tuple[str, ...],
    add_publications: tuple[str, ...],
    drop_publications: tuple[str, ...],
    refresh_publication: bool,
    skip: str | None,
    with_options: tuple[str, ...],
    table_resolutions: tuple[str, ...],
    owner: str | None,
    rename: str | None,
) -> None:
    """Change subscription NAME, in one transaction (--rename goes alone)."""
    request = AlterRequest(
        enable=enable,
        disable=disable,
        connection=connection,
        set_publications=set_publications,
        add_publications=add_publications,
        drop_publications=drop_publications,
        refresh_publication=refresh_publication,
        skip=skip,
        with_options=with_options,
        table_resolutions=table_resolutions,
        owner=owner,
        rename=rename,
    )
    result = alter_subscription(obj["dsn"], name, request)
    _warn(result.warnings)
    click.echo(f"altered subscription {shown(name)}: {'; '.join(result.changes)}")


@subscription.command()
@click.argument("name")
@click.option("--if-exists", is_flag=True, help="No error if it does not exist.")
@click.pass_obj
def drop(obj: dict[str, str], name: str, if_exists: bool) -> None:
    """Drop subscription NAME, its slot on the publisher and its origin."""
    result = drop_subscription(obj["dsn"], name, if_exists=if_exists)
    _warn(result.warnings)
    if not result.dropped:
        click.echo(f"subscription {shown(name)} does not exist; nothing dropped")
        return
    slot = (
        f" (slot {shown(result.slot_dropped)} dropped on the publisher)"
        if result.slot_dropped
        else ""
    )
    click.echo(f"dropped subscription {shown(name)}{slot}")


def _block(info: SubscriptionInfo) -> list[str]:
    """One subscription as ``key: value`` lines (no line depends on the width)."""
    sub = info.subscription
    options = info.changed_options
    lines = [
        f"subscription {shown(sub.name)}",
        f"  state:        {info.state}",
        f"  owner:        {printable(ident(info.owner)) if info.owner else '-'}",
        f"  publications: {', '.join(shown(p) for p in sub.publications)}",
        f"  slot:         {'NONE' if sub.slot_name is None else shown(sub.slot_name)}",
        f"  connection:   {printable(ci.mask(sub.conninfo))}",
        f"  tables:       {info.states_summary or '-'}",
        "  options:      "
        + (", ".join(f"{k}={_option(v)}" for k, v in options.items()) if options else "defaults"),
    ]
    if sub.skip_lsn is not None:
        lines.append(f"  skip LSN:     {sub.skip_lsn}")
    if sub.last_error:
        lines.append(f"  last error:   {printable(sub.last_error)}")
        hint = info.last_error_hint
        if hint:
            lines.append(f"  hint:         {printable(hint)}")
    return lines


def _option(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return printable(str(value))


@subscription.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
@click.pass_obj
def list_(obj: dict[str, str], as_json: bool) -> None:
    """List the subscriptions: state, options, skip LSN, last error and its fix."""
    infos = list_subscriptions(obj["dsn"])
    if as_json:
        click.echo(to_json(infos))
    elif not infos:
        click.echo("no subscriptions")
    else:
        click.echo("\n\n".join("\n".join(_block(info)) for info in infos))


@subscription.command()
@click.argument("name")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="Give up after this long (exit status 1); default: no limit.",
)
@click.pass_obj
def wait(obj: dict[str, str], name: str, timeout: float | None) -> None:
    """Wait until NAME has every table ready and has applied the publisher's WAL
    position of the moment wait was called (progress on stderr)."""
    import sys

    from pgferry.status.progress import WaitDisplay
    from pgferry.status.wait import wait_ready

    display = WaitDisplay(sys.stderr, terminal=sys.stderr.isatty())
    try:
        result = wait_ready(obj["dsn"], name, timeout=timeout, on_progress=display)
    finally:
        display.close()
    click.echo(
        f"subscription {shown(name)} caught up: {result.tables}"
        f" table{'' if result.tables == 1 else 's'} ready, applied {result.applied_lsn}"
        f" (publisher at {result.target_lsn} when wait started) after {result.seconds:.1f} s"
    )
