"""``pgferry status --watch`` and ``pgferry top``: the status again and again.

:func:`watch` collects the status of every subscription every ``interval``
seconds and shows it:

* on a terminal, in place (rich ``Live``), at the terminal's width, cut to its
  height;
* otherwise, one block after another (a heading line with the time, the text of
  :func:`pgferry.status.render.render_text` at 80 columns, a blank line), or with
  ``as_json`` one JSON array per line (JSON lines), flushed each time.

It ends after ``count`` views (None: never) or on Ctrl-C, quietly either way. A
subscriber that cannot be read is an error at the first view; later, the view
says so and the next round tries again (a restart of the subscriber does not end
the watch).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TextIO

import psycopg
from rich.console import Console
from rich.live import Live
from rich.text import Text

from pgferry.errors import PgferryError
from pgferry.sqltext import printable
from pgferry.status.render import WIDTH, render_text, to_document
from pgferry.status.report import SubscriptionStatus, collect

#: Seconds between two views unless told.
INTERVAL = 2.0


def _heading(interval: float, terminal: bool) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    stop = ", Ctrl-C to stop" if terminal else ""
    return f"pgferry status at {now} (every {interval:g} s{stop})"


def view(
    statuses: list[SubscriptionStatus] | str,
    interval: float,
    width: int,
    *,
    terminal: bool = False,
    all_tables: bool = False,
) -> str:
    """One view: the heading, then every subscription (or the error text)."""
    if isinstance(statuses, str):
        body = statuses
    elif not statuses:
        body = "no subscriptions"
    else:
        body = render_text(statuses, width, all_tables=all_tables)
    return f"{_heading(interval, terminal)}\n\n{body}"


def _reading(dsn: str, first: bool) -> list[SubscriptionStatus] | str:
    try:
        return collect(dsn)
    except (PgferryError, psycopg.Error) as exc:
        if first:
            raise
        message = exc.message if isinstance(exc, PgferryError) else str(exc)
        return f"cannot read the subscriber: {printable(' '.join(message.split()))}"


def watch(
    dsn: str,
    *,
    interval: float = INTERVAL,
    count: int | None = None,
    as_json: bool = False,
    all_tables: bool = False,
    out: TextIO,
    terminal: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Show the status every ``interval`` seconds (see the module docstring);
    the number of views shown."""
    shown = 0
    try:
        if terminal and not as_json:
            console = Console(file=out)
            with Live(console=console, auto_refresh=False, vertical_overflow="crop") as live:
                while count is None or shown < count:
                    if shown:
                        sleep(interval)
                    reading = _reading(dsn, shown == 0)
                    text = view(
                        reading, interval, console.width, terminal=True, all_tables=all_tables
                    )
                    live.update(Text(text), refresh=True)
                    shown += 1
            return shown
        while count is None or shown < count:
            if shown:
                sleep(interval)
            reading = _reading(dsn, shown == 0)
            if as_json:
                doc: object = (
                    {"error": reading}
                    if isinstance(reading, str)
                    else [to_document(s) for s in reading]
                )
                out.write(json.dumps(doc) + "\n")
            else:
                out.write(view(reading, interval, WIDTH, all_tables=all_tables) + "\n\n")
            out.flush()
            shown += 1
    except KeyboardInterrupt:
        pass
    return shown
