"""The ``pgferry stream`` loop: slot -> decoder -> assembler -> JSON lines -> feedback.

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

from pgferry.assembler import Assembler, delivery_position
from pgferry.cdc.jsonlines import JsonLinesWriter
from pgferry.errors import PublicationNotFound, SlotAlreadyExists, SlotNotFound
from pgferry.protocol.envelope import PrimaryKeepalive, XLogData
from pgferry.protocol.lsn import INVALID_LSN, Lsn
from pgferry.protocol.pgoutput import PgoutputDecoder
from pgferry.protocol.relations import RelationCache
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
        decoder = PgoutputDecoder(stream.protocol_version)
        relations = RelationCache()
        writer = JsonLinesWriter(self.out, relations, with_tx=cfg.with_tx)
        assembler = Assembler(writer, stream.protocol_version, relations=relations)
        end_lsn = cfg.end_lsn
        idle_lsn = INVALID_LSN  # a keepalive position with nothing pending before it
        next_confirm = time.monotonic() + cfg.confirm_interval

        def confirm() -> None:
            writer.flush()
            candidate = max(writer.written_lsn, idle_lsn)
            floor = assembler.restart_floor()
            if floor is not None:
                candidate = min(candidate, floor)
            if candidate > stream.flush_lsn:
                stream.confirm(candidate)
                stream.send_status()  # at most once per confirm interval

        decode = decoder.decode
        feed = assembler.feed
        try:
            while not self._stop:
                batch = stream.read_batch(timeout=0.5)
                if not batch:
                    if stream.ended:
                        break
                    confirm()
                    continue
                for item in batch:
                    if type(item) is XLogData:
                        payload = item.payload
                        msg = decode(payload)
                        if end_lsn is not None:
                            position = delivery_position(msg)
                            if position is not None and position > end_lsn:
                                logger.info("reached --end-lsn %s", end_lsn)
                                self._stop = True
                                break
                            feed(msg, payload, item.data_start)
                            if assembler.between_transactions and (
                                writer.written_lsn >= end_lsn or item.data_start >= end_lsn
                            ):
                                self._stop = True
                                break
                        else:
                            feed(msg, payload, item.data_start)
                    else:
                        assert isinstance(item, PrimaryKeepalive)
                        if assembler.between_transactions:
                            idle_lsn = item.wal_end
                            if end_lsn is not None and item.wal_end >= end_lsn:
                                self._stop = True
                                break
                if time.monotonic() >= next_confirm:
                    confirm()
                    next_confirm = time.monotonic() + cfg.confirm_interval
            confirm()
            stream.send_status()
        finally:
            stream.close()
        return writer.lines
