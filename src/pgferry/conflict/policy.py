"""Conflict types, resolution policies and the decision between two versions of a row.

Pure logic, no I/O: the applier detects a conflict, asks :meth:`Resolution.policy_for`
which policy governs it, and :func:`decide` what happens to the remote change.

Conflict types are PostgreSQL 18's (``pg_stat_subscription_stats.confl_*``):

========================  ===============================================  ==============
type                      the remote change ...                            native does
========================  ===============================================  ==============
insert_exists             INSERT collides with a local row on a unique     stops (ERROR)
                          index
update_origin_differs     UPDATE finds a row last written by another       applies, logs
                          origin (local writes included)
update_exists             UPDATE's new values collide with another local   stops (ERROR)
                          row on a unique index
update_missing            UPDATE finds no row                              skips, logs
delete_origin_differs     DELETE finds a row last written by another       applies, logs
                          origin
delete_missing            DELETE finds no row                              skips, logs
multiple_unique_conflicts INSERT or UPDATE collides with more than one     stops (ERROR)
                          local row
========================  ===============================================  ==============

A resolution spec is a comma-separated list: a bare policy governs every type, and
``TYPE:POLICY`` one type, e.g. ``last_update_wins,delete_missing:error``. The
policies:

* ``error`` (the default) is native's behaviour: the worker stops on the types
  native stops on, skips the missing ones and applies the origin-differs ones. As
  ``TYPE:error`` it stops on that type, whatever native does;
* ``skip`` and ``keep_local``: the remote change is dropped (the two names say the
  same thing from the two sides, and are logged as given);
* ``apply_remote``: the remote change wins: an INSERT that finds its key updates the
  row, an UPDATE that finds no row inserts it (when the whole new row was sent),
  colliding local rows are deleted;
* ``last_update_wins`` / ``first_update_wins``: the version with the later (earlier)
  commit timestamp wins; a tie goes to the greater node name, the same choice on
  every node, so nodes converge. A missing row stays missing (deletes win: there
  are no tombstones to compare with), and a local row whose commit time is unknown
  (written before ``track_commit_timestamp`` was on) loses to the remote change
  under last_update_wins and wins under first_update_wins.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from pgferry.errors import InterfaceError


class ConflictType(enum.StrEnum):
    INSERT_EXISTS = "insert_exists"
    UPDATE_ORIGIN_DIFFERS = "update_origin_differs"
    UPDATE_EXISTS = "update_exists"
    UPDATE_MISSING = "update_missing"
    DELETE_ORIGIN_DIFFERS = "delete_origin_differs"
    DELETE_MISSING = "delete_missing"
    MULTIPLE_UNIQUE_CONFLICTS = "multiple_unique_conflicts"

    @property
    def counter(self) -> str:
        """The ``pgferry.subscription_stats`` column (PG 18's ``confl_*`` name)."""
        return f"confl_{self.value}"


#: In the order of PostgreSQL 18's ``pg_stat_subscription_stats`` columns.
CONFLICT_TYPES: tuple[ConflictType, ...] = tuple(ConflictType)


class Policy(enum.StrEnum):
    ERROR = "error"
    SKIP = "skip"
    APPLY_REMOTE = "apply_remote"
    KEEP_LOCAL = "keep_local"
    LAST_UPDATE_WINS = "last_update_wins"
    FIRST_UPDATE_WINS = "first_update_wins"

    @property
    def needs_commit_timestamps(self) -> bool:
        return self in (Policy.LAST_UPDATE_WINS, Policy.FIRST_UPDATE_WINS)


class Outcome(enum.Enum):
    APPLY = "apply"  # the remote change prevails
    SKIP = "skip"  # the local state stays
    ERROR = "error"  # the worker stops on this transaction


#: What the default policy (a bare or absent ``error``) does where native does not stop.
_NATIVE: Mapping[ConflictType, Policy] = {
    ConflictType.UPDATE_MISSING: Policy.SKIP,
    ConflictType.DELETE_MISSING: Policy.SKIP,
    ConflictType.UPDATE_ORIGIN_DIFFERS: Policy.APPLY_REMOTE,
    ConflictType.DELETE_ORIGIN_DIFFERS: Policy.APPLY_REMOTE,
}

_MISSING = frozenset({ConflictType.UPDATE_MISSING, ConflictType.DELETE_MISSING})


@dataclass(frozen=True)
class Resolution:
    """A parsed resolution spec: a base policy and per-type policies."""

    base: Policy | None = None
    per_type: Mapping[ConflictType, Policy] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | None, *, what: str = "conflict_resolution") -> Resolution:
        if text is None or not text.strip():
            return cls()
        base: Policy | None = None
        per_type: dict[ConflictType, Policy] = {}
        for raw in text.split(","):
            item = raw.strip().lower()
            if not item:
                continue
            kind, sep, name = item.rpartition(":")
            policy = _policy(name, what)
            if not sep:
                if base is not None:
                    raise InterfaceError(f"{what}: more than one policy for every type ({text!r})")
                base = policy
                continue
            try:
                ctype = ConflictType(kind.strip())
            except ValueError:
                raise InterfaceError(
                    f"{what}: unknown conflict type {kind.strip()!r}",
                    hint=f"conflict types: {', '.join(CONFLICT_TYPES)}",
                ) from None
            if ctype in per_type:
                raise InterfaceError(f"{what}: {ctype} is given twice")
            per_type[ctype] = policy
        return cls(base, per_type)

    def __str__(self) -> str:
        items = [str(self.base)] if self.base is not None else []
        items += [f"{t}:{p}" for t, p in self.per_type.items()]
        return ",".join(items)

    @property
    def empty(self) -> bool:
        return self.base is None and not self.per_type

    def covers(self, ctype: ConflictType) -> bool:
        return self.base is not None or ctype in self.per_type

    def policy_for(self, ctype: ConflictType, fallback: Resolution | None = None) -> Policy:
        """The policy for ``ctype``: this spec first, then ``fallback`` (the
        subscription's, when this one is a table's), then native's behaviour."""
        explicit = self.per_type.get(ctype)
        if explicit is not None:
            return explicit
        if self.base is None and fallback is not None:
            return fallback.policy_for(ctype)
        base = self.base or Policy.ERROR
        if base is Policy.ERROR:
            return _NATIVE.get(ctype, Policy.ERROR)
        return base

    def policies(self) -> Iterable[Policy]:
        if self.base is not None:
            yield self.base
        yield from self.per_type.values()


def _policy(name: str, what: str) -> Policy:
    try:
        return Policy(name.strip())
    except ValueError:
        raise InterfaceError(
            f"{what}: unknown resolution policy {name.strip()!r}",
            hint=f"policies: {', '.join(Policy)}",
        ) from None


@dataclass(frozen=True)
class Stamp:
    """Who wrote a version of a row, and when (None: unknown)."""

    time: datetime | None
    node: str | None


def _remote_wins_tie(remote: Stamp, local: Stamp) -> bool:
    # Greater node name wins; both nodes compare the same two names, so they agree.
    return (remote.node or "") > (local.node or "")


def decide(ctype: ConflictType, policy: Policy, remote: Stamp, local: Iterable[Stamp]) -> Outcome:
    """What happens to the remote change under ``policy``.

    ``local``: the stamps of the local rows in conflict (none for a missing row).
    """
    if policy is Policy.ERROR:
        return Outcome.ERROR
    if policy in (Policy.SKIP, Policy.KEEP_LOCAL):
        return Outcome.SKIP
    if policy is Policy.APPLY_REMOTE:
        return Outcome.APPLY
    if ctype in _MISSING:
        return Outcome.SKIP
    latest = policy is Policy.LAST_UPDATE_WINS
    for stamp in local:
        if not _remote_beats(remote, stamp, latest=latest):
            return Outcome.SKIP
    return Outcome.APPLY


def _remote_beats(remote: Stamp, local: Stamp, *, latest: bool) -> bool:
    if local.time is None:
        return latest
    if remote.time is None:
        return not latest
    if remote.time == local.time:
        return _remote_wins_tie(remote, local)
    return remote.time > local.time if latest else remote.time < local.time
