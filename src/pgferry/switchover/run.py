"""The switchover's phases, in order, each timed and bounded.

:func:`switchover` runs them for one :class:`Plan` and returns a :class:`Report`
(each phase's duration, the write pause); a failure raises a
:class:`SwitchoverFailed` after putting the old primary back in service (see
:mod:`pgferry.switchover`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from pgferry import connect
from pgferry.catalog import ensure_catalog, store
from pgferry.catalog import hold as catalog_hold
from pgferry.catalog.schema import current_version
from pgferry.catalog.store import Subscription, SubscriptionNotFound
from pgferry.errors import InterfaceError, PgferryError
from pgferry.protocol.lsn import INVALID_LSN, Lsn
from pgferry.sequences import PreparedSync, SyncReport, prepare_sync
from pgferry.subscription.manage import shown

from . import drain, reverse
from .errors import PreflightFailed, SwitchoverFailed
from .fence import BouncerFence, DatabaseFence, Fence
from .preflight import (
    check_lag,
    check_launcher,
    check_prepared,
    check_publications,
    check_read_only_overrides,
    check_schema,
    check_sequences,
    check_subscription,
    check_transactions,
)

logger = logging.getLogger("pgferry.switchover")

Conn = psycopg.Connection[Any]

APPLICATION_NAME = "pgferry switchover"
#: Seconds of lease the reverse subscription's standby hold must still have when
#: it is released (less: it may have ended by itself, and the switchover fails).
RELEASE_MARGIN = 0.5


@dataclass(frozen=True)
class Bouncer:
    """``--pgbouncer``: the admin console, the database's name there, its ini, and
    the conninfo PgBouncer is to use for the new primary."""

    admin: str
    database: str | None = None
    ini: Path | None = None
    target: str | None = None


@dataclass(frozen=True)
class Plan:
    #: The subscriber's (new primary's) conninfo, as given with -d.
    dsn: str
    name: str
    rollback: bool = False
    dry_run: bool = False
    reverse_name: str | None = None
    #: How the reverse subscription reaches the new primary (default: ``dsn``).
    reverse_conninfo: str | None = None
    bouncer: Bouncer | None = None
    max_lag: int = 1024 * 1024
    max_transaction_age: float = 5.0
    #: Seconds each phase may take (the fence and the drain: ``fence_timeout``).
    phase_timeout: float = 30.0
    fence_timeout: float = 5.0
    #: Seconds the redirect (PgBouncer repointed and resumed) may take.
    redirect_timeout: float = 5.0
    schema_check: bool = True
    verify: bool = False


@dataclass
class Phase:
    name: str
    seconds: float


@dataclass
class Report:
    subscription: str
    reverse: str
    direction: str
    phases: list[Phase] = field(default_factory=list)
    #: From the fence taken to writes allowed again.
    pause: float = 0.0
    #: When the fence was taken (``time.monotonic()``, and ``time.time()``).
    fenced_at: float = 0.0
    fenced_wall: float = 0.0
    fence_lsn: Lsn = INVALID_LSN
    sequences: int = 0
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)
    verify: Any = None

    def phase(self, name: str) -> float:
        return sum(p.seconds for p in self.phases if p.name == name)

    def lines(self) -> list[str]:
        what = "preflight passed" if self.dry_run else f"switchover done ({self.direction})"
        out = [f"subscription {shown(self.subscription)}: {what}"]
        out += [f"  {p.name:<12} {p.seconds * 1000:9.1f} ms" for p in self.phases]
        if not self.dry_run:
            out.append(f"  write pause  {self.pause * 1000:9.1f} ms (fence to writes resumed)")
            out.append(
                f"  fence at {self.fence_lsn}; {self.sequences} sequences synced;"
                f" reverse replication: {shown(self.reverse)}"
            )
        if self.verify is not None:
            from pgferry.verify import render_text

            out += [f"  {line}" for line in render_text(self.verify)]
        out += [f"  {n}" for n in self.notes]
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "subscription": self.subscription,
            "reverse": self.reverse,
            "direction": self.direction,
            "dry_run": self.dry_run,
            "phases": {p.name: round(p.seconds, 6) for p in self.phases},
            "pause": None if self.dry_run else round(self.pause, 6),
            "fenced_at": None if self.dry_run else _iso(self.fenced_wall),
            "resumed_at": None if self.dry_run else _iso(self.fenced_wall + self.pause),
            "fence_lsn": None if self.dry_run else str(self.fence_lsn),
            "sequences": self.sequences,
            "notes": self.notes,
            "verify": None if self.verify is None else _verify_json(self.verify),
        }


def _iso(seconds: float) -> str:
    """A ``time.time()`` value as ISO 8601 in UTC, to the microsecond."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds")


def _verify_json(report: Any) -> Any:
    from pgferry.verify.report import to_dict

    return to_dict(report)


@dataclass(frozen=True)
class Sides:
    """Which subscription is the forward one now, and where each side is."""

    #: The subscriber database holding the forward subscription (becomes the primary).
    new_dsn: str
    forward: str
    #: The old primary's database (the forward subscription's publisher).
    old_dsn: str
    reverse: str
    #: How the reverse subscription reaches the new primary.
    reverse_conninfo: str


def sides(plan: Plan) -> Sides:
    """Forward: ``-d`` holds NAME and the old primary NAME's publisher. Rollback:
    the reverse subscription (in NAME's publisher's database) is the forward one,
    and NAME becomes the reverse one again."""
    reverse_name = plan.reverse_name or reverse.default_name(plan.name)
    with connect.subscriber(plan.dsn) as local:
        sub = _subscription(local, plan.name)
    if not plan.rollback:
        if not (plan.reverse_conninfo or plan.dsn):
            raise InterfaceError(
                "the reverse subscription needs a conninfo of the new primary",
                hint="give -d (or --reverse-conninfo): it is stored in the old primary's catalog",
            )
        return Sides(
            plan.dsn, plan.name, sub.conninfo, reverse_name, plan.reverse_conninfo or plan.dsn
        )
    return Sides(sub.conninfo, reverse_name, plan.dsn, plan.name, sub.conninfo)


def _subscription(conn: Conn, name: str) -> Subscription:
    if current_version(conn) == 0:
        raise SubscriptionNotFound(
            f"subscription {shown(name)} does not exist (no pgferry catalog in this database)",
            hint="-d takes the database of the subscription (the new primary)",
        )
    ensure_catalog(conn)
    return store.get_subscription(conn, name)


def _open(dsn: str, side: str) -> Conn:
    if side == "old":
        conn = connect.publisher(dsn, application_name=APPLICATION_NAME)
    else:
        conn = connect.open_connection(dsn, side="subscriber", application_name=APPLICATION_NAME)
    conn.execute("SET default_transaction_read_only = off")
    return conn


def _open_old(sub: Subscription) -> Conn:
    """The old primary (``sub``'s publisher); an error naming the subscription."""
    try:
        return _open(sub.conninfo, "old")
    except PgferryError as exc:
        raise PreflightFailed(
            f"subscription {shown(sub.name)}: the old primary: {exc.message}", hint=exc.hint
        ) from None


def _one(conn: Conn, query: str) -> str:
    row = conn.execute(query.encode()).fetchone()
    assert row is not None
    return str(row[0])


# -- the run --------------------------------------------------------------------------------


class _Clock:
    def __init__(self, report: Report) -> None:
        self.report = report

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            seconds = time.monotonic() - started
            self.report.phases.append(Phase(name, seconds))
            logger.info("switchover phase %s: %.1f ms", name, seconds * 1000)


def _bounded(name: str, limit: float, started: float) -> None:
    spent = time.monotonic() - started
    if spent > limit:
        raise SwitchoverFailed(
            f"the {name} phase took {spent:.3f} s, more than its {limit:g} s",
            hint="see `pgferry -v switchover` for each step; --phase-timeout and"
            " --fence-timeout set the bounds",
        )


class _Snapshots:
    """``--verify``: a snapshot exported on each side inside the fence (both stand
    at the fence's position then), compared once writes resumed."""

    def __init__(self, new_dsn: str, old_dsn: str) -> None:
        self.new = _open(new_dsn, "new")
        self.old = _open(old_dsn, "old")
        self.names: tuple[str, str] | None = None

    def export(self) -> None:
        names = []
        for conn in (self.old, self.new):
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            names.append(_one(conn, "SELECT pg_catalog.pg_export_snapshot()"))
        self.names = (names[0], names[1])

    def compare(self, new_dsn: str, name: str, lsn: Lsn) -> Any:
        from pgferry.verify import compare_snapshots

        assert self.names is not None
        return compare_snapshots(new_dsn, name, self.names[0], self.names[1], lsn=lsn)

    def close(self) -> None:
        for conn in (self.old, self.new):
            conn.close()


def make_fence(plan: Plan, old: Conn, old_dsn: str) -> Fence:
    if plan.bouncer is None:
        return DatabaseFence(old, old_dsn)
    database = plan.bouncer.database or str(old.info.dbname)
    return BouncerFence(plan.bouncer.admin, database, plan.bouncer.ini)


def switchover(plan: Plan) -> Report:
    """Run the switchover (or its preflight with ``plan.dry_run``)."""
    where = sides(plan)
    report = Report(
        where.forward, where.reverse, "rollback" if plan.rollback else "forward",
        dry_run=plan.dry_run,
    )  # fmt: skip
    clock = _Clock(report)
    new = _open(where.new_dsn, "new")
    old: Conn | None = None
    old_catalog: Conn | None = None
    fence: Fence | None = None
    try:
        with clock.phase("preflight"):
            started = time.monotonic()
            sub = _subscription(new, where.forward)
            # (First: a worker that cannot reach it is not the cause to name.)
            old = _open_old(sub)
            check_subscription(new, sub)
            check_transactions(old, plan.max_transaction_age)
            check_prepared(old)
            if plan.bouncer is None:
                check_read_only_overrides(old)
            check_lag(new, old, sub, plan.max_lag, plan.phase_timeout / 2)
            check_publications(old, sub)
            check_launcher(old, where.old_dsn)
            fence = make_fence(plan, old, sub.conninfo)
            if not plan.dry_run:
                # (The watchdog's process starts while the rest is checked.)
                fence.start()
            if plan.schema_check:
                check_schema(where.new_dsn, where.forward)
            # Found once: inside the fence the final sync only reads and sets values.
            sequences = prepare_sync(new, where.forward, publisher=old)
            check_sequences(sequences.run(new, old))
            _bounded("preflight", plan.phase_timeout, started)
        if plan.dry_run:
            return report
        state = reverse.Switched(sub, where.reverse)
        # Opened before the fence: the fence ends other sessions, not pgferry's.
        old_catalog = _open(where.old_dsn, "old")
        with clock.phase("prepare"):
            started = time.monotonic()
            prepared = reverse.prepare(
                new, sub, where.old_dsn, where.reverse, where.reverse_conninfo, plan.phase_timeout
            )
            if prepared.created:
                report.notes.append(f"created reverse subscription {shown(where.reverse)}")
            logger.info("reverse replication prepared (%.1f ms)", _ms(started))
            _standby(plan, where, new, old_catalog, state, started)
            try:
                # (The watchdog started with the preflight: ready by now, or soon.)
                fence.prepare()
                logger.info("fence prepared (%.1f ms)", _ms(started))
                _bounded("prepare", plan.phase_timeout, started)
            except BaseException:
                _undo_quietly(where, new, old_catalog, state)
                raise
        try:
            snapshots = _Snapshots(where.new_dsn, sub.conninfo) if plan.verify else None
        except BaseException:
            _undo_quietly(where, new, old_catalog, state)
            raise
        try:
            _cutover(
                plan, where, sub, new, old, old_catalog, state, fence, clock, report, snapshots,
                sequences,
            )  # fmt: skip
            if snapshots is not None:
                with clock.phase("verify"):
                    report.verify = snapshots.compare(where.new_dsn, sub.name, report.fence_lsn)
        finally:
            if snapshots is not None:
                snapshots.close()
        return report
    finally:
        if fence is not None:
            fence.close()
        if old_catalog is not None:
            old_catalog.close()
        if old is not None:
            old.close()
        new.close()


def _left(plan: Plan, fenced_at: float) -> float:
    """Seconds left of the fence's bound (at least a moment, to look once more)."""
    return max(plan.fence_timeout - (time.monotonic() - fenced_at), 0.01)


def _ms(since: float) -> float:
    return (time.monotonic() - since) * 1000


def _lease(plan: Plan) -> float:
    """Seconds the reverse subscription's standby hold lasts: past every bound the
    cutover has (it is renewed just before the fence)."""
    return plan.phase_timeout + plan.fence_timeout + plan.redirect_timeout


def _standby(
    plan: Plan,
    where: Sides,
    new: Conn,
    old_catalog: Conn,
    state: reverse.Switched,
    started: float,
) -> None:
    """The reverse apply worker started and held before the fence (see
    :func:`pgferry.switchover.reverse.standby`); disabled again on failure."""
    try:
        remaining = plan.phase_timeout - (time.monotonic() - started)
        reverse.standby(old_catalog, state, _lease(plan), max(remaining, 0.01))
    except BaseException:
        _undo_quietly(where, new, old_catalog, state)
        raise


def _undo_quietly(where: Sides, new: Conn, old_catalog: Conn, state: reverse.Switched) -> None:
    """The reverse subscription disabled again after a failure before the fence
    (logged if even that fails: the failure itself is what the user is told)."""
    try:
        _undo(where, new, old_catalog, state)
    except (PgferryError, psycopg.Error) as exc:
        logger.error("could not disable the reverse subscription again: %s", exc)


def _cutover(
    plan: Plan,
    where: Sides,
    sub: Subscription,
    new: Conn,
    old: Conn,
    old_catalog: Conn,
    state: reverse.Switched,
    fence: Fence,
    clock: _Clock,
    report: Report,
    snapshots: _Snapshots | None,
    sequences: PreparedSync,
) -> None:
    """Fence, drain, sequences, reverse on, redirect, unfence; undone on failure."""
    assert sub.slot_name is not None
    redirected = False
    redirecting: concurrent.futures.Future[None] | None = None
    stopping: concurrent.futures.Future[None] | None = None
    fenced_at = time.monotonic()
    resumed = False
    stack = ExitStack()
    try:
        # The final sequence sync runs during the drain, on sessions of its own: once
        # the fence holds, the old primary's sequences no longer move.
        seq_new = _open(where.new_dsn, "new")
        stack.callback(seq_new.close)
        seq_old = _open(sub.conninfo, "old")
        stack.callback(seq_old.close)
        pool = ThreadPoolExecutor(1, thread_name_prefix="pgferry-sequences")
        syncs: list[concurrent.futures.Future[SyncReport]] = []
        stack.callback(_stop_sync, pool, syncs, seq_new, seq_old)
        # The forward subscription is switched off on a session of its own, while
        # the sequences are checked.
        forward_new = _open(where.new_dsn, "new")
        stack.callback(forward_new.close)
        early = ThreadPoolExecutor(2, thread_name_prefix="pgferry-overlap")
        stack.callback(early.shutdown, wait=False)
        target = (plan.bouncer.target if plan.bouncer else None) or where.new_dsn
        reverse.renew(old_catalog, state, _lease(plan))
        with clock.phase("fence"):
            fenced_at = report.fenced_at = time.monotonic()
            report.fenced_wall = time.time()
            fence.take(plan.fence_timeout)
        with clock.phase("drain"):
            syncing = pool.submit(sequences.run, seq_new, seq_old)
            syncs.append(syncing)
            # PgBouncer takes the new target while the drain runs: the clients
            # stay paused until RESUME, so only RESUME waits for the drain.
            redirected = True
            redirecting = early.submit(fence.redirect, target, plan.redirect_timeout)
            report.fence_lsn = drain.mark(old)
            state.forward_hold = drain.hold_at(new, sub.name, report.fence_lsn, _lease(plan))
            drain.wait_held(
                new,
                old,
                sub.name,
                sub.slot_name,
                state.forward_hold,
                report.fence_lsn,
                _left(plan, fenced_at),
            )
            # Held at the fence's position, the forward worker applies nothing
            # more: it is switched off here and waited for after RESUME.
            stopping = early.submit(reverse.switch_forward, forward_new, state)
        with clock.phase("sequences"):
            try:
                synced = syncing.result(timeout=_left(plan, fenced_at))
            except concurrent.futures.TimeoutError:
                raise SwitchoverFailed(
                    "the final sequence sync did not end within the fence's"
                    f" {plan.fence_timeout:g} s",
                    hint="see pg_stat_activity on both sides; --fence-timeout sets the bound",
                ) from None
            check_sequences(synced)
            report.sequences = len(synced.sequences)
        if snapshots is not None:
            with clock.phase("snapshots"):
                snapshots.export()
        with clock.phase("reverse"):
            switched = "the forward subscription was not switched off"
            if isinstance(fence, DatabaseFence):
                # The reverse worker's sessions must not start read-only: the
                # fence goes once the forward subscription is switched off.
                _result(stopping, _left(plan, fenced_at), switched)
                fence.release()
            # Meanwhile the forward worker, held at the fence's position,
            # applies nothing: its subscription's switch may still be committing.
            reverse.switch_reverse(old_catalog, state, margin=RELEASE_MARGIN)
            _result(stopping, _left(plan, fenced_at), switched)
            _bounded("reverse", plan.fence_timeout, fenced_at)
        with clock.phase("redirect"):
            if not redirecting.done():
                # The redirect's own bound, and the watchdog kept from resuming during it.
                fence.hold(plan.redirect_timeout)
            _result(redirecting, plan.redirect_timeout, "PgBouncer was not repointed")
            fence.release()
        report.pause = time.monotonic() - fenced_at
        resumed = True
    except BaseException as exc:
        # What runs beside must not land after the put-back (an ini rewrite, the
        # forward subscription's switch).
        running = [f for f in (redirecting, stopping) if f is not None]
        concurrent.futures.wait(running, timeout=plan.redirect_timeout)
        left = _put_back(fence, where, new, old_catalog, state, redirected)
        if left:
            text = exc.message if isinstance(exc, PgferryError) else " ".join(str(exc).split())
            raise SwitchoverFailed(
                f"switchover of {shown(sub.name)} failed ({text}), and putting the old primary"
                f" back failed too: {left[0].message}",
                hint=left[0].hint,
            ) from None
        if isinstance(exc, SwitchoverFailed) or not isinstance(exc, PgferryError | psycopg.Error):
            raise
        text = exc.message if isinstance(exc, PgferryError) else " ".join(str(exc).split())
        hint = exc.hint if isinstance(exc, PgferryError) else None
        raise SwitchoverFailed(
            f"switchover of {shown(sub.name)} failed, the old primary is in service again: {text}",
            hint=hint,
        ) from None
    finally:
        stack.close()
    if resumed:
        with clock.phase("forward"):
            _forward_gone(plan, new, old, state, report)


#: Seconds the forward subscription's hold lasts when its worker did not stop
#: after the switchover (it stays held until someone looks).
KEEP_HELD = 24 * 3600.0


def _forward_gone(
    plan: Plan, new: Conn, old: Conn, state: reverse.Switched, report: Report
) -> None:
    """After RESUME: wait (``--phase-timeout``) for the forward apply worker, held
    at the fence's position, to be gone, then release its hold. Still running,
    it stays held (for :data:`KEEP_HELD` seconds, or until the next switchover of
    the subscription replaces the hold), and the report says so. The switchover
    is done either way: an error here (a lost connection) is a note too."""
    token = state.forward_hold
    assert token is not None
    name = state.forward.name
    try:
        reverse.wait_stopped(new, old, state, plan.phase_timeout)
        drain.release(new, name, token)
        state.forward_hold = None
    except reverse.ForwardStillRunning as exc:
        held = f"it stays held at {report.fence_lsn} (it applies nothing more)"
        _note(report, f"{exc.message}: {held}; {exc.hint}")
        try:
            catalog_hold.renew(new, name, token, KEEP_HELD)
        except psycopg.Error as failed:
            lease = f"it ends with its lease, {_lease(plan):g} s after the fence"
            _note(report, f"its hold could not be renewed ({_text(failed)}): {lease}")
    except (PgferryError, psycopg.Error) as exc:
        what = f"could not see the forward apply worker of {shown(name)} gone ({_text(exc)})"
        lease = f"its hold ends with its lease, {_lease(plan):g} s after the fence"
        _note(report, f"{what}: it is disabled and held at {report.fence_lsn}; {lease}")


def _note(report: Report, text: str) -> None:
    logger.warning("%s", text)
    report.notes.append(text)


def _text(exc: BaseException) -> str:
    return exc.message if isinstance(exc, PgferryError) else " ".join(str(exc).split())


def _result(future: concurrent.futures.Future[None], timeout: float, what: str) -> None:
    """``future``'s outcome within ``timeout`` seconds (its own error, or a
    :class:`SwitchoverFailed` saying ``what`` in time)."""
    try:
        future.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        raise SwitchoverFailed(
            f"{what} within {timeout:g} s",
            hint="see `pgferry -v switchover`'s log; --fence-timeout and --redirect-timeout"
            " set the bounds",
        ) from None


#: Seconds a final sequence sync still running after a failure is waited for
#: (its queries cancelled) before its sessions are closed.
SYNC_STOP = 2.0


def _stop_sync(
    pool: ThreadPoolExecutor, syncs: list[concurrent.futures.Future[SyncReport]], *conns: Conn
) -> None:
    """End the final sequence sync before its sessions are closed: one still
    running (the switchover failed) has its queries cancelled and is waited for."""
    pool.shutdown(wait=False, cancel_futures=True)
    if all(f.done() for f in syncs):
        return
    for conn in conns:
        with contextlib.suppress(psycopg.Error):
            conn.cancel()
    concurrent.futures.wait(syncs, timeout=SYNC_STOP)


def _undo(where: Sides, new: Conn, old_catalog: Conn | None, state: reverse.Switched) -> None:
    """:func:`pgferry.switchover.reverse.undo`, again on new sessions if one of
    those it was given broke (ended by an administrator, a restart)."""
    try:
        reverse.undo(new, old_catalog, state)
        return
    except psycopg.OperationalError as exc:
        if not (new.closed or (old_catalog is not None and old_catalog.closed)):
            raise
        logger.warning("putting the subscriptions back from new sessions (%s)", exc)
    with (
        _open(where.new_dsn, "new") as again_new,
        _open(where.old_dsn, "old") as again_old,
    ):
        reverse.undo(again_new, again_old, state)


def _put_back(
    fence: Fence,
    where: Sides,
    new: Conn,
    old_catalog: Conn | None,
    state: reverse.Switched,
    redirected: bool,
) -> list[PgferryError]:
    """After a failure before the clients were redirected: the old primary in
    service. What could not be put back (the fence still holding first)."""
    left: list[PgferryError] = []
    try:
        _undo(where, new, old_catalog, state)
    except (PgferryError, psycopg.Error) as exc:
        logger.error("could not put the subscriptions back: %s", exc)
        left.append(
            PgferryError(
                f"the subscriptions could not be put back ({' '.join(str(exc).split())})",
                hint=f"enable {shown(state.forward.name)} and disable {shown(state.reverse)}"
                " again (pgferry subscription alter)",
            )
        )
    if redirected:
        try:
            fence.unredirect()
        except (PgferryError, psycopg.Error, OSError) as exc:
            logger.error("could not point PgBouncer back at the old primary: %s", exc)
            left.append(
                PgferryError(
                    f"PgBouncer could not be pointed back at the old primary ({exc})",
                    hint="restore the database's line of PgBouncer's ini and RELOAD",
                )
            )
    try:
        fence.release()
    except (PgferryError, psycopg.Error) as exc:
        logger.error("could not release the fence: %s", exc)
        if isinstance(exc, PgferryError):
            left.insert(0, exc)
        else:
            left.insert(0, PgferryError(f"the fence could not be released ({exc})"))
    return left
