"""Log sequence numbers.

An LSN is a 64-bit byte position in the write-ahead log. PostgreSQL prints it as two
hexadecimal halves, ``X/Y`` (``pg_lsn``'s text form). :class:`Lsn` is an ``int``
subclass so that comparing and subtracting (a byte distance) cost nothing extra.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from typing import Self

from pgferry.errors import InterfaceError

_MAX = (1 << 64) - 1
# What pg_lsn's input accepts: 1-8 hex digits, a slash, 1-8 hex digits (ASCII only).
_LSN_TEXT = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})", re.ASCII)


class Lsn(int):
    """A WAL position; ``str()`` gives the ``X/Y`` form, ``Lsn.parse`` reads it."""

    __slots__ = ()

    def __new__(cls, value: int = 0) -> Self:
        if not 0 <= value <= _MAX:
            raise InterfaceError(f"LSN out of range: {value}")
        return super().__new__(cls, value)

    @classmethod
    def parse(cls, text: str) -> Self:
        """Read ``X/Y`` (hexadecimal halves, as ``pg_lsn`` prints them)."""
        match = _LSN_TEXT.fullmatch(text.strip())
        if match is None:
            raise InterfaceError(
                f"invalid LSN {text!r}: expected hexadecimal X/Y (1-8 digits each), e.g. 0/16B3748"
            )
        return cls((int(match[1], 16) << 32) | int(match[2], 16))

    def __str__(self) -> str:
        return f"{self >> 32:X}/{self & 0xFFFFFFFF:X}"

    def __repr__(self) -> str:
        return f"Lsn('{self}')"


INVALID_LSN = Lsn(0)


#: An :class:`Lsn` from an unsigned 64-bit protocol field, without the range check
#: (such a field cannot be out of range): a C-level call for the decoding hot path.
lsn_from_wire: Callable[[int], Lsn] = partial(int.__new__, Lsn)
