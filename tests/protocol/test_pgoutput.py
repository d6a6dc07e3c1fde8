"""The pgoutput decoder against the test-side encoder (written from the docs' layouts).

Round trips for every message type and protocol version, version gating, the
streamed-block state (xid prefix), and malformed input -> ProtocolError with the
byte offset where decoding failed.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pgferry.protocol
from pgferry.errors import ProtocolError
from pgferry.protocol import (
    UNCHANGED_TOAST,
    Begin,
    BeginPrepare,
    BinaryValue,
    Column,
    Commit,
    CommitPrepared,
    Delete,
    Insert,
    LogicalMessage,
    Lsn,
    Message,
    Origin,
    PgoutputDecoder,
    Prepare,
    Relation,
    RelationCache,
    RollbackPrepared,
    StreamAbort,
    StreamCommit,
    StreamPrepare,
    StreamStart,
    StreamStop,
    Truncate,
    Type,
    Update,
)

from . import encoder as enc
from .encoder import MIN_VERSION, STREAMABLE, encode, typed

VERSIONS = (1, 2, 3, 4)
STREAM_XID = 900
SUBXID = 901

COLUMNS = (Column("id", 23, -1, True), Column("payload", 25, -1, False))
COLUMNS_TYPMOD = (Column("name", 1043, 68, False), Column("ü-col", 4294967295, -5, True))

#: One or more concrete values of every message type (outside a streamed block).
SAMPLES: list[Message] = [
    Begin(Lsn(0x16B3748), 739_000_000_123, 735),
    Begin(Lsn(0xFFFFFFFFFFFFFFFF), -1, 0xFFFFFFFF),
    Commit(0, Lsn(0x16B3748), Lsn(0x16B3780), 739_000_000_123),
    Origin(Lsn(0x1234), "node_a"),
    Origin(Lsn(0), ""),
    Relation(None, 16384, "public", "t", "d", COLUMNS),
    Relation(None, 16385, "", "Grüße", "f", COLUMNS_TYPMOD),
    Relation(None, 16386, "s", "empty", "n", ()),
    Relation(None, 16387, "s", "by_index", "i", COLUMNS),
    Type(None, 16390, "public", "mood"),
    Insert(None, 16384, (b"1", b"hello")),
    Insert(None, 16384, (b"", None, UNCHANGED_TOAST, BinaryValue(b"\x00\x01\xff"))),
    Insert(None, 16384, ()),
    Update(None, 16384, None, None, (b"1", UNCHANGED_TOAST)),
    Update(None, 16384, "K", (b"1", None), (b"2", b"x")),
    Update(None, 16384, "O", (b"1", b"old"), (b"1", b"new")),
    Delete(None, 16384, "K", (b"1", None)),
    Delete(None, 16384, "O", (b"1", BinaryValue(b"\x07"))),
    Truncate(None, 3, (16384, 16385)),
    Truncate(None, 0, ()),
    LogicalMessage(None, True, Lsn(0x3000), "app", b"payload\x00\xff"),
    LogicalMessage(None, False, Lsn(0x3001), "", b""),
    StreamStart(STREAM_XID, True),
    StreamStart(STREAM_XID, False),
    StreamCommit(STREAM_XID, 0, Lsn(0x5000), Lsn(0x5030), 42),
    StreamAbort(STREAM_XID, SUBXID, None, None),
    StreamAbort(STREAM_XID, STREAM_XID, None, None),
    StreamAbort(STREAM_XID, SUBXID, Lsn(0x6000), 77),  # protocol 4, streaming = parallel
    BeginPrepare(Lsn(0x7000), Lsn(0x7100), 5, 1000, "gid-1"),
    Prepare(0, Lsn(0x7000), Lsn(0x7100), 5, 1000, "gid-1"),
    CommitPrepared(0, Lsn(0x8000), Lsn(0x8100), 6, 1000, "gid-1"),
    RollbackPrepared(0, Lsn(0x7100), Lsn(0x8200), 5, 7, 1000, "été"),
    StreamPrepare(0, Lsn(0x9000), Lsn(0x9100), 8, STREAM_XID, ""),
]


def min_version(msg: Message) -> int:
    if isinstance(msg, StreamAbort) and msg.abort_lsn is not None:
        return 4
    return MIN_VERSION[type(msg)]


def streamed(msg: Message, xid: int) -> Message:
    """The change/metadata message as sent inside a streamed block by ``xid``."""
    if isinstance(msg, (Relation, Type, Insert, Update, Delete, Truncate, LogicalMessage)):
        return msg._replace(xid=xid)
    raise AssertionError(f"{msg!r} is not sent inside streamed blocks")


STREAMED_SAMPLES: list[Message] = [
    streamed(m, xid) for m in SAMPLES if isinstance(m, STREAMABLE) for xid in (STREAM_XID, SUBXID)
]


def sample_id(msg: Message) -> str:
    return type(msg).__name__


def case_id(case: tuple[Message, int]) -> str:
    return f"{type(case[0]).__name__}-v{case[1]}"


#: (message, protocol version) for every version that carries the message.
ALLOWED = [(m, v) for m in SAMPLES for v in VERSIONS if v >= min_version(m)]
#: (message, protocol version) for the versions too old for it.
TOO_OLD = [(m, v) for m in [*SAMPLES, StreamStop()] for v in VERSIONS if v < min_version(m)]


def in_stream(version: int, xid: int = STREAM_XID) -> PgoutputDecoder:
    """A decoder that has just decoded Stream Start for ``xid``."""
    decoder = PgoutputDecoder(version)
    assert decoder.decode(enc.stream_start(xid, True)) == StreamStart(xid, True)
    assert decoder.stream_xid == xid
    return decoder


def error_of(decoder: PgoutputDecoder, payload: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decoder.decode(payload)
    assert 0 <= info.value.offset <= len(payload)
    assert f"offset {info.value.offset}" in str(info.value)
    return info.value


# -- the encoder itself, against the docs' byte layouts ------------------------------------


def test_encoder_matches_documented_layouts() -> None:
    # Begin: Byte1 'B', Int64 final LSN, Int64 commit time, Int32 xid.
    assert enc.begin(0x16B3748, 1, 0x2A) == bytes.fromhex(
        "4200000000016b374800000000000000010000002a"
    )
    # Insert: 'I', [Int32 xid], Int32 relid, 'N', Int16 ncols, 't' Int32 len bytes, 'n'.
    assert enc.insert(0x4000, [b"1", None]) == bytes.fromhex("49000040004e00027400000001316e")
    assert enc.insert(0x4000, [UNCHANGED_TOAST, BinaryValue(b"\x05")], xid=7) == bytes.fromhex(
        "4900000007000040004e000275620000000105"
    )
    # Stream Abort: 'A', Int32 xid, Int32 subxid, [Int64 abort LSN, Int64 abort time].
    assert len(enc.stream_abort(1, 2)) == 9
    assert len(enc.stream_abort(1, 2, 3, 4)) == 25
    # Relation column: Int8 flags, String name, Int32 type OID, Int32 typmod.
    assert enc.relation(1, "", "t", "d", [Column("a", 23, -1, True)]) == bytes.fromhex(
        "520000000100740064000101610000000017ffffffff"
    )
    # Fixed sizes of the framing messages.
    assert len(enc.commit(0, 1, 2, 3)) == 26
    assert len(enc.stream_commit(1, 0, 2, 3, 4)) == 30
    assert len(enc.stream_start(1, True)) == 6
    assert len(enc.begin_prepare(1, 2, 3, 4, "")) == 30
    assert len(enc.prepare(0, 1, 2, 3, 4, "")) == 31
    assert len(enc.rollback_prepared(0, 1, 2, 3, 4, 5, "")) == 39


def test_package_reexports_the_same_error_class() -> None:
    assert pgferry.protocol.ProtocolError is ProtocolError


# -- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize(("msg", "version"), ALLOWED, ids=list(map(case_id, ALLOWED)))
def test_round_trip_outside_stream(msg: Message, version: int) -> None:
    decoded = PgoutputDecoder(version).decode(encode(msg))
    assert typed(decoded) == typed(msg)


@pytest.mark.parametrize("version", (2, 3, 4))
@pytest.mark.parametrize("msg", STREAMED_SAMPLES, ids=sample_id)
def test_round_trip_inside_stream(msg: Message, version: int) -> None:
    decoder = in_stream(version)
    decoded = decoder.decode(encode(msg, in_stream=True))
    assert typed(decoded) == typed(msg)
    assert decoder.stream_xid == STREAM_XID  # still inside the block


@pytest.mark.parametrize("version", (2, 3, 4))
def test_stream_stop_round_trip(version: int) -> None:
    decoder = in_stream(version)
    assert decoder.decode(enc.stream_stop()) == StreamStop()
    assert decoder.stream_xid is None


@settings(max_examples=400, deadline=None)
@given(version=st.sampled_from(VERSIONS), data=st.data())
def test_round_trip_property_outside_stream(version: int, data: st.DataObject) -> None:
    msg = data.draw(enc.outside_stream_messages(version))
    decoded = PgoutputDecoder(version).decode(encode(msg))
    assert typed(decoded) == typed(msg)


@settings(max_examples=300, deadline=None)
@given(
    version=st.sampled_from((2, 3, 4)),
    top=enc.U32,
    xid=enc.U32,
    data=st.data(),
)
def test_round_trip_property_inside_stream(
    version: int, top: int, xid: int, data: st.DataObject
) -> None:
    msg = data.draw(enc.streamable_messages(xid))
    decoder = in_stream(version, top)
    assert typed(decoder.decode(encode(msg))) == typed(msg)


def test_signed_and_unsigned_fields() -> None:
    # Timestamps and type modifiers are signed; LSNs, OIDs and xids unsigned.
    msg = PgoutputDecoder(1).decode(enc.begin(2**64 - 1, -(2**63), 2**32 - 1))
    assert msg == Begin(Lsn(2**64 - 1), -(2**63), 2**32 - 1)
    rel = PgoutputDecoder(1).decode(enc.relation(2**32 - 1, "n", "r", "d", COLUMNS_TYPMOD))
    assert isinstance(rel, Relation)
    assert rel.relation_id == 2**32 - 1
    assert [c.type_modifier for c in rel.columns] == [68, -5]
    assert [c.type_oid for c in rel.columns] == [1043, 4294967295]


def test_lsn_fields_are_lsn_instances() -> None:
    commit = PgoutputDecoder(1).decode(enc.commit(0, 0x10, 0x20, 0))
    assert isinstance(commit, Commit)
    assert isinstance(commit.commit_lsn, Lsn) and isinstance(commit.end_lsn, Lsn)
    assert str(commit.end_lsn) == "0/20"


def test_column_key_flag_uses_bit_one() -> None:
    payload = bytearray(enc.relation(1, "s", "t", "d", [Column("a", 23, -1, False)]))
    flags_at = 1 + 4 + 2 + 2 + 1 + 2
    assert payload[flags_at] == 0
    payload[flags_at] = 0x03  # other bits are ignored, bit 1 is "part of the key"
    rel = PgoutputDecoder(1).decode(bytes(payload))
    assert isinstance(rel, Relation)
    assert rel.columns[0].is_key is True


def test_truncate_option_bits() -> None:
    for options, cascade, restart in ((0, False, False), (1, True, False), (2, False, True)):
        msg = PgoutputDecoder(1).decode(enc.truncate(options, [1]))
        assert isinstance(msg, Truncate)
        assert (msg.cascade, msg.restart_identity) == (cascade, restart)


def test_message_transactional_flag() -> None:
    for flags, transactional in ((0, False), (1, True)):
        msg = PgoutputDecoder(1).decode(enc.message(bool(flags), 5, "p", b"c"))
        assert isinstance(msg, LogicalMessage)
        assert msg.transactional is transactional
        assert msg.prefix == "p" and msg.content == b"c" and msg.lsn == 5


# -- values --------------------------------------------------------------------------------


def test_value_kinds_decode_to_distinct_types() -> None:
    msg = PgoutputDecoder(1).decode(
        enc.insert(1, [b"text", BinaryValue(b"\x00\x01"), None, UNCHANGED_TOAST, b""])
    )
    assert isinstance(msg, Insert)
    text, binary, null, toast, empty = msg.new
    assert type(text) is bytes and text == b"text"
    assert type(binary) is BinaryValue and binary == b"\x00\x01"
    assert null is None
    assert toast is UNCHANGED_TOAST
    assert type(empty) is bytes and empty == b""  # an empty string is not NULL


def test_text_values_are_raw_bytes() -> None:
    raw = b"\x00\xff\xfe not utf-8"
    msg = PgoutputDecoder(1).decode(enc.insert(1, [raw]))
    assert isinstance(msg, Insert)
    assert msg.new == (raw,)


def test_large_value_and_many_columns() -> None:
    big = bytes(range(256)) * 300
    values = [big] + [None] * 1599
    msg = PgoutputDecoder(1).decode(enc.insert(7, values))
    assert isinstance(msg, Insert)
    assert len(msg.new) == 1600
    assert msg.new[0] == big
    assert msg.new[1:] == (None,) * 1599


# -- protocol version gating ---------------------------------------------------------------


@pytest.mark.parametrize(("msg", "version"), TOO_OLD, ids=list(map(case_id, TOO_OLD)))
def test_message_newer_than_the_protocol_is_rejected(msg: Message, version: int) -> None:
    needed = min_version(msg)
    err = error_of(PgoutputDecoder(version), encode(msg))
    if isinstance(msg, StreamAbort) and needed == 4 and version >= 2:
        # protocols 2 and 3 know only the short form: the rest is trailing bytes
        assert err.offset == 9
    else:
        assert err.offset == 0
        assert f"needs pgoutput protocol {MIN_VERSION[type(msg)]}" in str(err)


def test_stream_messages_rejected_on_protocol_1() -> None:
    decoder = PgoutputDecoder(1)
    for payload in (enc.stream_start(1, True), enc.stream_stop(), enc.stream_abort(1, 1)):
        assert "protocol 2" in str(error_of(decoder, payload))
    assert decoder.stream_xid is None


def test_prepare_messages_rejected_on_protocol_2() -> None:
    decoder = PgoutputDecoder(2)
    for payload in (
        enc.begin_prepare(1, 2, 3, 4, "g"),
        enc.prepare(0, 1, 2, 3, 4, "g"),
        enc.commit_prepared(0, 1, 2, 3, 4, "g"),
        enc.rollback_prepared(0, 1, 2, 3, 4, 5, "g"),
        enc.stream_prepare(0, 1, 2, 3, 4, "g"),
    ):
        err = error_of(decoder, payload)
        assert err.offset == 0 and "protocol 3" in str(err)


@pytest.mark.parametrize("version", (0, 5, -1))
def test_unsupported_protocol_version(version: int) -> None:
    with pytest.raises(ProtocolError):
        PgoutputDecoder(version)


def test_stream_abort_forms_on_protocol_4() -> None:
    decoder = PgoutputDecoder(4)
    assert decoder.decode(enc.stream_abort(5, 6)) == StreamAbort(5, 6, None, None)
    long = decoder.decode(enc.stream_abort(5, 6, 0x99, -3))
    assert typed(long) == typed(StreamAbort(5, 6, Lsn(0x99), -3))
    # any other length is malformed
    err = error_of(decoder, enc.stream_abort(5, 6, 0x99, -3) + b"\x00")
    assert err.offset in (9, 25)
    error_of(decoder, enc.stream_abort(5, 6) + b"\x00" * 8)


# -- streamed-block state ------------------------------------------------------------------


@pytest.mark.parametrize("version", (2, 3, 4))
def test_xid_prefix_only_between_stream_start_and_stop(version: int) -> None:
    decoder = PgoutputDecoder(version)
    plain = enc.insert(16384, [b"a"])
    assert decoder.decode(plain) == Insert(None, 16384, (b"a",))
    decoder.decode(enc.stream_start(STREAM_XID, True))
    # inside: the first Int32 is the (sub)transaction's xid
    assert decoder.decode(enc.insert(16384, [b"a"], xid=SUBXID)) == Insert(SUBXID, 16384, (b"a",))
    assert decoder.decode(enc.truncate(0, [1], xid=STREAM_XID)) == Truncate(STREAM_XID, 0, (1,))
    decoder.decode(enc.stream_stop())
    # after Stop: no prefix again
    assert decoder.decode(plain) == Insert(None, 16384, (b"a",))
    # a second block of another transaction
    decoder.decode(enc.stream_start(77, False))
    assert decoder.stream_xid == 77
    rel = decoder.decode(enc.relation(1, "s", "t", "d", COLUMNS, xid=77))
    assert isinstance(rel, Relation) and rel.xid == 77


@pytest.mark.parametrize("version", (2, 3, 4))
def test_unprefixed_change_inside_stream_is_not_taken_as_plain(version: int) -> None:
    # Without the prefix the bytes are read with an xid first: the result must not be
    # silently the plain message.
    decoder = in_stream(version)
    payload = enc.insert(16384, [b"a"])
    try:
        msg = decoder.decode(payload)
    except ProtocolError:
        return
    assert msg != Insert(None, 16384, (b"a",))


FORBIDDEN_IN_STREAM: list[bytes] = [
    enc.begin(1, 2, 3),
    enc.commit(0, 1, 2, 3),
    enc.stream_start(5, True),
    enc.stream_commit(STREAM_XID, 0, 1, 2, 3),
    enc.stream_abort(STREAM_XID, SUBXID),
    enc.begin_prepare(1, 2, 3, 4, "g"),
    enc.prepare(0, 1, 2, 3, 4, "g"),
    enc.commit_prepared(0, 1, 2, 3, 4, "g"),
    enc.rollback_prepared(0, 1, 2, 3, 4, 5, "g"),
    enc.stream_prepare(0, 1, 2, 3, STREAM_XID, "g"),
]


@pytest.mark.parametrize("payload", FORBIDDEN_IN_STREAM, ids=lambda p: chr(p[0]))
def test_framing_message_inside_stream_is_an_error(payload: bytes) -> None:
    decoder = in_stream(4)
    err = error_of(decoder, payload)
    assert err.offset == 0
    assert "inside the streamed block" in str(err)
    # the block is still open and closes normally
    assert decoder.stream_xid == STREAM_XID
    assert decoder.decode(enc.stream_stop()) == StreamStop()


def test_origin_is_allowed_inside_stream_without_prefix() -> None:
    decoder = in_stream(2)
    assert decoder.decode(enc.origin(0x10, "up")) == Origin(Lsn(0x10), "up")


def test_stream_stop_without_start() -> None:
    decoder = PgoutputDecoder(2)
    assert error_of(decoder, enc.stream_stop()).offset == 0
    decoder.decode(enc.stream_start(1, True))
    decoder.decode(enc.stream_stop())
    error_of(decoder, enc.stream_stop())


def test_malformed_stream_start_does_not_open_a_block() -> None:
    decoder = PgoutputDecoder(2)
    error_of(decoder, enc.stream_start(1, True) + b"\x00")
    error_of(decoder, enc.stream_start(1, True)[:-1])
    assert decoder.stream_xid is None
    assert decoder.decode(enc.insert(1, [])) == Insert(None, 1, ())


def test_reset_forgets_the_open_block() -> None:
    decoder = in_stream(3)
    decoder.reset()
    assert decoder.stream_xid is None
    assert decoder.decode(enc.begin(1, 2, 3)) == Begin(Lsn(1), 2, 3)


def test_stream_start_first_segment_flag() -> None:
    assert PgoutputDecoder(2).decode(enc.stream_start(3, True)) == StreamStart(3, True)
    assert PgoutputDecoder(2).decode(enc.stream_start(3, False)) == StreamStart(3, False)


# -- malformed input -----------------------------------------------------------------------


def test_empty_message() -> None:
    assert error_of(PgoutputDecoder(4), b"").offset == 0


@pytest.mark.parametrize("first", [b"Z", b"\x00", b"x", b"\xff", b"w", b"k"])
def test_unknown_message_type(first: bytes) -> None:
    err = error_of(PgoutputDecoder(4), first + b"\x00" * 30)
    assert err.offset == 0
    assert "unknown" in str(err)


@pytest.mark.parametrize("msg", [m for m in SAMPLES if min_version(m) <= 4], ids=sample_id)
def test_trailing_bytes_outside_stream(msg: Message) -> None:
    payload = encode(msg)
    err = error_of(PgoutputDecoder(4), payload + b"\x00")
    if isinstance(msg, StreamAbort) and msg.abort_lsn is not None:
        assert err.offset in (9, 25)
    else:
        assert err.offset == len(payload)
        assert "trailing" in str(err)


@pytest.mark.parametrize("msg", STREAMED_SAMPLES, ids=sample_id)
def test_trailing_bytes_inside_stream(msg: Message) -> None:
    payload = encode(msg, in_stream=True)
    err = error_of(in_stream(4), payload + b"!")
    assert err.offset == len(payload)


def test_stream_stop_trailing_byte() -> None:
    assert error_of(in_stream(2), b"E\x00").offset == 1


@pytest.mark.parametrize("msg", SAMPLES, ids=sample_id)
def test_every_truncation_is_an_error(msg: Message) -> None:
    payload = encode(msg)
    for size in range(1, len(payload)):
        if isinstance(msg, StreamAbort) and size == 9:
            continue  # the protocol 2 form of the message is a prefix of the v4 one
        error_of(PgoutputDecoder(4), payload[:size])


@pytest.mark.parametrize("msg", STREAMED_SAMPLES, ids=sample_id)
def test_every_truncation_inside_stream_is_an_error(msg: Message) -> None:
    payload = encode(msg, in_stream=True)
    for size in range(1, len(payload)):
        error_of(in_stream(4), payload[:size])


def test_unknown_tuple_kind() -> None:
    good = enc.insert(1, [b"x", None])
    bad = good[:-1] + b"x"  # second column's kind byte
    err = error_of(PgoutputDecoder(1), bad)
    assert err.offset == len(good) - 1 == 1 + 4 + 1 + 2 + 1 + 4 + 1
    assert "kind" in str(err)
    # the same inside a stream, 4 bytes later
    good = enc.insert(1, [b"x", None], xid=SUBXID)
    assert error_of(in_stream(2), good[:-1] + b"?").offset == len(good) - 1


def test_unknown_tuple_kind_in_old_tuple() -> None:
    payload = bytearray(enc.update(1, [b"n"], old_kind="K", old=[None]))
    assert payload[5:9] == b"K\x00\x01n"
    payload[8] = ord("q")
    assert error_of(PgoutputDecoder(1), bytes(payload)).offset == 8


def test_value_longer_than_the_message() -> None:
    payload = b"I" + enc.int32(1) + b"N" + enc.int16(1) + b"t" + enc.int32(100) + b"abc"
    assert error_of(PgoutputDecoder(1), payload).offset == 13  # where the value starts
    payload = b"I" + enc.int32(1) + b"N" + enc.int16(1) + b"b" + enc.int32(2**32 - 1)
    assert error_of(PgoutputDecoder(1), payload).offset == 13


def test_more_columns_than_present() -> None:
    payload = b"I" + enc.int32(1) + b"N" + enc.int16(3) + b"nn"
    assert error_of(PgoutputDecoder(1), payload).offset == len(payload)


def test_message_content_longer_than_the_message() -> None:
    good = enc.message(True, 1, "pfx", b"abc")
    bad = good[: -3 - 4] + enc.int32(4) + b"abc"
    err = error_of(PgoutputDecoder(1), bad)
    assert err.offset == len(bad) - 3  # where the content starts


def test_truncate_with_too_many_relations() -> None:
    payload = b"T" + enc.int32(1000) + enc.int8(0) + enc.int32(1)
    err = error_of(PgoutputDecoder(1), payload)
    assert err.offset == 6
    # a huge count must not allocate or loop
    error_of(PgoutputDecoder(1), b"T" + enc.int32(2**32 - 1) + enc.int8(0))


@pytest.mark.parametrize(
    ("payload", "offset"),
    [
        (b"O" + enc.int64(1) + b"no-terminator", 9),
        (b"R" + enc.int32(1) + b"public", 5),
        (b"R" + enc.int32(1) + b"public\x00t", 12),
        (b"Y" + enc.int32(1) + b"public\x00mood", 12),
        (b"M" + enc.int8(1) + enc.int64(1) + b"prefix", 10),
        (b"b" + enc.int64(1) + enc.int64(2) + enc.int64(3) + enc.int32(4) + b"gid", 29),
        (b"P" + enc.int8(0) + enc.int64(1) + enc.int64(2) + enc.int64(3) + enc.int32(4), 30),
        (
            b"r" + enc.int8(0) + enc.int64(1) * 4 + enc.int32(4) + b"g",
            38,
        ),
    ],
)
def test_unterminated_string(payload: bytes, offset: int) -> None:
    err = error_of(PgoutputDecoder(4), payload)
    assert err.offset == offset
    assert "unterminated" in str(err)


def test_unterminated_column_name() -> None:
    payload = b"R" + enc.int32(1) + b"s\x00t\x00d" + enc.int16(1) + enc.int8(1) + b"col"
    err = error_of(PgoutputDecoder(1), payload)
    assert err.offset == len(payload) - 3


@pytest.mark.parametrize(
    ("payload", "offset"),
    [
        (b"O" + enc.int64(1) + b"\xff\xfe\x00", 9),
        (b"O" + enc.int64(1) + b"ok\xc3\x00", 9),  # truncated 2-byte sequence
        (b"R" + enc.int32(1) + b"s\x00\xed\xa0\x80\x00d" + enc.int16(0), 7),  # surrogate
        (b"Y" + enc.int32(1) + b"\x80\x00t\x00", 5),
        (b"M" + enc.int8(0) + enc.int64(1) + b"\xc0\xaf\x00" + enc.int32(0), 10),  # overlong
        (
            b"K" + enc.int8(0) + enc.int64(1) * 3 + enc.int32(4) + b"g\xff\x00",
            30,
        ),
    ],
)
def test_invalid_utf8(payload: bytes, offset: int) -> None:
    err = error_of(PgoutputDecoder(4), payload)
    assert err.offset == offset
    assert "UTF-8" in str(err)


def test_invalid_utf8_column_name() -> None:
    head = b"R" + enc.int32(1) + b"s\x00t\x00d" + enc.int16(1) + enc.int8(0)
    payload = head + b"\xff\x00" + enc.int32(23) + enc.int32(0)
    assert error_of(PgoutputDecoder(1), payload).offset == len(head)


def test_unknown_replica_identity() -> None:
    payload = b"R" + enc.int32(1) + b"s\x00t\x00x" + enc.int16(0)
    err = error_of(PgoutputDecoder(1), payload)
    assert err.offset == 9
    assert "replica identity" in str(err)


def test_insert_without_new_tuple_marker() -> None:
    assert error_of(PgoutputDecoder(1), b"I" + enc.int32(1) + b"K" + enc.int16(0)).offset == 5
    payload = b"I" + enc.int32(SUBXID) + enc.int32(1) + b"O" + enc.int16(0)
    assert error_of(in_stream(2), payload).offset == 9


def test_update_markers() -> None:
    # neither K/O nor N where the first tuple marker belongs
    assert error_of(PgoutputDecoder(1), b"U" + enc.int32(1) + b"X" + enc.int16(0)).offset == 5
    # an old key, then something other than N
    payload = b"U" + enc.int32(1) + b"K" + enc.int16(0) + b"K" + enc.int16(0)
    assert error_of(PgoutputDecoder(1), payload).offset == 8


def test_delete_needs_old_key_or_tuple() -> None:
    assert error_of(PgoutputDecoder(1), b"D" + enc.int32(1) + b"N" + enc.int16(0)).offset == 5


def test_error_in_stream_keeps_the_block_open() -> None:
    decoder = in_stream(2)
    error_of(decoder, b"I" + enc.int32(SUBXID))
    assert decoder.stream_xid == STREAM_XID
    assert decoder.decode(enc.insert(1, [], xid=SUBXID)) == Insert(SUBXID, 1, ())


# -- relation cache ------------------------------------------------------------------------


def test_relation_cache_keeps_the_latest() -> None:
    cache = RelationCache()
    first = Relation(None, 5, "s", "t", "d", COLUMNS)
    second = first._replace(columns=COLUMNS[:1])
    cache.update(first)
    cache.update(second)
    cache.update(Type(None, 99, "s", "mood"))
    assert cache.relation(5) is second
    assert 5 in cache and 6 not in cache and len(cache) == 1
    type_ = cache.type(99)
    assert type_ is not None and type_.name == "mood"
    assert cache.type(100) is None
    with pytest.raises(ProtocolError):
        cache.relation(6)
