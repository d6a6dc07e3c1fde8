"""Log sequence numbers.

An LSN is a 64-bit byte position in the write-ahead log. PostgreSQL prints it as two
hexadecimal halves, ``X/Y`` (``pg_lsn``'s text form). :class:`Lsn` is an ``int``
subclass so that comparing and subtracting (a byte distance) cost nothing extra.
"""

from __future__ import annotations

from typing import Self

from pgferry.errors import InterfaceError

_MAX = (1 << 64) - 1


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
        hi, sep, lo = text.strip().partition("/")
        if not sep or not hi or not lo or len(hi) > 8 or len(lo) > 8:
            raise InterfaceError(f"invalid LSN {text!r}: expected the form X/Y, e.g. 0/16B3748")
        try:
            return cls((int(hi, 16) << 32) | int(lo, 16))
        except ValueError:
            raise InterfaceError(
                f"invalid LSN {text!r}: expected hexadecimal X/Y, e.g. 0/16B3748"
            ) from None

    def __str__(self) -> str:
        return f"{self >> 32:X}/{self & 0xFFFFFFFF:X}"

    def __repr__(self) -> str:
        return f"Lsn('{self}')"


INVALID_LSN = Lsn(0)


def lsn_from_wire(value: int) -> Lsn:
    """An :class:`Lsn` from an unsigned 64-bit protocol field, without the range
    check (the field cannot be out of range); used on the decoding hot path."""
    return _int_new(Lsn, value)


_int_new = int.__new__
