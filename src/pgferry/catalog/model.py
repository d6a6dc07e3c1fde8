"""The typed model of the catalog's rows: table states and subscription options.

Both are parsed once, when a row is read (see :mod:`.store`); the catalog keeps
what it always stored: native's state letters in ``subscription_table.state`` and
the options as a JSON object in ``subscription.options``.

:class:`SubscriptionOptions` is the one definition of the stored options, their
types and defaults; :mod:`pgferry.subscription.options` parses ``--with`` text
into them (its keys, values and rules are documented there).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

from pgferry.conflict import Policy, Resolution
from pgferry.errors import InterfaceError
from pgferry.stream.commands import Streaming


class TableState(enum.StrEnum):
    """A subscribed table's sync state: native's ``pg_subscription_rel.srsubstate``,
    stored as its letter. A table goes i -> d -> f -> s -> r (see
    :mod:`.handover`), or is registered ``r`` when nothing is copied."""

    INIT = "i"
    DATA = "d"
    FINISHED = "f"
    SYNCDONE = "s"
    READY = "r"

    @classmethod
    def parse(cls, letter: str) -> TableState:
        """The state stored as ``letter``."""
        try:
            return cls(letter)
        except ValueError:
            raise InterfaceError(f"invalid table state {letter!r}") from None


#: Whether a new subscription is enabled (a column of its own, not an option).
DEFAULT_ENABLED = True

SynchronousCommit = Literal["on", "off", "local", "remote_write", "remote_apply"]
Origin = Literal["any", "none"]
ApplyMode = Literal["batch", "exact"]
CopySchema = Literal["false", "true", "all"]
SequenceSync = Literal["off", "sync"]
MissingColumns = Literal["error", "add"]
DdlUnsafe = Literal["stop", "skip"]

#: The values of each option that is one of a few words.
CHOICES: dict[str, tuple[str, ...]] = {
    "streaming": get_args(Streaming),
    "synchronous_commit": get_args(SynchronousCommit),
    "origin": get_args(Origin),
    "apply_mode": get_args(ApplyMode),
    "copy_schema": get_args(CopySchema),
    "sequences": get_args(SequenceSync),
    "missing_columns": get_args(MissingColumns),
    "ddl_unsafe": get_args(DdlUnsafe),
}
#: The (lowest, highest) value of each integer option.
INTEGER_RANGES: dict[str, tuple[int, int]] = {
    "batch_transactions": (1, 100000),
    "batch_latency_ms": (0, 60000),
    "sequence_sync_interval": (0, 86400),
    "sequence_headroom": (0, 1_000_000_000),
}
#: The options that are free text.
TEXT_KEYS = frozenset({"schema_skip"})


def _default_resolution() -> Resolution:
    return Resolution(Policy.ERROR)


@dataclass(frozen=True)
class SubscriptionOptions:
    """A subscription's options (``subscription.options``), defaults filled in.

    The fields are the stored keys, in documented order; ``slot_name`` and
    ``enabled`` are columns of the subscription, not options.
    """

    copy_data: bool = True
    create_slot: bool = True
    connect: bool = True
    binary: bool = False
    streaming: Streaming = "parallel"
    two_phase: bool = False
    disable_on_error: bool = False
    synchronous_commit: SynchronousCommit = "off"
    origin: Origin = "any"
    password_required: bool = True
    run_as_owner: bool = False
    conflict_resolution: Resolution = field(default_factory=_default_resolution)
    apply_mode: ApplyMode = "batch"
    batch_transactions: int = 1000
    batch_latency_ms: int = 100
    copy_schema: CopySchema = "false"
    schema_skip: str = ""
    sequences: SequenceSync = "off"
    sequence_sync_interval: int = 5
    sequence_headroom: int = 0
    missing_columns: MissingColumns = "error"
    ddl_unsafe: DdlUnsafe = "stop"

    @classmethod
    def from_json(cls, stored: Mapping[str, Any]) -> SubscriptionOptions:
        """The options of a stored ``options`` object (a missing key: its default;
        a key not an option is ignored); a value of the wrong kind is an
        :class:`~pgferry.errors.InterfaceError`."""
        values = {key: _value(key, stored[key]) for key in OPTION_KEYS if key in stored}
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """The stored ``options`` object: every key, in documented order."""
        return {key: _stored(getattr(self, key)) for key in OPTION_KEYS}


#: The keys of the stored ``options`` object, in documented order.
OPTION_KEYS: tuple[str, ...] = tuple(f.name for f in fields(SubscriptionOptions))


def _value(key: str, value: Any) -> Any:
    """A stored option's value, checked (and the resolution spec parsed)."""
    if key == "conflict_resolution":
        if isinstance(value, str):
            return Resolution.parse(value)
    elif key in CHOICES:
        if value in CHOICES[key]:
            return value
    elif key in TEXT_KEYS:
        if isinstance(value, str):
            return value
    elif key in INTEGER_RANGES:
        low, high = INTEGER_RANGES[key]
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            return value
    elif isinstance(value, bool):
        return value
    raise InterfaceError(f"invalid stored value of subscription option {key}: {value!r}")


def _stored(value: Any) -> Any:
    if isinstance(value, Resolution):
        return str(value) or "error"
    return value
