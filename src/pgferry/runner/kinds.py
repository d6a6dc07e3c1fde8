"""The kinds of worker the launcher runs: one registry entry each.

A worker is named by a key, ``(kind, *arguments)`` (``("apply", SUB)``,
``("sync", SUB, SCHEMA, TABLE)``, ``("sequences", SUB)``), which is also its
command line after ``python -m pgferry.runner.child``. :data:`KINDS` maps each
kind to its arguments and to the function that builds the worker; a new kind of
worker (verify) is one more entry here and a rule in the launcher saying when it
is wanted. Building imports the worker's package only then, so a forked worker
loads what it needs and the launcher stays light. :func:`describe` and
:func:`log_fields` say which worker a key names, in log lines and their fields.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

#: ``(kind, *arguments)``: which worker, for what.
WorkerKey = tuple[str, ...]


class Worker(Protocol):
    def run(self) -> None: ...

    def request_stop(self) -> None: ...


@dataclass(frozen=True)
class WorkerKind:
    name: str
    #: The arguments after the kind, by name (for the usage line).
    arguments: tuple[str, ...]
    #: ``build(subscriber_dsn, arguments)``.
    build: Callable[[str, Sequence[str]], Worker]


def _apply(dsn: str, args: Sequence[str]) -> Worker:
    from pgferry.apply import ApplyWorker

    return ApplyWorker(dsn, args[0])


def _sync(dsn: str, args: Sequence[str]) -> Worker:
    from pgferry.sync import TableSyncWorker

    return TableSyncWorker(dsn, args[0], args[1], args[2])


def _schema(dsn: str, args: Sequence[str]) -> Worker:
    from pgferry.schema.steps import FinalStepsWorker

    return FinalStepsWorker(dsn, args[0])


def _sequences(dsn: str, args: Sequence[str]) -> Worker:
    from pgferry.sequences import SequenceSyncWorker

    return SequenceSyncWorker(dsn, args[0])


KINDS: dict[str, WorkerKind] = {
    kind.name: kind
    for kind in (
        WorkerKind("apply", ("SUBSCRIPTION",), _apply),
        WorkerKind("sync", ("SUBSCRIPTION", "SCHEMA", "TABLE"), _sync),
        WorkerKind("sequences", ("SUBSCRIPTION",), _sequences),
        WorkerKind("schema", ("SUBSCRIPTION",), _schema),
    )
}


def build(dsn: str, key: Sequence[str]) -> Worker | None:
    """The worker ``key`` names; None when no kind takes those arguments."""
    kind = KINDS.get(key[0]) if key else None
    if kind is None or len(key) - 1 != len(kind.arguments):
        return None
    return kind.build(dsn, key[1:])


def log_fields(key: Sequence[str]) -> dict[str, str]:
    """What a worker's log records say it is: ``worker`` (its kind),
    ``subscription`` and, for a table's worker, ``table`` (``SCHEMA.TABLE``)."""
    kind = KINDS.get(key[0]) if key else None
    fields = {"worker": key[0]} if key else {}
    if kind is None:
        return fields
    named = dict(zip(kind.arguments, key[1:], strict=False))
    if "SUBSCRIPTION" in named:
        fields["subscription"] = named["SUBSCRIPTION"]
    if "SCHEMA" in named and "TABLE" in named:
        fields["table"] = f"{named['SCHEMA']}.{named['TABLE']}"
    return fields


def describe(key: Sequence[str]) -> str:
    """The worker in words: ``apply worker for SUB``, ``sync worker for SUB,
    table SCHEMA.TABLE``."""
    fields = log_fields(key)
    if "subscription" not in fields:
        return f"{' '.join(key)} worker"
    text = f"{fields['worker']} worker for {fields['subscription']}"
    return f"{text}, table {fields['table']}" if "table" in fields else text


def usage() -> str:
    return "usage: " + " | ".join(" ".join(("child", k.name, *k.arguments)) for k in KINDS.values())
