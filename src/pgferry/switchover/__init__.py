"""``pgferry switchover NAME``: a fenced, reversible switchover to the subscriber.

The subscriber of subscription ``NAME`` (``-d``) becomes the primary, its
publisher (the old primary) a subscriber of it, with a write pause of tens of
milliseconds. :func:`~.run.switchover` runs these phases, each timed
(:class:`~.run.Report`) and bounded (``--phase-timeout``; everything inside
the fence by ``--fence-timeout`` together, the redirect by ``--redirect-timeout``):

1. **preflight** (:mod:`.run`): the subscription is enabled, not in error, has
   its slot, every table ready, its apply worker running; its lag under
   ``--max-lag`` bytes; no transaction on the old primary older than
   ``--max-transaction-age``, and no prepared one (``pg_prepared_xacts``); for
   the database fence, no role setting of ``default_transaction_read_only``
   that would win over it; a pgferry launcher running for the old primary's
   database (the reverse subscription's worker runs there); the schema diff
   clean (:mod:`pgferry.schema.diff`, unless ``--no-schema-check``); the
   sequences found on both sides and synced once
   (:class:`pgferry.sequences.PreparedSync`); the fence possible (PgBouncer
   reachable, it knows the database, its ini has the line).
   ``--dry-run`` stops here.
2. **prepare** (:mod:`.reverse`): the reverse publication on the new primary
   (capturing DDL when the forward one does) and the reverse subscription in the
   old primary's catalog, with its slot on the new primary (its creation bounded
   by ``--phase-timeout``); then the reverse subscription enabled under an
   apply hold without a target, and its apply worker waited for until it is
   started and held (streaming, applying nothing): the fence waits for no
   worker to start.
3. **fence** (:mod:`.fence`): PgBouncer ``PAUSE`` with a watchdog process, or
   ``default_transaction_read_only`` for the database plus ending its sessions.
4. **drain** (:mod:`.drain`): a marker committed on the old primary after the
   fence, at M; the forward apply worker held at M, waited for until it says so:
   everything before the fence applied, nothing after.
5. **sequences**: the final sync (the prepared one: their values read and
   set), every new-primary sequence checked at or past the old primary's.
6. **reverse**: the forward subscription disabled (with ``origin = none``;
   held at M, its worker applies nothing more) while the reverse one's hold is
   released (with the database fence, after the switch).
7. **redirect**: the watchdog's deadline started over for ``--redirect-timeout``
   (so it cannot ``RESUME`` in the middle), PgBouncer repointed (ini rewritten,
   ``RELOAD``, checked, within that timeout) and ``RESUME``; without PgBouncer
   the read-only default is lifted (before the reverse subscription goes on)
   and repointing the clients is the user's.
8. **forward**, after the pause: the forward apply worker waited for until gone
   (``--phase-timeout``), then its hold removed; one still running stays held.
9. The report: each phase's duration and the write pause (fence to resume).

Any failure from the fence on, before the redirect, puts things back: the
subscriptions as they were, the fence released (``RESUME`` / ``RESET``, from a
new connection when the fence's own one is gone); the old primary takes writes
again and nothing is lost (every write before the fence is on the
subscription's way, none was made after). The error is one
:class:`~.run.SwitchoverFailed` line saying so, or saying what could not be put
back and how to do it. A failure in the preflight or the prepare changes
nothing but the prepared reverse publication and subscription (kept for the
next attempt).

``--rollback`` runs the same phases the other way: the reverse subscription is
the forward one, ``NAME`` becomes the reverse one again (its slot on the old
primary kept its position; with ``origin = none`` it skips what the reverse
subscription applied there).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .errors import PreflightFailed, SwitchoverFailed
    from .fence import BouncerFence, DatabaseFence, FenceFailed
    from .reverse import ReverseNotPossible
    from .run import Bouncer, Plan, Report, switchover

#: Where each public name lives. Imported on first use, so that the watchdog
#: (``python -m pgferry.switchover.watchdog``, started before every fence) does
#: not load the whole switchover with its package: it starts in a fraction of
#: the time, and takes that much less CPU from the clients while it starts.
_HOMES = {
    "Bouncer": "run",
    "BouncerFence": "fence",
    "DatabaseFence": "fence",
    "FenceFailed": "fence",
    "Plan": "run",
    "PreflightFailed": "errors",
    "Report": "run",
    "ReverseNotPossible": "reverse",
    "SwitchoverFailed": "errors",
    "switchover": "run",
}

__all__ = [
    "Bouncer",
    "BouncerFence",
    "DatabaseFence",
    "FenceFailed",
    "Plan",
    "PreflightFailed",
    "Report",
    "ReverseNotPossible",
    "SwitchoverFailed",
    "switchover",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
