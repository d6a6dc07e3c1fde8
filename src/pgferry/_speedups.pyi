from collections.abc import Callable

from pgferry.protocol.envelope import PrimaryKeepalive, XLogData
from pgferry.protocol.lsn import Lsn
from pgferry.protocol.messages import Value

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
    xlogdata_new: Callable[[tuple[Lsn, Lsn, int, bytes]], XLogData],
    lsn: Callable[[int], Lsn],
    fallback: Callable[[bytes | memoryview], XLogData | PrimaryKeepalive],
) -> None: ...
def parse_copy_data(data: bytes | memoryview) -> XLogData | PrimaryKeepalive: ...
