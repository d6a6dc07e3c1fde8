"""The status report for people (:func:`render_table`, a rich table) and for
scripts (:func:`to_json`, the keys documented in :mod:`pgferry.status.report`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rich.table import Table
from rich.text import Text

from pgferry.protocol.lsn import Lsn
from pgferry.sqltext import ident, printable
from pgferry.status.report import PublisherStatus, SubscriptionStatus, WorkerStatus

#: Not-ready tables listed by name in the human table; the rest are counted.
SHOWN_TABLES = 5


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def _text(lsn: Lsn | None) -> str | None:
    return None if lsn is None else str(lsn)


def _worker_json(worker: WorkerStatus) -> dict[str, Any]:
    return {
        "state": worker.state,
        "pid": worker.pid,
        "started_at": _time(worker.started_at),
        "received_lsn": _text(worker.received_lsn),
        "applied_lsn": _text(worker.applied_lsn),
        "last_msg_send_time": _time(worker.last_msg_send_time),
        "last_msg_receipt_time": _time(worker.last_msg_receipt_time),
        "latest_end_time": _time(worker.latest_end_time),
        "seconds_since_report": worker.seconds_since_report,
    }


def _publisher_json(publisher: PublisherStatus) -> dict[str, Any]:
    slot = publisher.slot
    return {
        "conninfo": publisher.conninfo,
        "reachable": publisher.reachable,
        "error": publisher.error,
        "wal_lsn": _text(publisher.wal_lsn),
        "slot": None
        if slot is None
        else {
            "name": slot.name,
            "exists": slot.exists,
            "active": slot.active,
            "active_pid": slot.active_pid,
            "restart_lsn": _text(slot.restart_lsn),
            "confirmed_flush_lsn": _text(slot.confirmed_flush_lsn),
            "retained_wal_bytes": slot.retained_wal_bytes,
            "wal_status": slot.wal_status,
            "flush_lag_seconds": slot.flush_lag_seconds,
        },
    }


def _sequences_json(status: SubscriptionStatus) -> dict[str, Any]:
    oldest = status.oldest_sequence_sync
    return {
        "total": len(status.sequences),
        "largest_drift": status.largest_sequence_drift,
        "oldest_sync": None if oldest is None else _time(oldest.synced_at),
        "items": [
            {
                "schema": s.schema,
                "name": s.name,
                "publisher_value": s.publisher_value,
                "subscriber_value": s.subscriber_value,
                "drift": s.drift,
                "synced_at": _time(s.synced_at),
            }
            for s in status.sequences
        ],
    }


def to_document(status: SubscriptionStatus) -> dict[str, Any]:
    """One subscription as the JSON object of ``status --json``."""
    return {
        "name": status.name,
        "enabled": status.enabled,
        "publications": list(status.publications),
        "slot_name": status.slot_name,
        "conninfo": status.conninfo,
        "worker": _worker_json(status.worker),
        "lag": {
            "bytes": status.lag_bytes,
            "seconds": status.lag_seconds,
            "seconds_source": status.lag_seconds_source,
        },
        "last_error": status.last_error,
        "last_error_time": _time(status.last_error_time),
        "stats": {**status.stats, "stats_reset": _time(status.stats_reset)},
        "tables": {
            "total": len(status.tables),
            "states": status.table_states,
            "not_ready": [
                {
                    "schema": t.schema,
                    "name": t.name,
                    "state": t.state,
                    "state_lsn": _text(t.state_lsn),
                }
                for t in status.not_ready
            ],
        },
        "sequences": _sequences_json(status),
        "publisher": _publisher_json(status.publisher),
    }


def to_json(statuses: Sequence[SubscriptionStatus]) -> str:
    """The ``status --json`` document: an array, one object per subscription."""
    return json.dumps([to_document(s) for s in statuses], indent=2)


# -- people -------------------------------------------------------------------------------


def size(nbytes: int) -> str:
    """Bytes as pg_size_pretty shows them (1024-based, whole units)."""
    value = float(nbytes)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if abs(value) < 10 * 1024 or unit == "TB":
            return f"{value:.0f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _seconds(value: float) -> str:
    if value < 60:
        return f"{value:.1f} s"
    minutes, seconds = divmod(int(value), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    return f"{minutes // 60} h {minutes % 60} min"


def _worker_cell(status: SubscriptionStatus) -> Text:
    worker = status.worker
    if worker.state == "stopped":
        return Text("stopped", style="yellow" if status.enabled else "")
    if worker.state == "stale":
        age = worker.seconds_since_report
        since = "" if age is None else f", last report {_seconds(age)} ago"
        return Text(f"stale (pid {worker.pid}{since})", style="red")
    return Text(f"running (pid {worker.pid})", style="green")


def _positions_cell(status: SubscriptionStatus) -> Text:
    worker = status.worker
    slot = status.publisher.slot
    applied = worker.applied_lsn
    if applied is None and slot is not None:
        applied = slot.confirmed_flush_lsn
    return Text(f"received {_text(worker.received_lsn) or '-'}\napplied  {_text(applied) or '-'}")


def _lag_cell(status: SubscriptionStatus) -> Text:
    if status.lag_bytes is None:
        return Text("?")
    text = size(status.lag_bytes)
    if status.lag_seconds is not None:
        text += f", {_seconds(status.lag_seconds)}"
    return Text(text, style="" if status.lag_bytes == 0 else "yellow")


def _tables_cell(status: SubscriptionStatus) -> Text:
    text = _tables_text(status)
    sequences = _sequences_line(status)
    if sequences is not None:
        text.append("\n")
        text.append_text(sequences)
    return text


def _tables_text(status: SubscriptionStatus) -> Text:
    if not status.tables:
        return Text("none")
    summary = " ".join(f"{s}:{n}" for s, n in status.table_states.items())
    not_ready = status.not_ready
    if not not_ready:
        return Text(f"{summary}\nall ready")
    names = [f"{ident(t.schema)}.{ident(t.name)} ({t.state})" for t in not_ready]
    shown = names[:SHOWN_TABLES]
    more = len(names) - len(shown)
    tail = f" and {more} more" if more else ""
    return Text(f"{summary}\nnot ready: {', '.join(shown)}{tail}", style="yellow")


def _sequences_line(status: SubscriptionStatus) -> Text | None:
    """``sequences: N, largest drift D, synced S ago`` (none: no sequence synced)."""
    oldest = status.oldest_sequence_sync
    if oldest is None:
        return None
    drift = status.largest_sequence_drift
    return Text(
        f"sequences: {len(status.sequences)},"
        f" largest drift {'-' if drift is None else drift},"
        f" synced {_seconds(oldest.seconds_since_sync)} ago",
        style="yellow" if drift is not None and drift > 0 else "",
    )


def _slot_cell(status: SubscriptionStatus) -> Text:
    publisher = status.publisher
    if not publisher.reachable:
        return Text(
            f"publisher unreachable ({printable(publisher.conninfo)}):"
            f" {printable(publisher.error or '')}",
            style="red",
        )
    slot = publisher.slot
    if slot is None:
        return Text("no slot (slot_name = NONE)")
    if not slot.exists:
        return Text(f"slot {printable(slot.name)} does not exist on the publisher", style="red")
    lines = [
        f"{printable(slot.name)}: {'active' if slot.active else 'inactive'},"
        f" wal_status {slot.wal_status or '-'}",
        f"restart {_text(slot.restart_lsn) or '-'},"
        f" confirmed {_text(slot.confirmed_flush_lsn) or '-'}",
    ]
    if slot.retained_wal_bytes is not None:
        lines.append(f"retains {size(slot.retained_wal_bytes)} of WAL")
    style = "" if slot.wal_status in (None, "reserved", "extended") else "red"
    return Text("\n".join(lines), style=style)


def _errors_cell(status: SubscriptionStatus) -> Text:
    stats = status.stats
    conflicts = [
        f"{key.removeprefix('confl_')} {stats[key]}"
        for key in stats
        if key.startswith("confl_") and stats[key]
    ]
    lines = [
        f"apply {stats['apply_error_count']}, sync {stats['sync_error_count']};"
        f" conflicts: {', '.join(conflicts) if conflicts else 'none'}"
    ]
    if status.last_error is not None:
        when = _time(status.last_error_time) or "?"
        lines.append(f"last: {printable(status.last_error)} ({when})")
    return Text("\n".join(lines), style="red" if status.last_error is not None else "")


def render_table(statuses: Sequence[SubscriptionStatus]) -> Table:
    """One row per subscription: worker, positions, lag, tables, slot, errors."""
    table = Table(show_lines=True)
    for title in ("Subscription", "Worker", "Positions", "Lag", "Tables", "Slot", "Errors"):
        table.add_column(title, overflow="fold")
    for status in statuses:
        table.add_row(
            Text(printable(status.name) + ("" if status.enabled else "\n(disabled)")),
            _worker_cell(status),
            _positions_cell(status),
            _lag_cell(status),
            _tables_cell(status),
            _slot_cell(status),
            _errors_cell(status),
        )
    return table
