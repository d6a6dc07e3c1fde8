"""``pgferry conflicts``: the conflict log of the ``-d`` (subscriber) database.

::

    pgferry [-d DSN] conflicts [--subscription NAME] [--since WHEN] [--limit N] [--json]

Lists logged conflicts, oldest first: when, subscription, table, type, the
policy that resolved it and whether the remote change was applied, the remote
transaction (xid, commit LSN and time, origin), the local row's writer, and the
key. ``--since`` takes a timestamp PostgreSQL understands (``2026-11-21 10:00``)
or an age (``30s``, ``15m``, ``2h``, ``7d``); ``--limit`` keeps the newest N.
``--json`` prints an array of objects with every column, rows included.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import click
import psycopg
from rich.console import Console
from rich.table import Table

from pgferry import connect
from pgferry.catalog import conflict_log as catalog
from pgferry.catalog.schema import current_version
from pgferry.errors import InterfaceError
from pgferry.sqltext import printable

_AGE = re.compile(r"\s*(\d+)\s*(s|m|h|d)\s*", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(conn: psycopg.Connection[Any], text: str) -> datetime:
    age = _AGE.fullmatch(text)
    if age:
        delta = timedelta(**{_UNITS[age.group(2).lower()]: int(age.group(1))})
        return datetime.now(UTC) - delta
    try:
        row = conn.execute("SELECT %s::timestamptz", (text,)).fetchone()
    except psycopg.DataError:
        raise InterfaceError(
            f"--since: {text!r} is neither a timestamp nor an age",
            hint="give a timestamp (2026-11-21 10:00) or an age (30s, 15m, 2h, 7d)",
        ) from None
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def _as_json(c: catalog.LoggedConflict) -> dict[str, Any]:
    return {
        "id": c.id,
        "logged_at": c.logged_at.isoformat() if c.logged_at else None,
        "subscription": c.subscription,
        "table": {"schema": c.table_schema, "name": c.table_name},
        "conflict_type": str(c.conflict_type),
        "resolution": c.resolution,
        "applied": c.applied,
        "remote": {
            "xid": c.remote_xid,
            "commit_lsn": str(c.remote_commit_lsn) if c.remote_commit_lsn else None,
            "commit_time": c.remote_commit_time.isoformat() if c.remote_commit_time else None,
            "origin": c.remote_origin,
            "row": c.remote_row,
        },
        "local": {
            "origin": c.local_origin,
            "commit_time": c.local_commit_time.isoformat() if c.local_commit_time else None,
            "row": c.local_row,
        },
        "key": c.key,
    }


def _render(rows: list[catalog.LoggedConflict]) -> Table:
    table = Table()
    for column in (
        "logged at",
        "subscription",
        "table",
        "conflict",
        "resolution",
        "remote",
        "local",
        "key",
    ):
        table.add_column(column)
    for c in rows:
        local = (
            f"origin {c.local_origin}"
            if c.local_origin
            else "local write"
            if c.local_commit_time
            else "-"
            if c.local_row is None
            else "unknown writer"
        )
        if c.local_commit_time:
            local += f"\n{c.local_commit_time:%Y-%m-%d %H:%M:%S.%f}"
        table.add_row(
            f"{c.logged_at:%Y-%m-%d %H:%M:%S}" if c.logged_at else "",
            printable(c.subscription),
            printable(f"{c.table_schema}.{c.table_name}"),
            str(c.conflict_type),
            f"{c.resolution}: {'applied' if c.applied else 'not applied'}",
            f"xid {c.remote_xid} at {c.remote_commit_lsn}"
            + (f"\n{c.remote_commit_time:%Y-%m-%d %H:%M:%S.%f}" if c.remote_commit_time else ""),
            printable(local),
            printable(json.dumps(c.key)) if c.key is not None else "",
        )
    return table


@click.command()
@click.option("--subscription", "subscription", metavar="NAME", help="Only this subscription.")
@click.option("--since", metavar="WHEN", help="Only from WHEN (a timestamp, or an age: 15m, 2h).")
@click.option("--limit", type=click.IntRange(min=1), help="Only the newest N.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
@click.pass_obj
def conflicts(
    obj: dict[str, str],
    subscription: str | None,
    since: str | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """List logged conflicts (-d: subscriber)."""
    with connect.subscriber(obj["dsn"]) as conn:
        rows: list[catalog.LoggedConflict] = []
        if current_version(conn) >= 3:
            rows = catalog.list_conflicts(
                conn,
                subscription=subscription,
                since=parse_since(conn, since) if since else None,
                limit=limit,
            )
    if as_json:
        click.echo(json.dumps([_as_json(c) for c in rows], indent=2))
    elif not rows:
        click.echo("no conflicts")
    else:
        width = None if sys.stdout.isatty() else 240
        Console(soft_wrap=False, width=width).print(_render(rows))
