"""Error classes: one class per condition, split by who is at fault.

* :class:`InterfaceError` - the caller misused pgferry (bad argument, bad LSN text).
* :class:`ServerError` - the PostgreSQL server refused or reported something; the
  subclasses name the conditions a user can fix (missing slot, ``wal_level``...).
* :class:`ProtocolError` - bytes from the server do not follow the protocol.
* :class:`InternalError` - a pgferry bug; never expected.

Every error carries an optional ``hint`` saying what to do, which the CLI prints
on its own line. Messages never contain a password: conninfo strings go through
:func:`pgferry.conninfo.mask` before they are put into a message.
"""

from __future__ import annotations


class PgferryError(Exception):
    """Base class of every error pgferry raises on purpose."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class InterfaceError(PgferryError):
    """The caller used pgferry wrongly (bad argument, bad value)."""


class InternalError(PgferryError):
    """An invariant of pgferry itself was broken: a bug."""


class ProtocolError(PgferryError):
    """Bytes received from the server do not follow the replication protocol.

    ``offset`` is the position in the message buffer where decoding failed.
    """

    def __init__(self, message: str, *, offset: int, hint: str | None = None) -> None:
        super().__init__(f"{message} (at byte offset {offset})", hint=hint)
        self.offset = offset


class ServerError(PgferryError):
    """The PostgreSQL server refused a request or reported an error.

    ``sqlstate`` is the server's SQLSTATE code when there is one.
    """

    def __init__(
        self, message: str, *, sqlstate: str | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.sqlstate = sqlstate


class ConnectionFailed(ServerError):
    """The server could not be reached or refused the login, or the connection
    was lost."""


class ReceiverTimeout(ConnectionFailed):
    """Nothing arrived from the publisher for the receiver timeout (native's
    ``wal_receiver_timeout``), not even an answer to a keepalive request."""


class ReplicationNotPermitted(ServerError):
    """The role lacks the REPLICATION attribute (or pg_hba rejects replication)."""


class WalLevelNotLogical(ServerError):
    """The server runs with ``wal_level`` below ``logical``."""


class SlotNotFound(ServerError):
    """The named replication slot does not exist."""


class SlotAlreadyExists(ServerError):
    """A replication slot of that name already exists."""


class SlotInUse(ServerError):
    """The replication slot is active for another process."""


class PublicationNotFound(ServerError):
    """A named publication does not exist in the database."""


class FeatureNotSupported(ServerError):
    """The server version does not support a requested option."""


class ApplyError(ServerError):
    """Applying a remote change on the subscriber failed.

    Names the subscription, the table, the remote transaction and its finish LSN
    (the LSN ``--skip`` takes), so the user can fix the data or skip it.
    """

    def __init__(
        self,
        message: str,
        *,
        subscription: str,
        table: str | None,
        xid: int | None,
        finish_lsn: str | None,
        sqlstate: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, sqlstate=sqlstate, hint=hint)
        self.subscription = subscription
        self.table = table
        self.xid = xid
        self.finish_lsn = finish_lsn


class ConflictError(ApplyError):
    """A remote change conflicts with the local data and the policy says stop.

    ``conflict_type`` is PostgreSQL 18's name (``insert_exists``...); the SQLSTATE
    is native's: 23505 for the unique conflicts, 40001 for the others.
    """

    def __init__(
        self,
        message: str,
        *,
        conflict_type: str,
        subscription: str,
        table: str | None,
        xid: int | None,
        finish_lsn: str | None,
        hint: str | None = None,
    ) -> None:
        unique = conflict_type.endswith("exists") or conflict_type.startswith("multiple")
        super().__init__(
            message,
            subscription=subscription,
            table=table,
            xid=xid,
            finish_lsn=finish_lsn,
            sqlstate="23505" if unique else "40001",
            hint=hint,
        )
        self.conflict_type = conflict_type
