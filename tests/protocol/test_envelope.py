"""The streaming replication envelope: XLogData and keepalive parsing, status updates."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta

import pytest

from pgferry.errors import ProtocolError
from pgferry.protocol import (
    Lsn,
    PrimaryKeepalive,
    XLogData,
    encode_standby_status,
    parse_copy_data,
)
from pgferry.protocol.timestamps import PG_EPOCH, from_datetime, now_pg_us, to_datetime

from . import encoder as enc


def xlogdata(start: int, end: int, time: int, payload: bytes) -> bytes:
    return b"w" + enc.int64(start) + enc.int64(end) + enc.sint64(time) + payload


def keepalive(end: int, time: int, reply: int) -> bytes:
    return b"k" + enc.int64(end) + enc.sint64(time) + enc.int8(reply)


def test_xlogdata() -> None:
    payload = enc.begin(0x16B3748, 5, 9)
    msg = parse_copy_data(xlogdata(0x16B3700, 0x16B3800, 739_000_000_000, payload))
    assert msg == XLogData(Lsn(0x16B3700), Lsn(0x16B3800), 739_000_000_000, payload)
    assert isinstance(msg, XLogData)
    assert type(msg.data_start) is Lsn and type(msg.wal_end) is Lsn
    assert type(msg.payload) is bytes


def test_xlogdata_extremes_and_empty_payload() -> None:
    msg = parse_copy_data(xlogdata(2**64 - 1, 0, -1, b""))
    assert msg == XLogData(Lsn(2**64 - 1), Lsn(0), -1, b"")


def test_xlogdata_payload_is_everything_after_the_header() -> None:
    payload = bytes(range(256)) * 4
    msg = parse_copy_data(xlogdata(1, 2, 3, payload))
    assert isinstance(msg, XLogData)
    assert msg.payload == payload


@pytest.mark.parametrize("size", [1, 2, 9, 17, 24])
def test_short_xlogdata(size: int) -> None:
    data = xlogdata(1, 2, 3, b"")[:size]
    with pytest.raises(ProtocolError) as info:
        parse_copy_data(data)
    assert info.value.offset == size
    assert "25" in str(info.value)


@pytest.mark.parametrize(("flag", "reply"), [(0, False), (1, True), (2, True), (255, True)])
def test_keepalive(flag: int, reply: bool) -> None:
    msg = parse_copy_data(keepalive(0x3000000, -5, flag))
    assert msg == PrimaryKeepalive(Lsn(0x3000000), -5, reply)
    assert isinstance(msg, PrimaryKeepalive)
    assert msg.reply_requested is reply
    assert type(msg.wal_end) is Lsn


@pytest.mark.parametrize("size", [1, 9, 17, 19, 30])
def test_keepalive_wrong_size(size: int) -> None:
    data = (keepalive(1, 2, 1) + b"\x00" * 20)[:size]
    with pytest.raises(ProtocolError) as info:
        parse_copy_data(data)
    assert 0 <= info.value.offset <= size


def test_empty_and_unknown_copy_data() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_copy_data(b"")
    assert info.value.offset == 0
    for kind in (b"r", b"x", b"\x00", b"W", b"K"):
        with pytest.raises(ProtocolError) as info:
            parse_copy_data(kind + b"\x00" * 24)
        assert info.value.offset == 0


def test_standby_status_byte_layout() -> None:
    data = encode_standby_status(0x16B3748, 0x16B3700, 0x16B3000, 739_000_000_123)
    expected = (
        b"r"
        + bytes.fromhex("00000000016b3748")  # written
        + bytes.fromhex("00000000016b3700")  # flushed
        + bytes.fromhex("00000000016b3000")  # applied
        + (739_000_000_123).to_bytes(8, "big", signed=True)  # client time
        + b"\x00"  # no reply requested
    )
    assert data == expected
    assert len(data) == 34


def test_standby_status_reply_flag_and_extremes() -> None:
    data = encode_standby_status(2**64 - 1, 0, 1, -1, reply_requested=True)
    kind, write, flush, apply, time, reply = struct.unpack(">cQQQqB", data)
    assert (kind, write, flush, apply, time, reply) == (b"r", 2**64 - 1, 0, 1, -1, 1)


def test_standby_status_accepts_lsn() -> None:
    lsn = Lsn.parse("1/2")
    assert encode_standby_status(lsn, lsn, lsn, 0) == encode_standby_status(
        (1 << 32) | 2, (1 << 32) | 2, (1 << 32) | 2, 0
    )


def test_protocol_timestamps() -> None:
    assert to_datetime(0) == datetime(2000, 1, 1, tzinfo=UTC)
    assert to_datetime(-1) == PG_EPOCH - timedelta(microseconds=1)
    moment = datetime(2024, 2, 29, 12, 34, 56, 789012, tzinfo=UTC)
    assert to_datetime(from_datetime(moment)) == moment
    assert from_datetime(PG_EPOCH + timedelta(days=1, microseconds=3)) == 86_400_000_003
    now = now_pg_us()
    assert abs(to_datetime(now) - datetime.now(UTC)) < timedelta(seconds=5)
