"""Subscription options (``--with KEY=VALUE``): parsing, validation, normalisation.

The keys and defaults are native's (``CREATE SUBSCRIPTION ... WITH (...)``):

===================  ========  ==================================================
key                  default   values
===================  ========  ==================================================
copy_data            true      boolean
create_slot          true      boolean
enabled              true      boolean
connect              true      boolean
slot_name            NAME      a replication slot name, or ``NONE`` (no slot)
binary               false     boolean
streaming            parallel  off, on, parallel (or a boolean: on/off); on:
                               large transactions arrive while in progress and
                               are applied at their commit; parallel: applied as
                               they arrive (a publisher before 14 cannot stream:
                               they arrive whole)
two_phase            false     boolean
disable_on_error     false     boolean
synchronous_commit   off       on, off, local, remote_write, remote_apply
origin               any       any, none
password_required    true      boolean
run_as_owner         false     boolean
conflict_resolution  error     a resolution spec (pgferry's own; see
                               :mod:`pgferry.conflict`), e.g. ``last_update_wins``
apply_mode           batch     ``batch``: several remote transactions per local
                               commit; ``exact``: one local commit per remote
                               transaction, as native (pgferry's own)
batch_transactions   1000      1 to 100000: most remote transactions per local
                               commit in batch mode
batch_latency_ms     100       0 to 60000: longest a batch stays uncommitted
copy_schema          false     false; true: create on the subscriber what the
                               published tables need (pgferry's own, see
                               :mod:`pgferry.schema`); all: the publisher
                               database's whole schema
schema_skip          (empty)   objects the schema copy leaves out, separated by
                               ``;``, each as the copy's report names it
                               (``EXTENSION - pg_trgm``, ``COMMENT - EXTENSION
                               plpgsql``)
sequences            off       sync: keep the subscriber's sequences of the
                               published tables at least at the publisher's
                               (default ``sync`` with copy_schema); off
sequence_sync_interval 5       0 to 86400 seconds between sequence syncs (0:
                               only at the end of the initial sync and on demand)
sequence_headroom    0         0 to 1000000000: added to each synced value
missing_columns      error     error: a published column the subscriber table
                               lacks stops apply, as native; add: it is added
                               first (pgferry's own, see :mod:`pgferry.apply.columns`)
ddl_unsafe           stop      stop, skip: what the apply worker does with a
                               replicated DDL whose replay would not give the
                               same data (see :mod:`pgferry.ddl.classify`)
===================  ========  ==================================================

Booleans are spelled as PostgreSQL accepts them: ``true/false``, ``on/off``,
``yes/no``, ``1/0``, ``t/f``, ``y/n``, in any case. Values are normalised before
they are stored: booleans as JSON booleans, the enumerations in lower case
(``synchronous_commit`` given as a boolean becomes ``on``/``off``, ``streaming``
likewise).

Native rules kept: ``connect=false`` turns ``enabled``, ``create_slot`` and
``copy_data`` off and conflicts with any of them set to true explicitly;
``slot_name=NONE`` needs ``enabled=false`` and ``create_slot=false``; a key given
twice is an error; an unknown key is an :class:`~pgferry.errors.InterfaceError`
listing the valid ones.

Deliberate differences:

* the slot name is checked when the subscription is created, also when it is the
  subscription's name (native finds out only when it creates the slot);
* ``password_required`` and ``run_as_owner`` are validated and stored, but change
  nothing: pgferry connects to the publisher from its own process with the
  credentials in the conninfo (native's rule protects the server's OS identity),
  and applies changes as the role of the subscriber DSN.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pgferry.catalog.model import (
    CHOICES,
    DEFAULT_ENABLED,
    INTEGER_RANGES,
    OPTION_KEYS,
    TEXT_KEYS,
    SubscriptionOptions,
)
from pgferry.conflict import Resolution
from pgferry.errors import InterfaceError, InternalError

#: Every key ``create`` accepts, in the documented order.
CREATE_KEYS = (
    "copy_data",
    "create_slot",
    "enabled",
    "connect",
    "slot_name",
    "binary",
    "streaming",
    "two_phase",
    "disable_on_error",
    "synchronous_commit",
    "origin",
    "password_required",
    "run_as_owner",
    "conflict_resolution",
    "apply_mode",
    "batch_transactions",
    "batch_latency_ms",
    "copy_schema",
    "schema_skip",
    "sequences",
    "sequence_sync_interval",
    "sequence_headroom",
    "missing_columns",
    "ddl_unsafe",
)
#: Keys ``alter --with`` sets on an existing subscription (two_phase only while disabled).
ALTER_KEYS = (
    "slot_name",
    "binary",
    "streaming",
    "disable_on_error",
    "synchronous_commit",
    "origin",
    "password_required",
    "run_as_owner",
    "two_phase",
    "conflict_resolution",
    "apply_mode",
    "batch_transactions",
    "batch_latency_ms",
    "copy_schema",
    "schema_skip",
    "sequences",
    "sequence_sync_interval",
    "sequence_headroom",
    "missing_columns",
    "ddl_unsafe",
)
#: Keys ``alter --with`` takes for a publication change or refresh.
REFRESH_KEYS = ("refresh", "copy_data")

#: Keys stored in the catalog row's ``options`` (slot_name and enabled have columns).
STORED_KEYS = OPTION_KEYS

_BOOLEAN_KEYS = frozenset(
    {
        "copy_data",
        "create_slot",
        "enabled",
        "connect",
        "binary",
        "two_phase",
        "disable_on_error",
        "password_required",
        "run_as_owner",
        "refresh",
    }
)


#: The default of every key but slot_name (the subscription's name), as stored:
#: the catalog model's (:class:`~pgferry.catalog.model.SubscriptionOptions`).
DEFAULTS: dict[str, Any] = {**SubscriptionOptions().to_json(), "enabled": DEFAULT_ENABLED}
_INTEGER_KEYS = INTEGER_RANGES

_TRUE = frozenset({"true", "t", "yes", "y", "on", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "off", "0"})
_SYNCHRONOUS_COMMIT = CHOICES["synchronous_commit"]
_STREAMING = CHOICES["streaming"]
_ORIGIN = CHOICES["origin"]
_APPLY_MODE = CHOICES["apply_mode"]
_COPY_SCHEMA = CHOICES["copy_schema"]
_SEQUENCES = CHOICES["sequences"]
# PostgreSQL's ReplicationSlotValidateName: lower case letters, digits, underscore;
# at most NAMEDATALEN - 1 = 63 bytes.
_SLOT_NAME = re.compile(r"[a-z0-9_]{1,63}", re.ASCII)


#: What each key takes, for ``--help`` (the keys with a fixed set of words take
#: them from the catalog model's :data:`~pgferry.catalog.model.CHOICES`).
_VALUES: dict[str, str] = {
    "slot_name": "a replication slot name, or NONE",
    "conflict_resolution": "a resolution spec, e.g. last_update_wins",
    "schema_skip": "objects the schema copy leaves out, ;-separated",
    "sequences": "off, sync (sync by default with copy_schema)",
}


def default_text(key: str) -> str:
    """The default of ``key`` as ``--with`` spells it (``slot_name``: NAME)."""
    if key == "slot_name":
        return "NAME"
    if key == "refresh":
        return "true"
    value = DEFAULTS[key]
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def values_text(key: str) -> str:
    """What ``key`` takes, in a few words."""
    if key in _VALUES:
        return _VALUES[key]
    if key in _BOOLEAN_KEYS:
        return "boolean"
    if key in CHOICES:
        return ", ".join(CHOICES[key])
    if key in _INTEGER_KEYS:
        low, high = _INTEGER_KEYS[key]
        return f"{low} to {high}"
    return "text"


def help_epilog(keys: Iterable[str], title: str) -> str:
    """The ``--with`` keys with their defaults and values, as a ``--help`` epilog:
    one line per key (click keeps the lines of a paragraph opened by ``\\b``)."""
    rows = [(f"{key}={default_text(key)}", values_text(key)) for key in keys]
    width = max(len(left) for left, _ in rows) + 2
    lines = [f"  {left.ljust(width)}{right}" for left, right in rows]
    return "\n".join(["\b", title, *lines])


def parse_bool(key: str, value: str) -> bool:
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InterfaceError(
        f"{key} requires a Boolean value, not {value!r}",
        hint="use true/false, on/off, yes/no or 1/0",
    )


def _choice(key: str, value: str, choices: tuple[str, ...]) -> str:
    text = value.strip().lower()
    if text not in choices:
        raise InterfaceError(
            f"invalid value for {key}: {value!r}", hint=f"valid values: {', '.join(choices)}"
        )
    return text


#: Options that are one of a few words, or a boolean standing for one of them:
#: key -> (the word for true (None: no such), the word for false, the words).
_WORD_OR_BOOLEAN: dict[str, tuple[str | None, str, tuple[str, ...]]] = {
    "streaming": ("on", "off", _STREAMING),
    "synchronous_commit": ("on", "off", _SYNCHRONOUS_COMMIT),
    "copy_schema": ("true", "false", _COPY_SCHEMA),
    "sequences": (None, "off", _SEQUENCES),
}


def _word_or_boolean(
    key: str, value: str, true: str | None, false: str, choices: tuple[str, ...]
) -> str:
    text = value.strip().lower()
    if true is not None and text in _TRUE:
        return true
    if text in _FALSE:
        return false
    return _choice(key, value, choices)


def check_slot_name(slot_name: str) -> str:
    """``slot_name`` if PostgreSQL accepts it as a replication slot name."""
    if not _SLOT_NAME.fullmatch(slot_name):
        why = (
            "is empty"
            if not slot_name
            else "is longer than 63 bytes"
            if len(slot_name.encode()) > 63
            else "contains characters other than a-z, 0-9 and _"
        )
        raise InterfaceError(
            f"replication slot name {slot_name!r} {why}",
            hint="replication slot names may only contain lower case letters, numbers and"
            " underscores; choose one with --with slot_name=NAME",
        )
    return slot_name


def normalise(key: str, value: str) -> Any:
    """The stored form of one option's value (None for ``slot_name=NONE``)."""
    if key in _BOOLEAN_KEYS:
        return parse_bool(key, value)
    if key == "slot_name":
        if value.strip().lower() == "none":
            return None
        return check_slot_name(value)
    if key in _WORD_OR_BOOLEAN:
        return _word_or_boolean(key, value, *_WORD_OR_BOOLEAN[key])
    if key == "origin":
        return _choice(key, value, _ORIGIN)
    if key == "conflict_resolution":
        return str(Resolution.parse(value)) or "error"
    if key == "apply_mode":
        return _choice(key, value, _APPLY_MODE)
    if key == "missing_columns":
        return _choice(key, value, CHOICES["missing_columns"])
    if key == "ddl_unsafe":
        return _choice(key, value, CHOICES["ddl_unsafe"])
    if key in TEXT_KEYS:
        if "\0" in value:
            raise InterfaceError(f"{key} contains a NUL character")
        return value.strip()
    if key in _INTEGER_KEYS:
        low, high = _INTEGER_KEYS[key]
        try:
            number = int(value.strip())
        except ValueError:
            number = low - 1
        if not low <= number <= high:
            raise InterfaceError(f"{key} must be an integer from {low} to {high}, not {value!r}")
        return number
    raise InternalError(f"no normaliser for subscription option {key!r}")


def parse_pairs(items: Iterable[str], valid: tuple[str, ...], *, what: str) -> dict[str, Any]:
    """``KEY=VALUE`` items -> {key: normalised value}; keys checked against ``valid``."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            raise InterfaceError(
                f"--with expects KEY=VALUE, not {item!r}", hint=f"valid keys: {', '.join(valid)}"
            )
        if key not in valid:
            raise InterfaceError(
                f"unrecognized subscription parameter {key!r} for {what}",
                hint=f"valid keys: {', '.join(valid)}",
            )
        if key in parsed:
            raise InterfaceError(f"conflicting or redundant options: {key} given twice")
        parsed[key] = normalise(key, value)
    return parsed


@dataclass(frozen=True)
class CreateOptions:
    """The effective options of a new subscription (defaults filled in)."""

    slot_name: str | None
    enabled: bool
    options: SubscriptionOptions = field(default_factory=SubscriptionOptions)

    @property
    def connect(self) -> bool:
        return self.options.connect

    @property
    def create_slot(self) -> bool:
        return self.options.create_slot

    @property
    def copy_data(self) -> bool:
        return self.options.copy_data

    @property
    def stored(self) -> dict[str, Any]:
        """The ``options`` object stored in the catalog."""
        return self.options.to_json()

    def get(self, key: str) -> Any:
        return self.stored[key]


def create_options(name: str, items: Iterable[str]) -> CreateOptions:
    """Parse ``create --with`` items for subscription ``name``, applying native's rules."""
    given = parse_pairs(items, CREATE_KEYS, what="create")
    values = {**DEFAULTS, **given}
    if "sequences" not in given and values["copy_schema"] != "false":
        values["sequences"] = "sync"
    if not values["connect"]:
        for key in ("enabled", "create_slot", "copy_data"):
            if given.get(key) is True:
                raise InterfaceError(
                    f"connect = false and {key} = true are mutually exclusive options"
                )
            values[key] = False
    if "slot_name" in given:
        slot_name = given["slot_name"]
    else:
        try:
            slot_name = check_slot_name(name)
        except InterfaceError as exc:
            raise InterfaceError(
                f"the subscription name is the default slot name, but {exc.message}",
                hint="give the slot a valid name with --with slot_name=NAME",
            ) from None
    if slot_name is None:
        for key in ("enabled", "create_slot"):
            if values[key]:
                if key in given:
                    raise InterfaceError(
                        f"slot_name = NONE and {key} = true are mutually exclusive options"
                    )
                raise InterfaceError(
                    f"subscription with slot_name = NONE must also set {key} = false",
                    hint=f"add --with {key}=false",
                )
    return CreateOptions(
        slot_name=slot_name,
        enabled=bool(values["enabled"]),
        options=SubscriptionOptions.from_json(values),
    )
