"""The switchover's errors: a failed phase, and a failed precondition."""

from __future__ import annotations

from pgferry.errors import PgferryError


class SwitchoverFailed(PgferryError):
    """A phase failed; the old primary is in service again."""


class PreflightFailed(SwitchoverFailed):
    """A precondition does not hold; nothing was changed."""
