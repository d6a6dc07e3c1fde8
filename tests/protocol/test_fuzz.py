"""Fuzzing the decoders: malformed input raises ProtocolError and nothing else, fast.

The contract (``pgferry.protocol``): every malformed input raises
:class:`~pgferry.errors.ProtocolError` with an offset inside the buffer; no other
exception escapes, and decoding never hangs or allocates according to a length
field. Each example runs under a hypothesis deadline.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgferry.errors import ProtocolError
from pgferry.protocol import (
    Message,
    PgoutputDecoder,
    PrimaryKeepalive,
    StreamAbort,
    XLogData,
    parse_copy_data,
)
from pgferry.protocol.messages import (
    Begin,
    BeginPrepare,
    Commit,
    CommitPrepared,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    Prepare,
    Relation,
    RollbackPrepared,
    StreamCommit,
    StreamPrepare,
    StreamStart,
    StreamStop,
    Truncate,
    Type,
    Update,
)

from . import encoder as enc
from .encoder import encode

MESSAGE_TYPES = (
    Begin,
    BeginPrepare,
    Commit,
    CommitPrepared,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    Prepare,
    Relation,
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

DEADLINE_MS = 200
TYPE_BYTES = b"BCORYIUDTMSEcAbPKrp"

#: A decoder state to start from: protocol version, and a streamed block's xid or None.
STATES = st.tuples(st.sampled_from((1, 2, 3, 4)), st.none() | enc.U32).map(
    lambda s: (s[0], s[1] if s[0] >= 2 else None)
)


def decoder_in(state: tuple[int, int | None]) -> PgoutputDecoder:
    version, xid = state
    decoder = PgoutputDecoder(version)
    if xid is not None:
        decoder.decode(enc.stream_start(xid, True))
    return decoder


def decode_or_protocol_error(decoder: PgoutputDecoder, data: bytes) -> Message | None:
    """Decode; a ProtocolError is fine (its offset must lie in the buffer), any other
    exception fails the test by propagating."""
    try:
        msg = decoder.decode(data)
    except ProtocolError as exc:
        assert isinstance(exc.offset, int)
        assert 0 <= exc.offset <= len(data), (exc.offset, len(data))
        return None
    assert isinstance(msg, MESSAGE_TYPES)
    return msg


# Arbitrary bytes, half of them starting with a valid type byte to get past dispatch.
PAYLOADS = st.one_of(
    st.binary(max_size=80),
    st.tuples(st.sampled_from(TYPE_BYTES), st.binary(max_size=80)).map(
        lambda t: bytes([t[0]]) + t[1]
    ),
)


@settings(max_examples=2000, deadline=DEADLINE_MS, suppress_health_check=[HealthCheck.too_slow])
@given(state=STATES, data=PAYLOADS)
def test_arbitrary_bytes(state: tuple[int, int | None], data: bytes) -> None:
    decode_or_protocol_error(decoder_in(state), data)


@st.composite
def valid_encoded(draw: st.DrawFn) -> tuple[tuple[int, int | None], bytes]:
    """A decoder state and a valid message for it, encoded."""
    version, xid = draw(STATES)
    if xid is None:
        msg = draw(enc.outside_stream_messages(version))
    else:
        msg = draw(enc.streamable_messages(draw(enc.U32)))
    return (version, xid), encode(msg)


@settings(max_examples=300, deadline=DEADLINE_MS)
@given(case=valid_encoded())
def test_every_truncation_of_a_valid_message(case: tuple[tuple[int, int | None], bytes]) -> None:
    state, payload = case
    assert decode_or_protocol_error(decoder_in(state), payload) is not None
    for size in range(len(payload)):
        prefix = payload[:size]
        decoder = decoder_in(state)
        if prefix[:1] == b"A" and size == 9:
            decode_or_protocol_error(decoder, prefix)  # the short Stream Abort form
            continue
        try:
            decoder.decode(prefix)
        except ProtocolError as exc:
            assert 0 <= exc.offset <= size
        else:
            raise AssertionError(f"truncated to {size} bytes, {prefix!r} decoded")


@st.composite
def mutated(draw: st.DrawFn) -> tuple[tuple[int, int | None], bytes]:
    """A valid message with a few bytes replaced, inserted or deleted."""
    state, payload = draw(valid_encoded())
    data = bytearray(payload)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        op = draw(st.sampled_from(("replace", "insert", "delete")))
        at = draw(st.integers(min_value=0, max_value=max(len(data) - 1, 0)))
        byte = draw(st.integers(min_value=0, max_value=255))
        if op == "replace" and data:
            data[at] = byte
        elif op == "insert":
            data.insert(at, byte)
        elif data:
            del data[at]
    return state, bytes(data)


@settings(max_examples=1000, deadline=DEADLINE_MS)
@given(case=mutated())
def test_mutated_valid_messages(case: tuple[tuple[int, int | None], bytes]) -> None:
    state, data = case
    decode_or_protocol_error(decoder_in(state), data)


@settings(max_examples=300, deadline=DEADLINE_MS)
@given(
    version=st.sampled_from((1, 2, 3, 4)),
    payloads=st.lists(
        st.one_of(
            PAYLOADS,
            st.builds(enc.stream_start, enc.U32, st.booleans()),
            st.just(enc.stream_stop()),
        ),
        max_size=30,
    ),
)
def test_sequences_through_one_decoder(version: int, payloads: list[bytes]) -> None:
    """Stream state survives any sequence of good and bad messages consistently."""
    decoder = PgoutputDecoder(version)
    for data in payloads:
        before = decoder.stream_xid
        msg = decode_or_protocol_error(decoder, data)
        if msg is None:
            assert decoder.stream_xid == before  # a rejected message changes nothing
        elif isinstance(msg, StreamStart):
            assert before is None and decoder.stream_xid == msg.xid
        elif isinstance(msg, StreamStop):
            assert before is not None and decoder.stream_xid is None
        else:
            assert decoder.stream_xid == before


@settings(max_examples=200, deadline=DEADLINE_MS)
@given(size=st.integers(min_value=2**16, max_value=2**32 - 1), kind=st.sampled_from(b"tb"))
def test_huge_length_fields_fail_fast(size: int, kind: int) -> None:
    # A length field promising up to 4 GiB must be refused, not allocated or read.
    header = b"I" + enc.int32(1) + b"N" + enc.int16(1) + bytes([kind]) + enc.int32(size)
    decode_or_protocol_error(PgoutputDecoder(1), header + b"x" * 10)
    message = b"M" + enc.int8(1) + enc.int64(1) + b"p\x00" + enc.int32(size) + b"x"
    decode_or_protocol_error(PgoutputDecoder(1), message)
    truncate = b"T" + enc.int32(size) + enc.int8(0) + enc.int32(1)
    decode_or_protocol_error(PgoutputDecoder(1), truncate)
    relation = b"R" + enc.int32(1) + b"s\x00t\x00d" + enc.int16(0xFFFF) + b"\x00"
    decode_or_protocol_error(PgoutputDecoder(1), relation)


# -- the replication envelope --------------------------------------------------------------


def parse_or_protocol_error(data: bytes) -> XLogData | PrimaryKeepalive | None:
    try:
        result = parse_copy_data(data)
    except ProtocolError as exc:
        assert 0 <= exc.offset <= len(data)
        return None
    assert isinstance(result, (XLogData, PrimaryKeepalive))
    return result


@settings(max_examples=1000, deadline=DEADLINE_MS)
@given(
    data=st.one_of(
        st.binary(max_size=60),
        st.tuples(st.sampled_from(b"wkr"), st.binary(max_size=60)).map(
            lambda t: bytes([t[0]]) + t[1]
        ),
    )
)
def test_copy_data_arbitrary_bytes(data: bytes) -> None:
    result = parse_or_protocol_error(data)
    if isinstance(result, XLogData):
        assert data[:1] == b"w" and len(data) >= 25
        assert result.payload == data[25:]
    elif isinstance(result, PrimaryKeepalive):
        assert data[:1] == b"k" and len(data) == 18
    else:
        assert not (data[:1] == b"w" and len(data) >= 25)
        assert not (data[:1] == b"k" and len(data) == 18)
