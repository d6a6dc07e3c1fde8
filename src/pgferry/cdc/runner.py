"""The ``pgferry stream`` loop: slot -> pump -> assembler -> JSON lines -> feedback.

Delivery is at-least-once: the slot's flush position is confirmed only up to the
end of the last transaction whose lines were written *and flushed* to the output,
never past a transaction still waiting for its outcome (streamed or prepared), so
after a crash a restart re-delivers from the last confirmed position: no gap,
duplicates only after it. Between transactions, a keepalive's WAL end may be
confirmed too (nothing before it is pending), which lets the slot advance over WAL
that holds nothing for our publications, as PostgreSQL's own apply worker does.

Stops cleanly when :meth:`StreamRunner.request_stop` is called (signal handlers) or
once ``end_lsn`` is reached between two transactions: a transaction that commits
after ``end_lsn`` is not emitted, and the stream stops before it. Streamed or
prepared transactions still waiting for their outcome then are not emitted
either; the confirmed position stays before them, so the next run gets them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import IO

from pgferry.assembler import Assembler
from pgferry.cdc.jsonlines import JsonLinesWriter
from pgferry.errors import PublicationNotFound, SlotAlreadyExists, SlotNotFound
from pgferry.protocol.lsn import INVALID_LSN, Lsn
from pgferry.protocol.relations import RelationCache
from pgferry.pump import Bound, Pump
from pgferry.stream import PgoutputOptions, ReplicationConnection

logger = logging.getLogger("pgferry.cdc")


@dataclass(frozen=True)
class StreamConfig:
    dsn: str
    slot: str
    options: PgoutputOptions
    create_slot: bool = False
    temporary: bool = False
    start_lsn: Lsn = INVALID_LSN
    end_lsn: Lsn | None = None
    with_tx: bool = False
    status_interval: float = 10.0
    #: How often written lines are flushed and confirmed while data flows.
    confirm_interval: float = 1.0
    #: Turn ``streaming`` off on servers that cannot stream (13) instead of failing.
    streaming_if_supported: bool = False


class StreamRunner:
    def __init__(self, config: StreamConfig, out: IO[bytes]) -> None:
        self.config = config
        self.out = out
        self._stop = False

    def request_stop(self) -> None:
        self._stop = True

    def _prepare(self, conn: ReplicationConnection) -> None:
        cfg = self.config
        conn.check_wal_level()
        missing = conn.missing_publications(cfg.options.publication_names)
        if missing:
            names = ", ".join(missing)
            raise PublicationNotFound(
                f"publication(s) {names} do not exist in the publisher database",
                hint="create them (CREATE PUBLICATION, or pgferry publication create) "
                "or correct --publication",
            )
        if cfg.create_slot:
            if not cfg.temporary and conn.slot_exists(cfg.slot):
                raise SlotAlreadyExists(
                    f"replication slot {cfg.slot!r} already exists",
                    hint="omit --create-slot to stream from it",
                )
            conn.create_slot(cfg.slot, temporary=cfg.temporary)
        elif not conn.slot_exists(cfg.slot):
            raise SlotNotFound(
                f"replication slot {cfg.slot!r} does not exist",
                hint="add --create-slot to create it",
            )

    def run(self) -> int:
        """Stream until stopped; returns the number of lines written."""
        cfg = self.config
        conn = ReplicationConnection.connect(cfg.dsn, application_name="pgferry stream")
        options = cfg.options
        if cfg.streaming_if_supported and conn.major < 14:
            options = replace(options, streaming="off")
        try:
            self._prepare(conn)
            stream = conn.start_replication(
                cfg.slot,
                options,
                start_lsn=cfg.start_lsn,
                status_interval=cfg.status_interval,
            )
        except BaseException:
            conn.close()
            raise
        relations = RelationCache()
        writer = JsonLinesWriter(self.out, relations, with_tx=cfg.with_tx)
        assembler = Assembler(writer, stream.protocol_version, relations=relations)
        end = None if cfg.end_lsn is None else Bound(cfg.end_lsn, inclusive=True)
        pump = Pump(stream, assembler, bound=end)

        def confirm() -> None:
            writer.flush()
            pump.confirm(writer.written_lsn)

        next_confirm = time.monotonic() + cfg.confirm_interval
        try:
            while not self._stop:
                if not pump.pump(timeout=0.5).items:
                    if stream.ended:
                        break
                    confirm()
                    continue
                if pump.finished:
                    logger.info("reached --end-lsn %s", cfg.end_lsn)
                    break
                if time.monotonic() >= next_confirm:
                    confirm()
                    next_confirm = time.monotonic() + cfg.confirm_interval
            confirm()
            stream.send_status()
        finally:
            stream.close()
        return writer.lines
