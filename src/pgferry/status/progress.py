"""How ``subscription wait`` shows its progress (:class:`WaitDisplay`), on stderr
so that stdout keeps the one result line.

* On a terminal: a live region (rich ``Live``, removed at the end) with one line
  per sync worker, a progress bar for each table being copied (rows or bytes done
  of the estimate, rate, ETA), and a line with the tables ready and how far the
  applied position is behind the target.
* Otherwise: plain lines, one per change of what there is to say, and at most
  every :data:`PLAIN_EVERY` seconds while only the numbers move; each line says
  it all (``copying public.big: 34% [####----] 512,000 of ~1,500,000 rows, ...``).
"""

from __future__ import annotations

import time
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.text import Text

from pgferry.sqltext import qualified
from pgferry.status.render import copy_text, sync_text, wrap
from pgferry.status.wait import WaitProgress

#: Seconds between two plain lines that differ in their numbers only.
PLAIN_EVERY = 5.0


def progress_lines(progress: WaitProgress) -> list[str]:
    """What to say about one poll: each sync worker, then the summary."""
    lines = []
    for worker in progress.sync_workers:
        name = qualified(worker.schema, worker.name)
        if worker.copy is not None:
            lines.append(f"copying {name}: {copy_text(worker.copy)}")
        else:
            lines.append(f"sync {name}: {sync_text(worker)}")
    ready = progress.tables - progress.not_ready
    summary = f"{ready} of {progress.tables} tables ready"
    if progress.applied_lsn is not None:
        behind = max(0, progress.target_lsn - progress.applied_lsn)
        summary += (
            f", applied {progress.applied_lsn}, {behind:,} bytes behind {progress.target_lsn}"
        )
    if progress.worker != "running":
        summary += f", apply worker {progress.worker}"
    lines.append(f"waiting: {summary} ({progress.seconds:.0f} s)")
    return lines


def _shape(lines: list[str]) -> list[str]:
    """The lines without their numbers: what has changed beyond progress."""
    return [line.split(":", 1)[0] for line in lines]


class WaitDisplay:
    """``on_progress`` for :func:`pgferry.status.wait.wait_ready`; :meth:`close`
    when the wait ends."""

    def __init__(self, out: TextIO, *, terminal: bool) -> None:
        self.out = out
        self._live: Live | None = None
        if terminal:
            self._console = Console(file=out)
            self._live = Live(console=self._console, auto_refresh=False, transient=True)
            self._live.start()
        self._last: list[str] = []
        self._last_at = 0.0

    def __call__(self, progress: WaitProgress) -> None:
        lines = progress_lines(progress)
        if self._live is not None:
            width = self._console.width
            wrapped = [part for line in lines for part in wrap(line, width, "", "    ")]
            self._live.update(Text("\n".join(wrapped)), refresh=True)
            return
        now = time.monotonic()
        if _shape(lines) == _shape(self._last) and now - self._last_at < PLAIN_EVERY:
            return
        if not lines[:-1] and not self._last and progress.seconds < PLAIN_EVERY:
            return  # a short wait with no copy says nothing
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()
        self._last, self._last_at = lines, now

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
