"""``pgferry switchover``: make a subscription's subscriber the primary.

::

    pgferry [-d NEW] switchover NAME [--rollback] [--dry-run] [--json]
        [--pgbouncer ADMIN_CONNINFO [--pgbouncer-ini PATH] [--pgbouncer-database ALIAS]
         [--pgbouncer-target CONNINFO]]
        [--reverse-name R] [--reverse-conninfo CONNINFO]
        [--max-lag BYTES] [--max-transaction-age S] [--phase-timeout S] [--fence-timeout S]
        [--redirect-timeout S]
        [--no-schema-check] [--verify]

``-d`` is the database of subscription NAME (the new primary); the phases and
their guarantees are :mod:`pgferry.switchover`'s. The report is one line, then
one line per phase with its duration, the write pause and the fence position;
``--json`` prints one object instead: ``subscription``, ``reverse``,
``direction`` (``forward`` or ``rollback``), ``dry_run``, ``phases`` (phase
name -> seconds), ``pause`` (seconds; null with ``--dry-run``), ``fenced_at``
and ``resumed_at`` (the pause's ends, ISO 8601 in UTC), ``fence_lsn``,
``sequences`` (how many were synced), ``notes`` and ``verify`` (null, or
``pgferry verify``'s JSON object). With ``--verify`` a snapshot is exported on
each side inside the fence (milliseconds) and the two compared once writes
resumed (:func:`pgferry.verify.compare_snapshots`); differences make the exit
status 1 after the report (the switchover is done then). A failure is one
``pgferry: error:`` line (the old primary in service again) and exit status 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from pgferry.errors import PgferryError
from pgferry.switchover import Bouncer, Plan
from pgferry.switchover import switchover as run_switchover


@click.command()
@click.argument("name")
@click.option("--rollback", is_flag=True, help="Switch back: the reverse subscription's way.")
@click.option("--dry-run", is_flag=True, help="Run the preflight checks only.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--pgbouncer",
    metavar="ADMIN_CONNINFO",
    help="Fence with PgBouncer's PAUSE: its admin console (dbname=pgbouncer).",
)
@click.option(
    "--pgbouncer-ini",
    type=click.Path(dir_okay=False, path_type=Path),
    help="PgBouncer's ini file, rewritten to point the database at the new primary.",
)
@click.option(
    "--pgbouncer-database", metavar="ALIAS", help="The database's name in PgBouncer's ini."
)
@click.option(
    "--pgbouncer-target",
    metavar="CONNINFO",
    help="How PgBouncer reaches the new primary (default: -d's conninfo).",
)
@click.option("--reverse-name", metavar="R", help="The reverse subscription (NAME_reverse).")
@click.option(
    "--reverse-conninfo",
    metavar="CONNINFO",
    help="How the reverse subscription reaches the new primary (default: -d's conninfo).",
)
@click.option(
    "--max-lag",
    type=click.IntRange(min=0),
    default=1024 * 1024,
    show_default=True,
    help="Bytes the subscription may be behind; the preflight waits (half --phase-timeout).",
)
@click.option("--max-transaction-age", type=click.FloatRange(min=0), default=5.0, show_default=True)
@click.option("--phase-timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True)
@click.option(
    "--fence-timeout",
    type=click.FloatRange(min=0.05),
    default=5.0,
    show_default=True,
    help="Seconds everything inside the fence may take.",
)
@click.option(
    "--redirect-timeout",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds repointing PgBouncer and resuming may take (the watchdog waits for it).",
)
@click.option("--no-schema-check", is_flag=True, help="Skip the schema diff in the preflight.")
@click.option(
    "--verify",
    is_flag=True,
    help="Export a snapshot on each side inside the fence; compare them after writes resume.",
)
@click.pass_context
def switchover(
    ctx: click.Context,
    name: str,
    rollback: bool,
    dry_run: bool,
    as_json: bool,
    pgbouncer: str | None,
    pgbouncer_ini: Path | None,
    pgbouncer_database: str | None,
    pgbouncer_target: str | None,
    reverse_name: str | None,
    reverse_conninfo: str | None,
    max_lag: int,
    max_transaction_age: float,
    phase_timeout: float,
    fence_timeout: float,
    redirect_timeout: float,
    no_schema_check: bool,
    verify: bool,
) -> None:
    """Make subscription NAME's subscriber (-d) the primary, with a reverse subscription back."""
    if pgbouncer is None and (pgbouncer_ini or pgbouncer_database or pgbouncer_target):
        raise click.UsageError("--pgbouncer-ini/-database/-target need --pgbouncer")
    bouncer = (
        None
        if pgbouncer is None
        else Bouncer(pgbouncer, pgbouncer_database, pgbouncer_ini, pgbouncer_target)
    )
    plan = Plan(
        dsn=ctx.obj["dsn"],
        name=name,
        rollback=rollback,
        dry_run=dry_run,
        reverse_name=reverse_name,
        reverse_conninfo=reverse_conninfo,
        bouncer=bouncer,
        max_lag=max_lag,
        max_transaction_age=max_transaction_age,
        phase_timeout=phase_timeout,
        fence_timeout=fence_timeout,
        redirect_timeout=redirect_timeout,
        schema_check=not no_schema_check,
        verify=verify,
    )
    report = run_switchover(plan)
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        for line in report.lines():
            click.echo(line)
    if report.verify is not None and not report.verify.identical:
        raise PgferryError(
            f"the switchover is done, but verify found {report.verify.differences}"
            " differences between the two sides at the fence's position",
            hint="the differing keys are listed above; the new primary is in service",
        )
