from collections.abc import Callable
from typing import Any

from pgferry.protocol.envelope import PrimaryKeepalive, XLogData
from pgferry.protocol.lsn import Lsn
from pgferry.protocol.messages import Begin, Commit, Delete, Insert, Update, Value

def configure(
    unchanged: object,
    binary_type: type[bytes],
    short_error: Callable[[int], BaseException],
    kind_error: Callable[[int, int], BaseException],
) -> None: ...
def read_tuple(buf: bytes, pos: int) -> tuple[tuple[Value, ...], int]: ...
def copy_line(values: tuple[Value, ...], tail: bytes, n: int = -1) -> bytes: ...
def plain_width(values: tuple[Value, ...]) -> int: ...
def configure_envelope(
    xlogdata: type[XLogData],
    lsn: type[Lsn],
    fallback: Callable[[bytes | memoryview], XLogData | PrimaryKeepalive],
) -> None: ...
def parse_copy_data(data: bytes | memoryview) -> XLogData | PrimaryKeepalive: ...
def relay_copy(get: int, put: int, free: int, src: int, dst: int) -> int: ...
def configure_decoder(
    begin: type[Begin],
    commit: type[Commit],
    insert: type[Insert],
    update: type[Update],
    delete: type[Delete],
) -> None: ...
def decode_hot(data: bytes, streamed: bool) -> Begin | Commit | Insert | Update | Delete | None: ...
def drain(
    get: int, free: int, conn: int, max_items: int
) -> tuple[list[XLogData | PrimaryKeepalive], int]: ...
def exchange(
    functions: tuple[int, ...], conn: int, query: bytes, copies: tuple[bytes, ...]
) -> tuple[list[tuple[int, int, bytes | None]], tuple[bytes, bytes] | None]: ...
def stage_change(
    rows: dict[tuple[Value, ...], list[Any]],
    inserts: list[tuple[Value, ...]] | None,
    positions: tuple[int, ...],
    change: Insert | Update | Delete,
    tx: object,
) -> int: ...
