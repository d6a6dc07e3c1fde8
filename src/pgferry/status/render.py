"""The status report for people (:func:`render_text`) and for scripts
(:func:`to_json`, the keys documented in :mod:`pgferry.status.report`).

The text is one block per subscription, a ``key: value`` line each, wrapped at
spaces only to the given width (80 columns when not a terminal), so that an LSN,
a name or a number is never split, and it reads the same piped or narrow.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rich.text import Text

from pgferry import logs
from pgferry.hints import alter_command
from pgferry.protocol.lsn import Lsn
from pgferry.sqltext import printable, qualified
from pgferry.status.activity import CopyProgress, RetryStatus, SyncWorkerStatus
from pgferry.status.report import PublisherStatus, SubscriptionStatus, WorkerStatus

#: Not-ready tables listed by name in the text; the rest are counted.
SHOWN_TABLES = 5
#: The text's width when not given (and when not on a terminal).
WIDTH = 80


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
        "spool_bytes": worker.spool_bytes,
        "retry": _retry_json(worker.retry),
    }


def _retry_json(retry: RetryStatus | None) -> dict[str, Any] | None:
    if retry is None:
        return None
    return {
        "attempt": retry.attempt,
        "next_in_seconds": retry.next_in,
        "exit_code": retry.exit_code,
        "failed_at": _time(retry.failed_at),
    }


def _copy_json(copy: CopyProgress | None) -> dict[str, Any] | None:
    if copy is None:
        return None
    return {
        "rows": copy.rows,
        "bytes": copy.bytes,
        "seconds": copy.seconds,
        "total_rows": copy.total_rows,
        "total_bytes": copy.total_bytes,
        "fraction": copy.fraction,
        "rows_per_second": copy.rows_per_second,
        "bytes_per_second": copy.bytes_per_second,
        "eta_seconds": copy.eta_seconds,
    }


def _sync_json(worker: SyncWorkerStatus) -> dict[str, Any]:
    return {
        "schema": worker.schema,
        "name": worker.name,
        "state": worker.state,
        "phase": worker.phase,
        "pid": worker.pid,
        "since": _time(worker.since),
        "retry": _retry_json(worker.retry),
        "copy": _copy_json(worker.copy),
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
        "last_error_lsn": _text(status.last_error_lsn),
        "last_error_hint": status.last_error_hint,
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
        "sync_workers": [_sync_json(w) for w in status.sync_workers],
        "sequences": _sequences_json(status),
        "publisher": _publisher_json(status.publisher),
    }


def to_json(statuses: Sequence[SubscriptionStatus]) -> str:
    """The ``status --json`` document: an array, one object per subscription."""
    return json.dumps([to_document(s) for s in statuses], indent=2)


# -- people -------------------------------------------------------------------------------


def size(nbytes: float) -> str:
    """Bytes as pg_size_pretty shows them (1024-based, whole units)."""
    value = float(nbytes)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if abs(value) < 10 * 1024 or unit == "TB":
            return f"{value:.0f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def seconds(value: float) -> str:
    """A duration: ``4.2 s``, ``3 min 5 s``, ``2 h 10 min``."""
    if value < 60:
        return f"{value:.1f} s"
    minutes, secs = divmod(int(value), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    return f"{minutes // 60} h {minutes % 60} min"


def retry_text(retry: RetryStatus) -> str:
    """``retrying (attempt N, next in S s)``, or ``starting`` once it is due."""
    if retry.next_in > 0:
        return f"retrying (attempt {retry.attempt}, next in {seconds(retry.next_in)})"
    return f"retrying (attempt {retry.attempt}, starting)"


def _worker_text(status: SubscriptionStatus) -> str:
    worker = status.worker
    if worker.state == "retrying" and worker.retry is not None:
        return retry_text(worker.retry)
    if worker.state == "stopped":
        return "stopped" if status.enabled else "stopped (subscription disabled)"
    if worker.state == "stale":
        age = worker.seconds_since_report
        since = "" if age is None else f", last report {seconds(age)} ago"
        return f"stale (pid {worker.pid}{since})"
    attempt = "" if worker.retry is None else f", after {worker.retry.attempt} failures"
    return f"running (pid {worker.pid}{attempt})"


def _lag_text(status: SubscriptionStatus) -> str:
    if status.lag_bytes is None:
        return (
            "unknown ("
            + ("publisher not reached" if not status.publisher.reachable else "no slot")
            + ")"
        )
    text = size(status.lag_bytes)
    if status.lag_seconds is not None:
        text += f", {seconds(status.lag_seconds)}"
    source = status.lag_seconds_source
    if source == "caught_up":
        text += " (caught up)"
    elif source == "tables_syncing":
        text += " streamed; not caught up: tables are still being synchronised"
    elif source == "since_last_report":
        text += " (since the worker's last report)"
    if status.not_ready and source != "tables_syncing":
        text += "; tables are still being synchronised"
    return text


def _tables_text(status: SubscriptionStatus) -> list[tuple[str, str]]:
    if not status.tables:
        return [("tables", "none")]
    summary = " ".join(f"{s}:{n}" for s, n in status.table_states.items())
    not_ready = status.not_ready
    if not not_ready:
        return [("tables", f"{len(status.tables)}, all ready ({summary})")]
    ready = len(status.tables) - len(not_ready)
    names = [f"{qualified(t.schema, t.name)} ({t.state})" for t in not_ready]
    shown = names[:SHOWN_TABLES]
    more = len(names) - len(shown)
    return [
        ("tables", f"{len(status.tables)}, {ready} ready ({summary})"),
        ("not ready", ", ".join(shown) + (f" and {more} more" if more else "")),
    ]


def bar(fraction: float, cells: int = 20) -> str:
    """``[#######-------------]``."""
    done = round(max(0.0, min(1.0, fraction)) * cells)
    return "[" + "#" * done + "-" * (cells - done) + "]"


def copy_text(copy: CopyProgress) -> str:
    """``34% [####----] 512,000 of ~1,500,000 rows, 48 MB, 120,000 rows/s, ETA 8.0 s``."""
    parts = []
    fraction = copy.fraction
    if fraction is not None:
        parts.append(f"{fraction:.0%} {bar(fraction)}")
    rows = f"{copy.rows:,}"
    if copy.total_rows:
        rows += f" of ~{copy.total_rows:,}"
    parts.append(f"{rows} rows,")
    nbytes = size(copy.bytes)
    if copy.total_bytes and not copy.total_rows:
        nbytes += f" of ~{size(copy.total_bytes)}"
    parts.append(nbytes + ",")
    rate = copy.rows_per_second
    parts.append("rate -" if rate is None else f"{rate:,.0f} rows/s")
    eta = copy.eta_seconds
    if eta is not None:
        parts[-1] += ","
        parts.append(f"ETA {seconds(eta)}")
    return " ".join(parts)


def sync_text(worker: SyncWorkerStatus) -> str:
    """A sync worker: its phase, pid and age (or its retry)."""
    if worker.retry is not None and worker.pid is None:
        return retry_text(worker.retry)
    text = worker.phase
    if worker.phase == "catching up" and worker.catchup_lsn is not None:
        text += f" to {worker.catchup_lsn}"
    if worker.pid is not None:
        text += f", pid {worker.pid}"
    if worker.seconds is not None:
        text += f", for {seconds(worker.seconds)}"
    return text


def _sequences_text(status: SubscriptionStatus) -> tuple[str, str] | None:
    """``sequences: N, largest drift D, synced S ago`` (none: no sequence synced)."""
    oldest = status.oldest_sequence_sync
    if oldest is None:
        return None
    drift = status.largest_sequence_drift
    return (
        "sequences",
        f"{len(status.sequences)}, largest drift {'-' if drift is None else drift},"
        f" synced {seconds(oldest.seconds_since_sync)} ago",
    )


def _slot_lines(status: SubscriptionStatus) -> list[tuple[str, str]]:
    publisher = status.publisher
    if not publisher.reachable:
        return [
            (
                "publisher",
                f"publisher unreachable ({printable(publisher.conninfo)}):"
                f" {printable(publisher.error or '')}",
            )
        ]
    slot = publisher.slot
    if slot is None:
        return [("slot", "none (slot_name = NONE)")]
    if not slot.exists:
        return [("slot", f"{printable(slot.name)} does not exist on the publisher")]
    lines = [
        (
            "slot",
            f"{printable(slot.name)}, {'active' if slot.active else 'inactive'},"
            f" wal_status {slot.wal_status or '-'}"
            + (
                ""
                if slot.retained_wal_bytes is None
                else f", retains {size(slot.retained_wal_bytes)} of WAL"
            ),
        ),
        (
            "slot positions",
            f"restart {_text(slot.restart_lsn) or '-'},"
            f" confirmed {_text(slot.confirmed_flush_lsn) or '-'}",
        ),
    ]
    return lines


def _errors_lines(status: SubscriptionStatus) -> list[tuple[str, str]]:
    stats = status.stats
    conflicts = [
        f"{key.removeprefix('confl_')} {stats[key]}"
        for key in stats
        if key.startswith("confl_") and stats[key]
    ]
    lines = [
        (
            "errors",
            f"apply {stats['apply_error_count']}, sync {stats['sync_error_count']};"
            f" conflicts: {', '.join(conflicts) if conflicts else 'none'}",
        )
    ]
    if status.last_error is not None:
        when = _time(status.last_error_time) or "?"
        lines.append(("last error", f"{printable(status.last_error)} ({when})"))
    hint = status.last_error_hint
    if hint is None and not status.enabled:
        hint = alter_command(status.name, "--enable")
    elif hint is None and status.worker.state == "stopped":
        hint = "is pgferry run running for this database?"
    if hint is not None:
        # Naming the executable that was started, as the command line's hints do.
        lines.append(("hint", logs.rewrite_hint(printable(hint))))
    return lines


def subscription_lines(
    status: SubscriptionStatus, *, all_tables: bool = False
) -> list[tuple[str, str]]:
    """(key, value) lines of one subscription, after its heading."""
    worker = status.worker
    applied = worker.applied_lsn
    slot = status.publisher.slot
    if applied is None and slot is not None:
        applied = slot.confirmed_flush_lsn
    lines: list[tuple[str, str]] = [
        ("worker", _worker_text(status)),
        ("received", _text(worker.received_lsn) or "-"),
        ("applied", _text(applied) or "-"),
        ("lag", _lag_text(status)),
        *_tables_text(status),
    ]
    for sync in status.sync_workers:
        name = qualified(sync.schema, sync.name)
        lines.append((f"sync {name}", sync_text(sync)))
        if sync.copy is not None:
            lines.append((f"copy {name}", copy_text(sync.copy)))
    if all_tables:
        for table in status.tables:
            lines.append((f"table {qualified(table.schema, table.name)}", str(table.state)))
    sequences = _sequences_text(status)
    if sequences is not None:
        lines.append(sequences)
    lines += _slot_lines(status)
    lines += _errors_lines(status)
    return lines


def heading(status: SubscriptionStatus) -> str:
    pubs = ", ".join(printable(p) for p in status.publications)
    state = "enabled" if status.enabled else "disabled"
    return f"subscription {printable(status.name)} ({state}; publications {pubs})"


def wrap(text: str, width: int, indent: str = "  ", more: str = "      ") -> list[str]:
    """``text`` in lines of ``width``: broken after a comma or semicolon where it
    can, else at a space; never inside a word, so an LSN, a name or a number
    stays whole (one longer than the line overflows it)."""
    width = max(width, 20)
    lines: list[str] = []
    line = indent
    for chunk in re.split(r"(?<=[,;]) ", text):
        candidate = indent + chunk if line == indent else f"{line} {chunk}"
        if len(candidate) <= width:
            line = candidate
            continue
        if line != indent:
            lines.append(line)
        parts = textwrap.wrap(
            chunk,
            width=width,
            initial_indent=more if lines else indent,
            subsequent_indent=more,
            break_long_words=False,
            break_on_hyphens=False,
        ) or [more]
        lines += parts[:-1]
        line = parts[-1]
    lines.append(line)
    return lines


def render_text(
    statuses: Sequence[SubscriptionStatus], width: int = WIDTH, *, all_tables: bool = False
) -> str:
    """One block per subscription (a heading, then ``key: value`` lines), blocks
    separated by a blank line; lines wrapped at spaces to ``width``."""
    blocks = []
    for status in statuses:
        lines = wrap(heading(status), width, "", "    ")
        for key, value in subscription_lines(status, all_tables=all_tables):
            lines += wrap(f"{key}: {value}", width)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def render_table(statuses: Sequence[SubscriptionStatus], width: int = WIDTH) -> Text:
    """:func:`render_text` as a rich renderable."""
    return Text(render_text(statuses, width))
