"""``pgferry sequences``: the sequences of a subscription's tables.

::

    pgferry [-d DSN] sequences sync NAME [--json]

``-d`` is the subscriber database. ``sync`` sets the subscriber's sequences of
subscription NAME's tables to at least the publisher's values now, once, in one
transaction (see :mod:`pgferry.sequences`; it works whatever the ``sequences``
option says), and prints one line: how many sequences, how many were set, and
the largest drift found (how far the subscriber was behind, before the sync).
``--json`` prints one object: ``subscription``, ``sequences`` (how many),
``set``, ``largest_drift`` (null when none is known), ``seconds``, and
``items``: one object per sequence with ``schema``, ``name``,
``publisher_value``, ``subscriber_before``, ``subscriber_value`` (last values;
null: never called), ``set`` and ``drift``.
"""

from __future__ import annotations

import json
from typing import Any

import click

from pgferry import connect
from pgferry.catalog import SubscriptionNotFound, current_version, ensure_catalog
from pgferry.sequences import SyncReport, sync_sequences
from pgferry.sqltext import printable


def to_document(report: SyncReport) -> dict[str, Any]:
    """The ``sequences sync --json`` object."""
    worst = report.largest_drift
    return {
        "subscription": report.subscription,
        "sequences": len(report.sequences),
        "set": report.set_count,
        "largest_drift": None if worst is None else worst.drift,
        "seconds": round(report.seconds, 6),
        "items": [
            {
                "schema": s.schema,
                "name": s.name,
                "publisher_value": s.publisher_value,
                "subscriber_before": s.subscriber_before,
                "subscriber_value": s.subscriber_value,
                "set": s.set,
                "drift": s.drift,
            }
            for s in report.sequences
        ],
    }


@click.group()
def sequences() -> None:
    """Sync the sequences of a subscription's tables (-d: subscriber)."""


@sequences.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of a line.")
@click.pass_obj
def sync(obj: dict[str, str], name: str, as_json: bool) -> None:
    """Set the subscriber's sequences of NAME's tables to the publisher's, now."""
    with connect.subscriber(obj["dsn"]) as conn:
        if current_version(conn) == 0:  # (no catalog: none is created for this)
            raise SubscriptionNotFound(f"subscription {printable(repr(name))} does not exist")
        ensure_catalog(conn)  # (migrated to the version with pgferry.sequence_state)
        report = sync_sequences(conn, name)
    if as_json:
        click.echo(json.dumps(to_document(report), indent=2))
    else:
        click.echo(report.summary())
