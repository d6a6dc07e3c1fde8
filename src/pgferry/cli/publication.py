"""``pgferry publication``: create, alter, drop and list publications on the publisher.

::

    pgferry [-d DSN] publication create NAME
            (--table SPEC ... | --all-tables | --tables-in-schema SCHEMA ...)
            [--with KEY=VALUE ...]
    pgferry [-d DSN] publication alter NAME
            (--add-table SPEC | --drop-table NAME | --set-table SPEC | --with KEY=VALUE
             | --owner ROLE | --rename NEW) ...
    pgferry [-d DSN] publication drop NAME [--if-exists]
    pgferry [-d DSN] publication list [--json]

* NAME (the publication) is taken exactly as written, like ``stream --publication``.
* SPEC is ``[schema.]table [(column, ...)] [WHERE (expression)]`` with SQL
  identifier rules (unquoted names fold to lower case, ``"..."`` keeps them as
  they are); SCHEMA and ``--drop-table`` NAME follow the same rules
  (:mod:`pgferry.publisher.spec`). ``--table`` and ``--tables-in-schema`` may be
  combined; ``--all-tables`` stands alone.
* ``--with`` keys: ``publish`` (e.g. ``insert,update``) and
  ``publish_via_partition_root`` (a boolean).
* ``--owner ROLE`` and ``--rename NEW`` are native's ``ALTER PUBLICATION ...
  OWNER TO`` / ``RENAME TO`` (NEW and ROLE taken exactly as written), applied
  after the table changes; after a rename, subscriptions must name the new
  publication (a warning says so when the database has pgoutput slots).
* Success prints one line on stdout; warnings (tables whose UPDATE/DELETE will
  fail on the publisher, ``--all-tables``) print on stderr as
  ``pgferry: warning: ...``, one line each, and do not change the exit status.
  Errors are one ``pgferry: error:`` line (plus ``hint:``), exit status 1.
* ``list`` prints a table whose cells wrap, never cut; ``list --json`` the JSON array documented in
  :mod:`pgferry.publisher.manage`.
"""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pgferry.cli.helptext import WholeSummaries
from pgferry.publisher.manage import (
    PublicationInfo,
    alter_publication,
    connect,
    create_publication,
    drop_publication,
    list_publications,
    to_json,
)
from pgferry.publisher.spec import parse_identifier, parse_table_name, parse_table_spec
from pgferry.publisher.validate import parse_with, shown
from pgferry.sqltext import ident, printable


def _warn(lines: tuple[str, ...]) -> None:
    for line in lines:
        click.echo(f"pgferry: warning: {printable(line)}", err=True)


@click.group(cls=WholeSummaries)
def publication() -> None:
    """Manage publications on the publisher (-d DSN)."""


@publication.command()
@click.argument("name")
@click.option(
    "--table",
    "tables",
    multiple=True,
    metavar="SPEC",
    help="[schema.]table [(col, ...)] [WHERE (expr)] (repeatable).",
)
@click.option("--all-tables", is_flag=True, help="Every table, including those created later.")
@click.option(
    "--tables-in-schema",
    "schemas",
    multiple=True,
    metavar="SCHEMA",
    help="Every table of a schema, now and later (PG 15+; repeatable).",
)
@click.option(
    "--with",
    "with_",
    multiple=True,
    metavar="KEY=VALUE",
    help="publish=insert,update,... or publish_via_partition_root=true|false.",
)
@click.option(
    "--ddl",
    is_flag=True,
    help="Replicate DDL on its tables too (installs event triggers: superuser).",
)
@click.pass_obj
def create(
    obj: dict[str, str],
    name: str,
    tables: tuple[str, ...],
    all_tables: bool,
    schemas: tuple[str, ...],
    with_: tuple[str, ...],
    ddl: bool,
) -> None:
    """Create publication NAME."""
    if all_tables and (tables or schemas):
        raise click.UsageError("--all-tables cannot be combined with --table or --tables-in-schema")
    if not (all_tables or tables or schemas):
        raise click.UsageError("give --table, --tables-in-schema or --all-tables")
    specs = [parse_table_spec(t) for t in tables]
    schema_names = [parse_identifier(s) for s in schemas]
    options = parse_with(with_)
    with connect(obj["dsn"]) as conn:
        result = create_publication(
            conn,
            name,
            tables=specs,
            schemas=schema_names,
            all_tables=all_tables,
            options=options,
            ddl=ddl,
        )
    click.echo(f"created publication {shown(name)}" + (" (with DDL)" if ddl else ""))
    _warn(result.warnings)


@publication.command()
@click.argument("name")
@click.option("--add-table", "add", multiple=True, metavar="SPEC", help="Add a table (repeatable).")
@click.option(
    "--drop-table", "drop", multiple=True, metavar="NAME", help="Remove a table (repeatable)."
)
@click.option(
    "--set-table",
    "set_",
    multiple=True,
    metavar="SPEC",
    help="Replace the table list with these (repeatable).",
)
@click.option(
    "--with",
    "with_",
    multiple=True,
    metavar="KEY=VALUE",
    help="Change publish or publish_via_partition_root.",
)
@click.option("--owner", metavar="ROLE", help="Make ROLE the owner (OWNER TO).")
@click.option("--rename", metavar="NEW", help="Rename it to NEW (RENAME TO), last.")
@click.option(
    "--ddl",
    type=click.Choice(["on", "off"]),
    default=None,
    help="Replicate DDL on its tables too (on), or no longer (off).",
)
@click.pass_obj
def alter(
    obj: dict[str, str],
    name: str,
    add: tuple[str, ...],
    drop: tuple[str, ...],
    set_: tuple[str, ...],
    with_: tuple[str, ...],
    owner: str | None,
    rename: str | None,
    ddl: str | None,
) -> None:
    """Change publication NAME: options first, then set, drop and add tables, DDL
    capture, then owner and name."""
    if not (
        add or drop or set_ or with_ or owner is not None or rename is not None or ddl is not None
    ):
        raise click.UsageError(
            "give --add-table, --drop-table, --set-table, --with, --ddl, --owner or --rename"
        )
    if set_ and (add or drop):
        raise click.UsageError("--set-table cannot be combined with --add-table or --drop-table")
    options = parse_with(with_)
    add_specs = [parse_table_spec(t) for t in add]
    drop_specs = [parse_table_name(t) for t in drop]
    set_specs = [parse_table_spec(t) for t in set_]
    with connect(obj["dsn"]) as conn:
        result = alter_publication(
            conn,
            name,
            add=add_specs,
            drop=drop_specs,
            set_tables=set_specs,
            options=options,
            owner=owner,
            rename=rename,
            ddl=None if ddl is None else ddl == "on",
        )
    renamed = f" (renamed to {shown(rename)})" if rename is not None else ""
    owned = f" (owner {printable(ident(owner))})" if owner is not None else ""
    captured = "" if ddl is None else f" (DDL {ddl})"
    click.echo(f"altered publication {shown(name)}{owned}{captured}{renamed}")
    _warn(result.warnings)


@publication.command()
@click.argument("name")
@click.option("--if-exists", is_flag=True, help="Not an error when it does not exist.")
@click.pass_obj
def drop(obj: dict[str, str], name: str, if_exists: bool) -> None:
    """Drop publication NAME."""
    with connect(obj["dsn"]) as conn:
        dropped = drop_publication(conn, name, if_exists=if_exists)
    if dropped:
        click.echo(f"dropped publication {shown(name)}")
    else:
        click.echo(f"publication {shown(name)} does not exist; nothing dropped")


def _render(publications: list[PublicationInfo]) -> Table:
    table = Table(show_lines=True)
    headers = ("Name", "Owner", "All tables", "Publish", "Via root", "DDL", "Schemas", "Tables")
    for header in headers:
        table.add_column(header, overflow="fold")
    # Text cells, never markup: names may contain [brackets].
    for pub in publications:
        table.add_row(
            Text(printable(pub.name)),
            Text(printable(pub.owner)),
            Text("yes" if pub.all_tables else "no"),
            Text(", ".join(pub.publish) or "(nothing)"),
            Text("yes" if pub.via_root else "no"),
            Text("yes" if pub.ddl else "no"),
            Text("\n".join(printable(s) for s in pub.schemas)),
            Text("\n".join(printable(str(t.spec)) for t in pub.tables)),
        )
    return table


@publication.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="A JSON array, for scripts.")
@click.pass_obj
def list_(obj: dict[str, str], as_json: bool) -> None:
    """List the publications of the database."""
    with connect(obj["dsn"]) as conn:
        publications = list_publications(conn)
    if as_json:
        click.echo(to_json(publications))
    elif not publications:
        click.echo("no publications")
    else:
        Console(soft_wrap=False).print(_render(publications))
