"""What verify found: per table, and for the whole subscription; as text or JSON.

A key is listed as ``missing`` (on the publisher, not on the subscriber),
``extra`` (on the subscriber only) or ``different`` (on both, with other values);
each list holds at most the report's ``limit`` keys, the counts are exact. A key
one side holds more times than the other (a subscriber table without the
publisher's unique key) is listed once per copy: the copies that pair up with
the other side's as ``different``, the rest as ``missing`` or ``extra``. A
subscriber row with a NULL in a key column is ``extra`` (the NULL shown as
``NULL``, ``null`` in JSON). A table without a key lists whole rows (their record
text) as missing or extra, once per copy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pgferry.protocol.lsn import Lsn

from .plan import Key

KINDS = ("missing", "extra", "different")


@dataclass
class TableReport:
    table: str
    #: Rows read on the publisher and on the subscriber.
    rows_publisher: int = 0
    rows_subscriber: int = 0
    #: Key ranges hashed (bisections included).
    ranges: int = 0
    keyed: bool = True
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    keys: dict[str, list[Key]] = field(default_factory=lambda: {k: [] for k in KINDS})
    seconds: float = 0.0
    #: Keys (or row texts) fixed by ``--repair``, by kind.
    repaired: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))

    @property
    def differences(self) -> int:
        return sum(self.counts.values())

    @property
    def identical(self) -> bool:
        """No key differs, and both sides hold as many rows (every row is in
        some compared range, so the numbers differ only with a difference
        listed: a check that costs nothing)."""
        return self.differences == 0 and self.rows_publisher == self.rows_subscriber

    def add(self, kind: str, key: Key, limit: int) -> None:
        self.add_copies(kind, key, 1, limit)

    def add_copies(self, kind: str, key: Key, copies: int, limit: int) -> None:
        """``copies`` rows of one key: all counted, listed once each up to ``limit``."""
        self.counts[kind] += copies
        room = max(0, limit - len(self.keys[kind]))
        self.keys[kind].extend([key] * min(copies, room))


@dataclass
class VerifyReport:
    subscription: str
    #: The publisher LSN both snapshots stand at (None when the caller's snapshots
    #: came without one).
    lsn: Lsn | None
    tables: list[TableReport] = field(default_factory=list)
    seconds: float = 0.0
    #: Seconds the apply worker was held (verify's own consistent pair).
    held_seconds: float | None = None
    repaired: bool = False

    @property
    def identical(self) -> bool:
        return all(t.identical for t in self.tables)

    @property
    def differences(self) -> int:
        return sum(t.differences for t in self.tables)


def _key_text(key: Key) -> str:
    parts = ["NULL" if v is None else v for v in key]
    return parts[0] if len(parts) == 1 else "(" + ", ".join(parts) + ")"


def render_text(report: VerifyReport) -> list[str]:
    lines: list[str] = []
    at = f" at {report.lsn}" if report.lsn is not None else ""
    for t in report.tables:
        if t.identical:
            state = "identical"
        elif t.differences == 0:
            state = "rows differ in number"
        else:
            state = f"{t.differences} differences"
        lines.append(
            f"{t.table}: {state} ({t.rows_publisher} rows on the publisher,"
            f" {t.rows_subscriber} on the subscriber, {t.ranges} ranges, {t.seconds:.2f} s)"
        )
        for kind in KINDS:
            for key in t.keys[kind]:
                lines.append(f"  {kind} {_key_text(key)}")
            hidden = t.counts[kind] - len(t.keys[kind])
            if hidden > 0:
                lines.append(f"  ... {hidden} more {kind}")
        if report.repaired and t.differences:
            fixed = ", ".join(f"{t.repaired[k]} {k}" for k in KINDS if t.repaired[k])
            lines.append(f"  repaired: {fixed or 'nothing (already fixed by replication)'}")
    verdict = (
        "identical"
        if report.identical
        else f"{report.differences} differences"
        if report.differences
        else "rows differ in number"
    )
    lines.append(
        f"subscription {report.subscription}{at}: {len(report.tables)} tables, {verdict}"
        f" ({report.seconds:.2f} s)"
    )
    return lines


def to_dict(report: VerifyReport) -> dict[str, Any]:
    return {
        "subscription": report.subscription,
        "lsn": None if report.lsn is None else str(report.lsn),
        "identical": report.identical,
        "differences": report.differences,
        "seconds": round(report.seconds, 3),
        "held_seconds": None if report.held_seconds is None else round(report.held_seconds, 3),
        "repaired": report.repaired,
        "tables": [
            {
                "table": t.table,
                "keyed": t.keyed,
                "rows_publisher": t.rows_publisher,
                "rows_subscriber": t.rows_subscriber,
                "ranges": t.ranges,
                "seconds": round(t.seconds, 3),
                "counts": t.counts,
                "keys": {k: [list(key) for key in t.keys[k]] for k in KINDS},
                **({"repaired": t.repaired} if report.repaired else {}),
            }
            for t in report.tables
        ],
    }


def to_json(report: VerifyReport) -> str:
    return json.dumps(to_dict(report), indent=2)
