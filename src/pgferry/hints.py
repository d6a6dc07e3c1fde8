"""The next action for a subscription's error: one home for the hint text.

Every place that tells the user what to do about a failed transaction — the apply
worker's errors as they happen, ``status``, ``subscription wait`` and
``subscription list`` from what the catalog keeps — builds it here, so the
commands it names are the same everywhere and the subscription's name is quoted
for a shell (a name with spaces or quotes still gives a command that runs).
"""

from __future__ import annotations

import shlex

from pgferry.protocol.lsn import Lsn


def alter_command(name: str, *args: str) -> str:
    """``pgferry subscription alter NAME ARGS...``, NAME quoted for a shell."""
    return " ".join(["pgferry subscription alter", shlex.quote(name), *args])


def failed_transaction(
    name: str, finish_lsn: Lsn | str, *, conflict: bool = False, enabled: bool = True
) -> str:
    """What to do about a remote transaction that failed to apply: fix the local
    data (or, for a conflict, choose a resolution policy), or skip it; a
    subscription disabled by the error is enabled again in the same command."""
    again = () if enabled else ("--enable",)
    skip = alter_command(name, "--skip", str(finish_lsn), *again)
    where = "the local data" if conflict else "the data on the subscriber"
    fix = f"fix {where}" + ("" if enabled else f" then {alter_command(name, *again)}")
    if conflict:
        policy = alter_command(name, "--with", "conflict_resolution=...", *again)
        return f"resolve it by policy ({policy}), {fix}, or skip the transaction with {skip}"
    return f"{fix}, or skip the transaction with {skip}"


def error_hint(
    name: str, message: str | None, finish_lsn: Lsn | None, enabled: bool = True
) -> str | None:
    """The next action for a subscription's stored last error (None: no error),
    from what the catalog keeps: the message and the failed transaction's finish
    LSN. A disabled subscription (``disable_on_error``) also needs ``--enable``."""
    if message is None:
        return None
    enable = "" if enabled else f"; then {alter_command(name, '--enable')}"
    if finish_lsn is not None:
        return failed_transaction(
            name, finish_lsn, conflict="conflict=" in message, enabled=enabled
        )
    if "initial copy of" in message:
        return (
            "fix the subscriber table (existing rows are kept: a duplicate key conflicts);"
            f" the copy is retried from scratch{enable}"
        )
    if not enabled:
        return f"fix the cause, then {alter_command(name, '--enable')}"
    return "fix the cause; the failed worker is started again (the log of pgferry run has more)"
