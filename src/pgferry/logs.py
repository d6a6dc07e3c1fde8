"""Log lines: one line per event, as text or JSON, at the level ``-v``/``-q`` ask for.

Contract: every record is one line on stderr. A message or an exception that
spans lines (a PostgreSQL error with DETAIL and HINT) is folded into one; a
traceback is shown only at DEBUG, and then as a block whose every line carries
the record's prefix (text) or as the ``traceback`` field (JSON). A record's hint
(the ``hint`` field, or the hint of the :class:`~pgferry.errors.PgferryError` it
logs) ends the same line.

* text: ``TIME pgferry[PID] LEVEL MESSAGE; hint: HINT``
* json: one object per line with ``time`` (UTC, ISO 8601), ``level``,
  ``logger``, ``message``, ``pid``, and when known the :data:`FIELDS`
  (``subscription``, ``worker``, ``table``, ``lsn``, ``hint``...) and, for an
  exception, ``error`` (its class) and at DEBUG ``traceback``.

A record gets fields from ``extra={...}`` and from :func:`bind` (what a worker
process is: its kind, subscription, table). :func:`configure` installs the one
handler (on the root logger, writing to whatever ``sys.stderr`` is at the time),
:func:`level_for` turns ``-v``/``-q`` counts into a level and
:func:`set_hint_rewriter` lets the command line name the executable it was
started as in hints (inherited by forked workers).
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from pgferry.errors import InterfaceError, PgferryError

#: The formats ``--log-format`` takes.
FORMATS = ("text", "json")
#: Fields a record may carry (``extra=``, :func:`bind`), in the order JSON shows them.
FIELDS = (
    "subscription",
    "worker",
    "table",
    "lsn",
    "attempt",
    "retry_in",
    "exit_status",
    "database",
    "subscriptions",
    "metrics",
    "hint",
)
#: From quietest to most verbose; ``-v`` moves one step right, ``-q`` one left.
LEVELS = (logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG)

_context: dict[str, Any] = {}
_rewrite_hint: Callable[[str], str] = str


def level_for(verbose: int, quiet: int, *, default: int = logging.WARNING) -> int:
    """The level for ``-v`` x ``verbose`` and ``-q`` x ``quiet``, counted from
    WARNING; ``default`` is where no flag leaves it, and is the least that ``-v``
    gives (so ``-vv`` is DEBUG whatever the default)."""
    base = LEVELS.index(default)
    step = max(verbose, base - 1) - quiet
    return LEVELS[min(max(step + 1, 0), len(LEVELS) - 1)]


def parse_level(text: str, source: str) -> int:
    """A level name (DEBUG, INFO, WARNING, ERROR) from ``source``."""
    name = text.strip().upper()
    level = logging.getLevelName(name)
    if not isinstance(level, int) or level not in LEVELS:
        raise InterfaceError(
            f"{source} must be DEBUG, INFO, WARNING or ERROR, not {text!r}",
            hint=f"set {source} to one of those, or leave it unset",
        )
    return level


def bind(**fields: object) -> None:
    """Fields every record of this process carries from now on (None: drop one)."""
    for key, value in fields.items():
        if value is None:
            _context.pop(key, None)
        else:
            _context[key] = value


def set_hint_rewriter(rewrite: Callable[[str], str]) -> None:
    """How hints are shown (the command line names its executable in them)."""
    global _rewrite_hint
    _rewrite_hint = rewrite


def rewrite_hint(hint: str) -> str:
    return _rewrite_hint(hint)


def fold(text: str) -> str:
    """``text`` on one line: its lines, stripped, joined by a space."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


class _Stderr(logging.StreamHandler[TextIO]):
    """Writes to the current ``sys.stderr`` (which tests and forks may replace)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


class Formatter(logging.Formatter):
    """One line per record, text or JSON (see the module docstring)."""

    def __init__(self, fmt: str = "text", *, tracebacks: bool = False) -> None:
        super().__init__()
        if fmt not in FORMATS:
            raise InterfaceError(f"unknown log format {fmt!r}", hint="use text or json")
        self.json = fmt == "json"
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        message = fold(record.getMessage())
        fields = _fields(record)
        error = record.exc_info[1] if record.exc_info else None
        trace = ""
        if error is not None:
            text = fold(str(error))
            if text and text not in message:
                message = f"{message}: {text}" if message else text
            if isinstance(error, PgferryError) and error.hint and "hint" not in fields:
                fields["hint"] = error.hint
            if self.tracebacks and record.exc_info is not None:
                trace = "".join(traceback.format_exception(*record.exc_info))
        if self.tracebacks and record.stack_info:
            trace += record.stack_info
        if "hint" in fields:
            fields["hint"] = _rewrite_hint(fold(str(fields["hint"])))
        if self.json:
            return self._json(record, message, fields, error, trace)
        prefix = f"{self.formatTime(record)} pgferry[{record.process}] {record.levelname}"
        line = f"{prefix} {message}"
        if "hint" in fields:
            line += f"; hint: {fields['hint']}"
        for extra in trace.rstrip("\n").splitlines() if trace else ():
            line += f"\n{prefix} | {extra}"
        return line

    def _json(
        self,
        record: logging.LogRecord,
        message: str,
        fields: dict[str, Any],
        error: BaseException | None,
        trace: str,
    ) -> str:
        when = datetime.fromtimestamp(record.created, UTC)
        out: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
            "pid": record.process,
        }
        out.update(fields)
        if error is not None:
            out["error"] = type(error).__name__
        if trace:
            out["traceback"] = trace
        return json.dumps(out, ensure_ascii=False, default=str)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    found = dict(_context)
    for name in FIELDS:
        value = record.__dict__.get(name)
        if value is not None:
            found[name] = value
    return {name: found[name] for name in FIELDS if name in found}


def configure(level: int, fmt: str = "text") -> None:
    """Send every record at ``level`` or above to stderr, one line each in ``fmt``.

    Replaces the handler an earlier call (or, in a forked worker, the launcher)
    installed; handlers others installed (a test runner's) stay."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _Stderr):
            root.removeHandler(handler)
    handler = _Stderr()
    handler.setFormatter(Formatter(fmt, tracebacks=level <= logging.DEBUG))
    root.addHandler(handler)
    root.setLevel(level)


def from_environment(
    environ: Mapping[str, str], level_var: str, format_var: str, default: int
) -> tuple[int, str]:
    """The level and format an environment sets (a worker's, from the launcher)."""
    text = environ.get(level_var, "")
    level = parse_level(text, level_var) if text.strip() else default
    fmt = environ.get(format_var, "").strip() or "text"
    if fmt not in FORMATS:
        raise InterfaceError(
            f"{format_var} must be text or json, not {fmt!r}",
            hint=f"set {format_var} to text or json, or leave it unset",
        )
    return level, fmt
