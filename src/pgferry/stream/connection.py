"""The logical replication connection: commands, COPY BOTH streaming, feedback.

Contract:

* :class:`ReplicationConnection` opens a ``replication=database`` connection with
  psycopg (libpq does authentication, TLS and ``sslmode``) and runs replication
  commands with the simple query protocol: IDENTIFY_SYSTEM,
  CREATE/DROP_REPLICATION_SLOT, plain SQL (allowed in this mode), and
  START_REPLICATION, which returns a :class:`ReplicationStream`.
* :class:`ReplicationStream` reads CopyData messages without blocking longer than
  asked, answers keepalives that request a reply, and sends standby status updates
  every ``status_interval`` seconds. The positions it reports are only those the
  consumer passed to :meth:`ReplicationStream.confirm`: it never confirms what the
  consumer has not durably processed, so the slot keeps everything after it.
* A stream never goes silent unnoticed (as native's ``wal_receiver_timeout``):
  when nothing at all has arrived (data or keepalive) for half the receiver
  timeout, it asks the walsender for a reply; when that reply has not come
  either, a full timeout after the last message, reading raises
  :class:`~pgferry.errors.ReceiverTimeout`. The timeout is
  :func:`default_receiver_timeout`'s (``PGFERRY_RECEIVER_TIMEOUT``, 60 s; 0 turns it
  off) unless the caller gives one. A consumer busy for longer than the timeout
  without reading is not taken for a silent publisher: the ask for a reply
  comes first, and the wait for it starts then.
* Server errors become the :mod:`pgferry.errors` class naming the condition.
  Reconnecting is the caller's business.
"""

from __future__ import annotations

import logging
import os
import selectors
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import psycopg
from psycopg import pq
from psycopg.errors import error_from_result

from pgferry import connect
from pgferry import conninfo as ci
from pgferry._cmodule import SPEEDUPS
from pgferry.errors import (
    ConnectionFailed,
    InterfaceError,
    PgferryError,
    ReceiverTimeout,
    ReplicationNotPermitted,
    ServerError,
    SlotAlreadyExists,
    SlotInUse,
    SlotNotFound,
    WalLevelNotLogical,
)
from pgferry.protocol.envelope import (
    PrimaryKeepalive,
    XLogData,
    encode_standby_status,
    parse_copy_data,
)
from pgferry.protocol.lsn import INVALID_LSN, Lsn
from pgferry.protocol.timestamps import now_pg_us
from pgferry.sqltext import quote_ident, quote_literal
from pgferry.stream import commands, libpq
from pgferry.stream.commands import PgoutputOptions, SnapshotAction
from pgferry.stream.waiting import execute_gen, flush_gen, interrupt_fd, take_interrupt, wait

logger = logging.getLogger("pgferry.stream")

#: Settings for the walsender session that shape the text form of values.
SESSION_OPTIONS = (
    "-c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3 -c timezone=UTC"
)

#: Between two asks for a slot still active (see ``start_replication``).
_IN_USE_PAUSE = 0.05

#: The environment variable that sets the receiver timeout, in seconds.
RECEIVER_TIMEOUT_ENV = "PGFERRY_RECEIVER_TIMEOUT"
#: The receiver timeout without it: native's ``wal_receiver_timeout`` default.
DEFAULT_RECEIVER_TIMEOUT = 60.0


def default_receiver_timeout() -> float:
    """Seconds a stream may receive nothing before it is given up (0: never):
    ``$PGFERRY_RECEIVER_TIMEOUT``, else :data:`DEFAULT_RECEIVER_TIMEOUT`."""
    text = os.environ.get(RECEIVER_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_RECEIVER_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86400:
        raise InterfaceError(
            f"{RECEIVER_TIMEOUT_ENV} must be a number of seconds from 0 to 86400, not {text!r}",
            hint="0 turns the receiver timeout off",
        )
    return value


@dataclass(frozen=True)
class SystemInfo:
    """IDENTIFY_SYSTEM's answer."""

    system_id: str
    timeline: int
    xlog_pos: Lsn
    dbname: str | None


@dataclass(frozen=True)
class SlotInfo:
    """CREATE_REPLICATION_SLOT's answer: where the slot starts, and its snapshot."""

    slot_name: str
    consistent_point: Lsn
    snapshot_name: str | None
    output_plugin: str


def _server_error(exc: psycopg.Error, context: str) -> ServerError:
    """Map a server error to the class that names its condition."""
    diag = exc.diag
    sqlstate = diag.sqlstate
    text = (diag.message_primary or str(exc)).strip()
    message = f"{context}: {text}"
    lowered = text.lower()
    if "wal_level" in lowered:
        return WalLevelNotLogical(
            message,
            sqlstate=sqlstate,
            hint="set wal_level = logical in postgresql.conf on the publisher and restart it",
        )
    if sqlstate == "42704" and "replication slot" in lowered:
        return SlotNotFound(
            message, sqlstate=sqlstate, hint="create it first (pgferry stream --create-slot)"
        )
    if sqlstate == "42710":
        return SlotAlreadyExists(message, sqlstate=sqlstate)
    if sqlstate == "55006":
        return SlotInUse(
            message,
            sqlstate=sqlstate,
            hint="another consumer is streaming from this slot; stop it or use another slot",
        )
    if sqlstate == "42501" or "replication role" in lowered:
        return ReplicationNotPermitted(
            message, sqlstate=sqlstate, hint="ALTER ROLE ... REPLICATION on the publisher"
        )
    return ServerError(message, sqlstate=sqlstate, hint=diag.message_hint)


class ReplicationConnection:
    """A ``replication=database`` connection to a publisher."""

    def __init__(self, conn: psycopg.Connection[tuple[object, ...]], dsn: str) -> None:
        self._conn = conn
        self._dsn = dsn
        self.pgconn: pq.abc.PGconn = conn.pgconn
        self.server_version: int = self.pgconn.server_version

    @classmethod
    def connect(cls, dsn: str = "", *, application_name: str = "pgferry") -> Self:
        """Connect; ``dsn`` empty means the PG* environment variables (as psql)."""
        # Fix the text output of values whatever the server's defaults are, as
        # PostgreSQL's own subscriber does; timestamps with time zone come in UTC.
        # The user's own `options` come last so they can override ours.
        options = " ".join(filter(None, [SESSION_OPTIONS, ci.parse(dsn).get("options", "")]))
        conn = connect.open_connection(
            dsn,
            side="publisher",
            application_name=application_name,
            # pgoutput sends text values in the client encoding: UTF-8.
            params={
                "client_encoding": connect.CLIENT_ENCODING,
                "replication": "database",
                "options": options,
            },
        )
        return cls(conn, dsn)

    @property
    def major(self) -> int:
        return commands.major_version(self.server_version)

    @property
    def closed(self) -> bool:
        return self._conn.closed

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def execute(self, command: str, *, context: str | None = None) -> list[tuple[str | None, ...]]:
        """Run one command (replication command or SQL); rows as text (or None)."""
        try:
            results = wait(execute_gen(self.pgconn, command), self.pgconn.socket)
        except psycopg.OperationalError as exc:
            raise ConnectionFailed(f"{context or 'command'}: {exc}") from None
        rows: list[tuple[str | None, ...]] = []
        for res in results:
            if res.status == pq.ExecStatus.FATAL_ERROR:
                raise _server_error(
                    error_from_result(res, encoding="utf-8"), context or command.split()[0]
                )
            if res.status == pq.ExecStatus.TUPLES_OK:
                for r in range(res.ntuples):
                    rows.append(
                        tuple(
                            None if v is None else bytes(v).decode()
                            for v in (res.get_value(r, c) for c in range(res.nfields))
                        )
                    )
        return rows

    def identify_system(self) -> SystemInfo:
        (row,) = self.execute(commands.identify_system())
        system_id, timeline, pos, dbname = row
        assert system_id is not None and timeline is not None and pos is not None
        return SystemInfo(system_id, int(timeline), Lsn.parse(pos), dbname)

    def setting(self, name: str) -> str:
        rows = self.execute(f"SHOW {quote_ident(name)}")
        value = rows[0][0] if rows else None
        return value or ""

    def check_wal_level(self) -> None:
        level = self.setting("wal_level")
        if level != "logical":
            raise WalLevelNotLogical(
                f"the publisher runs with wal_level = {level}; logical decoding needs logical",
                hint="set wal_level = logical in postgresql.conf on the publisher and restart it",
            )

    def missing_publications(self, names: tuple[str, ...]) -> list[str]:
        """Those of ``names`` that do not exist in the connected database."""
        if not names:
            return []
        listed = ",".join(quote_literal(n) for n in names)
        rows = self.execute(
            f"SELECT pubname FROM pg_catalog.pg_publication WHERE pubname IN ({listed})",
            context="checking publications",
        )
        found = {r[0] for r in rows}
        return [n for n in names if n not in found]

    def slot_exists(self, slot_name: str) -> bool:
        rows = self.execute(
            "SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = "
            + quote_literal(slot_name),
            context="checking the slot",
        )
        return bool(rows)

    def create_slot(
        self,
        slot_name: str,
        *,
        temporary: bool = False,
        snapshot: SnapshotAction = "nothing",
        two_phase: bool = False,
    ) -> SlotInfo:
        command = commands.create_replication_slot(
            slot_name,
            self.server_version,
            temporary=temporary,
            snapshot=snapshot,
            two_phase=two_phase,
        )
        (row,) = self.execute(command, context=f"creating replication slot {slot_name!r}")
        name, point, snap, plugin = row
        assert name is not None and point is not None
        logger.info("created replication slot %s at %s", name, point)
        return SlotInfo(name, Lsn.parse(point), snap, plugin or "pgoutput")

    def drop_slot(self, slot_name: str, *, wait: bool = False) -> None:
        self.execute(
            commands.drop_replication_slot(slot_name, wait=wait),
            context=f"dropping replication slot {slot_name!r}",
        )

    def start_replication(
        self,
        slot_name: str,
        options: PgoutputOptions,
        *,
        start_lsn: Lsn = INVALID_LSN,
        status_interval: float = 10.0,
        wait_in_use: float = 0.0,
        receiver_timeout: float | None = None,
    ) -> ReplicationStream:
        """Enter COPY BOTH; ``start_lsn`` 0 means the slot's confirmed position.

        ``receiver_timeout``: seconds without any message before reading raises
        :class:`~pgferry.errors.ReceiverTimeout` (0: never; None:
        :func:`default_receiver_timeout`).

        ``wait_in_use``: for that many seconds, a slot still active for another
        walsender is asked for again. A consumer that restarts right after
        closing its stream needs this: its old walsender releases the slot only
        when it notices the closed connection and exits.
        """
        command, version = commands.start_replication(
            slot_name, start_lsn, options, self.server_version
        )
        deadline = time.monotonic() + wait_in_use
        while True:
            try:
                self.execute(command, context=f"starting replication from slot {slot_name!r}")
            except SlotInUse:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(_IN_USE_PAUSE)
                continue
            break  # COPY BOTH yields no rows; errors were raised by execute
        if self.pgconn.transaction_status != pq.TransactionStatus.ACTIVE:
            raise ServerError(f"START_REPLICATION on slot {slot_name!r} did not enter COPY mode")
        logger.info(
            "streaming slot %s from %s with pgoutput protocol %d", slot_name, start_lsn, version
        )
        return ReplicationStream(
            self,
            slot_name,
            version,
            start_lsn,
            status_interval=status_interval,
            receiver_timeout=receiver_timeout
            if receiver_timeout is not None
            else default_receiver_timeout(),
        )


class ReplicationStream:
    """COPY BOTH reader with standby status feedback. Not thread-safe.

    ``read()`` returns the next :class:`XLogData` or :class:`PrimaryKeepalive`, or
    None when nothing arrived within the timeout. Positions reported to the server
    are those set with :meth:`confirm` (0 until then: the server keeps its own).
    ``receiver_timeout`` (seconds, 0: none): see the module docstring.
    """

    def __init__(
        self,
        connection: ReplicationConnection,
        slot_name: str,
        protocol_version: int,
        start_lsn: Lsn,
        *,
        status_interval: float = 10.0,
        receiver_timeout: float = 0.0,
    ) -> None:
        self.connection = connection
        self.slot_name = slot_name
        self.protocol_version = protocol_version
        self.status_interval = status_interval
        self.receiver_timeout = receiver_timeout
        #: ``time.monotonic()`` of the last message received (data or keepalive).
        self.last_receive = time.monotonic()
        # When the reply asked for after half the receiver timeout was asked
        # (None: not asked since the last message).
        self._pinged: float | None = None
        self.write_lsn = start_lsn
        self.flush_lsn = start_lsn
        self.apply_lsn = start_lsn
        #: Highest WAL position the server has told us about (data or keepalive).
        self.received_lsn = start_lsn
        self.last_server_time = 0
        self.ended = False
        self._pgconn = connection.pgconn
        self._next_status = time.monotonic() + status_interval
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._pgconn.socket, selectors.EVENT_READ)
        # A handled signal (a worker's stop request) ends a wait for data at once.
        self._interrupt = interrupt_fd()
        if self._interrupt is not None:
            self._selector.register(self._interrupt, selectors.EVENT_READ)
        #: Other descriptors that end a wait for data (see :meth:`wake_on`).
        self._wakers: set[int] = set()
        # Messages read by read_batch but not yet handed out by read(), reversed.
        self._pending: list[XLogData | PrimaryKeepalive] = []
        # libpq's functions and the PGconn's address, for the C drain (see .libpq).
        functions = libpq.functions()
        pointer = getattr(self._pgconn, "pgconn_ptr", None)  # not in pq.abc
        self._c_drain = (functions, pointer) if functions is not None and pointer else None

    def wake_on(self, fd: int) -> None:
        """From now on, a wait for data also ends (with nothing read) when ``fd``
        is readable: the consumer's own descriptor, such as its catalog watch's
        connection, which the consumer then reads itself."""
        self._selector.register(fd, selectors.EVENT_READ)
        self._wakers.add(fd)

    @property
    def next_status_time(self) -> float:
        """``time.monotonic()`` value at which the next status update is due."""
        return self._next_status

    def confirm(self, flush: Lsn, *, write: Lsn | None = None, apply: Lsn | None = None) -> None:
        """The consumer has durably processed everything before ``flush``."""
        if flush < self.flush_lsn:
            return  # positions only move forward
        self.flush_lsn = flush
        self.write_lsn = max(self.write_lsn, write if write is not None else flush)
        self.apply_lsn = max(self.apply_lsn, apply if apply is not None else flush)

    def send_status_if_due(self, now: float | None = None) -> None:
        """Send a status update if the status interval has passed (also while the
        consumer is busy and does not read: the walsender's timeout counts)."""
        if (now if now is not None else time.monotonic()) >= self._next_status:
            self.send_status()

    def send_status(self, *, reply_requested: bool = False) -> None:
        """Send a standby status update with the confirmed positions now (none
        once the server has ended the stream)."""
        if self.ended:
            return
        msg = encode_standby_status(
            self.write_lsn,
            self.flush_lsn,
            self.apply_lsn,
            now_pg_us(),
            reply_requested=reply_requested,
        )
        try:
            self._pgconn.put_copy_data(msg)
            wait(flush_gen(self._pgconn), self._pgconn.socket, timeout=30)
        except (psycopg.OperationalError, TimeoutError) as exc:
            raise ConnectionFailed(
                f"sending feedback on slot {self.slot_name!r}: {exc}",
                hint="the publisher or the network stalls; the connection is opened again",
            ) from None
        self._next_status = time.monotonic() + self.status_interval

    def read(self, timeout: float | None = None) -> XLogData | PrimaryKeepalive | None:
        """The next message, or None if none arrived within ``timeout`` seconds."""
        if not self._pending:
            self._pending = self.read_batch(timeout)
            self._pending.reverse()
        return self._pending.pop() if self._pending else None

    def read_batch(
        self, timeout: float | None = None, max_items: int = 2000
    ) -> list[XLogData | PrimaryKeepalive]:
        """Every message already received (up to ``max_items``), waiting up to
        ``timeout`` seconds for the first one; [] on timeout, at the end of the
        stream, or when a handled signal arrives (see :func:`.waiting.wake_on_signals`).

        Draining what libpq has buffered in one call keeps the per-message cost low.
        """
        if self._pending:
            batch, self._pending = self._pending[::-1], []
            return batch
        pgconn = self._pgconn
        if self.ended:
            return []
        deadline = None if timeout is None else time.monotonic() + timeout
        # The socket was read in this call: what is not there did not arrive.
        waited = False
        while True:
            now = time.monotonic()
            self.send_status_if_due(now)
            out, over = self._drain(max_items)
            if over:
                # libpq says -1 once: the COPY is over (after the messages before
                # it), and its result is to be read now.
                self._finish_copy()
            if out:
                self._account(out)
                return out
            if self.ended:
                return out
            # Nothing buffered: wait for the socket, but not past the next status
            # update, nor the receiver timeout's next step.
            wake = self._next_status
            if self.receiver_timeout and waited:
                wake = min(wake, self._check_silence(now))
            if deadline is not None:
                if now >= deadline:
                    return out
                wake = min(wake, deadline)
            ready = self._selector.select(max(0.0, wake - time.monotonic()))
            if self._interrupt is not None and any(key.fd == self._interrupt for key, _ in ready):
                take_interrupt()
                return out
            if any(key.fd in self._wakers for key, _ in ready):
                return out
            try:
                pgconn.consume_input()
            except psycopg.OperationalError as exc:
                raise self._stream_error(str(exc)) from None
            waited = True

    def _drain(self, max_items: int) -> tuple[list[XLogData | PrimaryKeepalive], bool]:
        """The messages libpq has buffered, up to ``max_items``, and whether the
        COPY ended after them."""
        out: list[XLogData | PrimaryKeepalive]
        status: int
        if self._c_drain is not None:
            functions, pointer = self._c_drain
            assert SPEEDUPS is not None
            out, status = SPEEDUPS.drain(
                functions.get_copy_data, functions.freemem, pointer, max_items
            )
            if status == -2:
                raise self._stream_error(libpq.error_message(self._pgconn))
        else:
            out = []
            append = out.append
            get_copy_data = self._pgconn.get_copy_data
            status = 1
            try:
                while len(out) < max_items:
                    status, data = get_copy_data(1)
                    if status <= 0:
                        break
                    append(parse_copy_data(data))
            except psycopg.OperationalError as exc:
                raise self._stream_error(str(exc)) from None
        return out, status == -1

    def _check_silence(self, now: float) -> float:
        """Nothing arrived: past half the receiver timeout ask the walsender for a
        reply; past the whole, with that reply overdue too, give up. Returns when
        to look again."""
        timeout = self.receiver_timeout
        silent = now - self.last_receive
        if self._pinged is None:
            if silent < timeout / 2:
                return self.last_receive + timeout / 2
            self.send_status(reply_requested=True)
            self._pinged = now
        overdue = max(self.last_receive + timeout, self._pinged + timeout / 2)
        if now < overdue:
            return overdue
        raise ReceiverTimeout(
            f"replication from slot {self.slot_name!r}: nothing received from the publisher"
            f" for {silent:.0f} s, not even an answer to a keepalive request (receiver timeout"
            f" {timeout:g} s)",
            hint="the publisher, its walsender or the network stalls; the connection is given"
            f" up and opened again (pgferry run --receiver-timeout or {RECEIVER_TIMEOUT_ENV}"
            " sets the timeout, 0 turns it off)",
        )

    def _account(self, batch: list[XLogData | PrimaryKeepalive]) -> None:
        """Track positions and answer keepalives that ask for a reply."""
        self.last_receive = time.monotonic()
        self._pinged = None
        reply = False
        received = self.received_lsn
        for msg in batch:
            if type(msg) is XLogData:
                if msg.data_start > received:
                    received = msg.data_start
            else:
                assert isinstance(msg, PrimaryKeepalive)
                if msg.wal_end > received:
                    received = msg.wal_end
                self.last_server_time = msg.send_time
                reply = reply or msg.reply_requested
        self.received_lsn = received
        if reply:
            self.send_status()

    def _finish_copy(self) -> None:
        """The server ended COPY: surface its error, if any."""
        self.ended = True
        while (res := self._pgconn.get_result()) is not None:
            if res.status == pq.ExecStatus.FATAL_ERROR:
                raise _server_error(
                    error_from_result(res, encoding="utf-8"),
                    f"replication from slot {self.slot_name!r} ended",
                )

    def _stream_error(self, detail: str) -> PgferryError:
        while (res := self._pgconn.get_result()) is not None:
            if res.status == pq.ExecStatus.FATAL_ERROR:
                return _server_error(
                    error_from_result(res, encoding="utf-8"),
                    f"replication from slot {self.slot_name!r}",
                )
        return ConnectionFailed(f"replication from slot {self.slot_name!r}: {detail}")

    def close(self) -> None:
        """End COPY from our side (sending final feedback) and close the connection."""
        self._selector.close()
        if self.connection.closed:
            return
        try:
            if not self.ended:
                self.send_status()
                self._pgconn.put_copy_end()
                wait(flush_gen(self._pgconn), self._pgconn.socket, timeout=10)
        except (PgferryError, psycopg.Error, TimeoutError) as exc:
            logger.debug("ignoring error while closing the stream: %s", exc)
        finally:
            self.connection.close()
