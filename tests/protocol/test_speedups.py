"""The C twins (pgferry._speedups) against their Python references, on the same
inputs: random tuples, random bytes, every way a buffer can be cut short, valid
and mutated pgoutput messages."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgferry._cmodule import SPEEDUPS, ShortValue
from pgferry.apply.staging import _py_line, _py_plain_width
from pgferry.errors import ProtocolError
from pgferry.protocol import pgoutput
from pgferry.protocol.envelope import _py_parse_copy_data
from pgferry.protocol.messages import UNCHANGED_TOAST, BinaryValue, Message, Value
from pgferry.protocol.pgoutput import PgoutputDecoder, _py_read_tuple

from . import encoder as enc

pytestmark = pytest.mark.skipif(
    SPEEDUPS is None, reason="pgferry._speedups not built (or PGFERRY_PURE_PYTHON set)"
)

values = st.one_of(
    st.none(),
    st.just(UNCHANGED_TOAST),
    st.binary(max_size=12),
    st.sampled_from([b"\\N", b"\t", b"a\\b", b"\r\n", b"\xff\x00"]),
    st.binary(max_size=6).map(BinaryValue),
)


def encode(row: tuple[Value, ...]) -> bytes:
    out = [struct.pack(">H", len(row))]
    for v in row:
        if v is None:
            out.append(b"n")
        elif v is UNCHANGED_TOAST:
            out.append(b"u")
        else:
            assert isinstance(v, bytes)
            kind = b"b" if isinstance(v, BinaryValue) else b"t"
            out.append(kind + struct.pack(">I", len(v)) + v)
    return b"".join(out)


def outcome(fn: object, *args: object) -> object:
    """What ``fn(*args)`` returns, or the kind of error and where it points."""
    try:
        result = fn(*args)  # type: ignore[operator]
    except ShortValue as exc:
        return ("short", exc.offset)
    except ProtocolError as exc:
        return ("protocol", exc.offset, str(exc))
    except (IndexError, struct.error):
        return ("truncated",)
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], tuple):
        # BinaryValue and bytes compare equal: compare the types too.
        return result, [type(v) for v in result[0]]
    return result


@given(st.lists(values, max_size=8), st.binary(max_size=3))
def test_read_tuple_matches_on_whole_tuples(row: list[Value], prefix: bytes) -> None:
    buf = prefix + encode(tuple(row)) + b"tail"
    assert SPEEDUPS is not None
    got = outcome(SPEEDUPS.read_tuple, buf, len(prefix))
    assert got == outcome(_py_read_tuple, buf, len(prefix))
    assert got == ((tuple(row), len(buf) - 4), [type(v) for v in row])


@given(st.lists(values, min_size=1, max_size=6), st.data())
def test_read_tuple_matches_on_cut_buffers(row: list[Value], data: st.DataObject) -> None:
    whole = encode(tuple(row))
    buf = whole[: data.draw(st.integers(0, len(whole) - 1))]
    assert SPEEDUPS is not None
    assert outcome(SPEEDUPS.read_tuple, buf, 0) == outcome(_py_read_tuple, buf, 0)


@given(st.binary(max_size=40), st.integers(0, 4))
def test_read_tuple_matches_on_random_bytes(buf: bytes, pos: int) -> None:
    assert SPEEDUPS is not None
    assert outcome(SPEEDUPS.read_tuple, buf, pos) == outcome(_py_read_tuple, buf, pos)


def test_an_unknown_column_kind_is_a_protocol_error_naming_it() -> None:
    assert SPEEDUPS is not None
    buf = b"\x00\x02nx"
    got = outcome(SPEEDUPS.read_tuple, buf, 0)
    assert got == outcome(_py_read_tuple, buf, 0)
    assert got == ("protocol", 3, "unknown tuple column kind b'x' (at byte offset 3)")


@given(
    st.lists(
        st.one_of(st.none(), st.binary(max_size=8), st.sampled_from([b"\\N", b"\t", b"a\\b"])),
        max_size=6,
    ),
    st.sampled_from([b"\n", b"\tU\t7\n", b"", b"\tD\t"]),
    st.integers(-1, 10**12),
)
def test_copy_line_matches(row: list[bytes | None], tail: bytes, n: int) -> None:
    assert SPEEDUPS is not None
    assert SPEEDUPS.copy_line(tuple(row), tail, n) == _py_line(tuple(row), tail, n)
    assert SPEEDUPS.copy_line(tuple(row), tail) == _py_line(tuple(row), tail)


@given(st.lists(values, max_size=6))
def test_plain_width_matches(row: list[Value]) -> None:
    assert SPEEDUPS is not None
    assert SPEEDUPS.plain_width(tuple(row)) == _py_plain_width(tuple(row))


@given(
    st.one_of(
        st.builds(
            lambda head, body: b"w" + head + body,
            st.binary(min_size=24, max_size=24),
            st.binary(max_size=20),
        ),
        st.builds(lambda body: b"k" + body, st.binary(min_size=17, max_size=17)),
        st.binary(max_size=30),
    ),
    st.booleans(),
)
def test_parse_copy_data_matches(data: bytes, view: bool) -> None:
    assert SPEEDUPS is not None
    got = outcome(SPEEDUPS.parse_copy_data, memoryview(data) if view else data)
    expected = outcome(_py_parse_copy_data, data)
    assert got == expected
    # The same classes too (an Lsn equals its int).
    assert type(got) is type(expected)
    if isinstance(got, tuple) and isinstance(expected, tuple):
        assert [type(f) for f in got] == [type(f) for f in expected]


def decoded(data: bytes, state: tuple[int, int | None], *, hot: bool) -> object:
    """What a decoder in ``state`` (protocol version, the xid of an open streamed
    block or None) makes of ``data``, with the C decoder of the hot messages or
    without it: the message and the type of every field (an Lsn equals its int, a
    BinaryValue its bytes), or the error and where it points."""
    version, xid = state
    saved = pgoutput._decode_hot
    if not hot:
        pgoutput._decode_hot = None
    try:
        decoder = PgoutputDecoder(version)
        if xid is not None:
            decoder.decode(enc.stream_start(xid, True))
        msg: Message = decoder.decode(data)
    except ProtocolError as exc:
        return ("protocol", exc.offset, str(exc))
    finally:
        pgoutput._decode_hot = saved

    def types(value: object) -> object:
        if isinstance(value, tuple):
            return (type(value), [types(v) for v in value])
        return type(value)

    return msg, types(msg)


HOT = b"BCIUD"


@st.composite
def hot_payloads(draw: st.DrawFn) -> tuple[tuple[int, int | None], bytes]:
    """A decoder state and a pgoutput message: valid, cut short, mutated, or random
    bytes after a hot type byte."""
    version = draw(st.sampled_from((1, 2, 3, 4)))
    xid = draw(st.none() | enc.U32) if version >= 2 else None
    if xid is None:
        msg = draw(enc.outside_stream_messages(version))
    else:
        msg = draw(enc.streamable_messages(xid))
    payload = enc.encode(msg)
    how = draw(st.sampled_from(("valid", "cut", "mutated", "random")))
    if how == "cut":
        payload = payload[: draw(st.integers(0, max(len(payload) - 1, 0)))]
    elif how == "mutated":
        data = bytearray(payload)
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(data)))
            if draw(st.booleans()) and at < len(data):
                data[at] = draw(st.integers(0, 255))
            else:
                data.insert(at, draw(st.integers(0, 255)))
        payload = bytes(data)
    elif how == "random":
        payload = bytes([draw(st.sampled_from(HOT))]) + draw(st.binary(max_size=40))
    return (version, xid), payload


@settings(max_examples=2000)
@given(hot_payloads())
def test_the_c_decoder_of_hot_messages_decodes_as_the_python_one(
    case: tuple[tuple[int, int | None], bytes],
) -> None:
    state, payload = case
    assert decoded(payload, state, hot=True) == decoded(payload, state, hot=False)


def test_the_c_decoder_takes_the_hot_messages_and_leaves_the_rest() -> None:
    # Otherwise the test above would compare the Python decoder with itself.
    assert SPEEDUPS is not None
    hot = [
        enc.begin(1, -2, 3),
        enc.commit(0, 1, 2, 3),
        enc.insert(7, [b"a", None]),
        enc.update(7, [b"a"], old_kind="K", old=[b"b"]),
        enc.delete(7, "O", [b"a", BinaryValue(b"b")]),
    ]
    for payload in hot:
        msg = SPEEDUPS.decode_hot(payload, False)
        assert msg is not None and msg == PgoutputDecoder(1).decode(payload)
    streamed = [
        enc.insert(7, [b"a", None], xid=9),
        enc.update(7, [b"a"], xid=9),
        enc.delete(7, "K", [b"a"], xid=9),
    ]
    for payload in streamed:
        decoder = PgoutputDecoder(2)
        decoder.decode(enc.stream_start(9, True))
        msg = SPEEDUPS.decode_hot(payload, True)
        assert msg is not None and msg == decoder.decode(payload) and msg.xid == 9
    for payload in (enc.origin(1, "o"), enc.truncate(0, [7]), enc.insert(7, [b"a"]) + b"x"):
        assert SPEEDUPS.decode_hot(payload, False) is None
    for payload in (enc.begin(1, 2, 3), enc.commit(0, 1, 2, 3), enc.insert(7, [b"a"])):
        assert SPEEDUPS.decode_hot(payload, True) is None  # not in a streamed block
