"""A bounded-memory spool for the messages of one not-yet-committed transaction.

Streamed transactions (protocol >= 2) arrive in chunks before their commit, and
prepared transactions must wait for COMMIT PREPARED; their messages are kept here
until the outcome is known. Records are the raw pgoutput payloads (compact, and
re-decoded on replay) tagged with the (sub)transaction id that wrote them.

Memory holds at most ``memory_limit`` bytes; past that the spool moves to an
anonymous temporary file and keeps appending there, so a transaction of any size
costs bounded memory.

ROLLBACK TO SAVEPOINT arrives as a Stream Abort of a subtransaction. Changes are
streamed in WAL order and a subtransaction's changes, including those of
subtransactions nested in it, follow its first change, so aborting it means
cutting the spool back to where that subtransaction's first record was written
(PostgreSQL's own apply worker does the same).
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Iterator
from typing import IO

_HEAD = struct.Struct(">II")  # subxid, length

DEFAULT_MEMORY_LIMIT = 8 * 1024 * 1024


class Spool:
    """Append-only record store with truncation back to a subtransaction's start."""

    def __init__(self, memory_limit: int = DEFAULT_MEMORY_LIMIT) -> None:
        self.memory_limit = memory_limit
        self._records: list[tuple[int, bytes]] = []
        self._memory = 0
        self._file: IO[bytes] | None = None
        self._size = 0  # bytes written to the file
        # subxid -> position of its first record: a list index in memory mode,
        # a file offset in file mode.
        self._first: dict[int, int] = {}
        self.count = 0

    @property
    def spilled(self) -> bool:
        return self._file is not None

    @property
    def nbytes(self) -> int:
        """The bytes held: in memory (with the per-record overhead) or in the file."""
        return self._size if self._file is not None else self._memory

    def append(self, subxid: int, payload: bytes) -> None:
        self.count += 1
        if self._file is None:
            if subxid not in self._first:
                self._first[subxid] = len(self._records)
            self._records.append((subxid, payload))
            self._memory += len(payload) + 64
            if self._memory > self.memory_limit:
                self._spill()
            return
        if subxid not in self._first:
            self._first[subxid] = self._size
        self._write(subxid, payload)

    def _write(self, subxid: int, payload: bytes) -> None:
        assert self._file is not None
        self._file.write(_HEAD.pack(subxid, len(payload)))
        self._file.write(payload)
        self._size += _HEAD.size + len(payload)

    def _spill(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="pgferry-spool-")  # noqa: SIM115
        offsets = []
        for subxid, payload in self._records:
            offsets.append(self._size)
            self._write(subxid, payload)
        self._first = {x: offsets[i] for x, i in self._first.items()}
        self._records = []
        self._memory = 0

    def abort_subtransaction(self, subxid: int) -> None:
        """Drop every record from ``subxid``'s first one on."""
        start = self._first.get(subxid)
        if start is None:
            return  # it wrote nothing we kept
        if self._file is None:
            dropped = self._records[start:]
            del self._records[start:]
            self._memory -= sum(len(p) + 64 for _, p in dropped)
            self.count -= len(dropped)
        else:
            self.count -= self._count_from(start)
            self._file.truncate(start)
            self._file.seek(start)
            self._size = start
        self._first = {x: pos for x, pos in self._first.items() if pos < start}

    def _count_from(self, offset: int) -> int:
        assert self._file is not None
        n = 0
        for _ in self._iter_file(offset):
            n += 1
        self._file.seek(self._size)
        return n

    def _iter_file(self, offset: int) -> Iterator[tuple[int, bytes]]:
        assert self._file is not None
        f = self._file
        f.flush()
        f.seek(offset)
        pos = offset
        while pos < self._size:
            head = f.read(_HEAD.size)
            subxid, length = _HEAD.unpack(head)
            payload = f.read(length)
            pos += _HEAD.size + length
            yield subxid, payload

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        """Replay the records in order (call once the spool is complete)."""
        if self._file is None:
            yield from self._records
            return
        yield from self._iter_file(0)
        self._file.seek(self._size)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._records = []
        self._first = {}
        self._memory = 0
        self.count = 0
