"""Set-based apply: a batch's changes to one table, reduced to their net effect per key.

Per-row statements cost a round of parsing, planning and executing each, on the
server and in the driver; native pays the first and we would pay both. In batch
mode the applier instead hands each change of an eligible table to that table's
:class:`Stage`, which keeps only what the batch does to each key:

* a key first seen in an INSERT did not exist before the batch: it ends as an
  INSERT of its last version, or (inserted then deleted) as nothing at all, but
  its absence is still checked;
* a key first seen in an UPDATE or DELETE existed: it ends as an UPDATE to its
  last version or as a DELETE;
* every other sequence (inserting an existing key, changing a deleted one,
  changing the key itself, a DELETE then INSERT, which would reset the columns
  the publisher does not send, unchanged TOAST with no earlier version, NULL in a
  key column) is refused: the applier applies what is staged, then that change
  row by row, so order is kept wherever it matters.

:meth:`Stage.prepare`, then :meth:`Staged.run`, copy the net rows into a
temporary table (text COPY: the values arrive in their text form) and apply
them with one DELETE ... USING, one UPDATE ... FROM and one INSERT ... SELECT,
sent as one message, checking each row count. The writer thread runs a whole
batch's stages with :func:`run_together`: one simple query, a round trip per
COPY.

Any surprise (a missing row, a unique violation, a value the local type
refuses) raises :class:`StageMismatch` or the server's error; the applier then
rolls the batch back and applies it again exactly, row by row, which reports and
resolves the conflict as native would.

With ``track_commit_timestamp`` on (PostgreSQL 14+), the rows an UPDATE or DELETE
is about to change are first read and locked with their commit origin, and those
another origin wrote last come back as :class:`Suspect` rows, reported by the
applier (``*_origin_differs``, applied as native does) for the remote transaction
whose change met the row first, with that change's values.

A table is eligible when row order cannot matter beyond its key (see
:func:`eligibility`): the replica identity is a local unique index and the only
one, no trigger fires during apply, and origin-differs conflicts are applied (the
native policy). A table without such a key may still have its INSERTs staged.
"""

from __future__ import annotations

import enum
import operator
import zlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import psycopg
from psycopg import sql

from pgferry import origins
from pgferry._cmodule import SPEEDUPS
from pgferry.protocol.messages import UNCHANGED_TOAST, BinaryValue, Delete, Insert, Update, Value
from pgferry.stream import libpq

from .conflict_context import LocalRow
from .mapping import Stamps, TableMap

#: Staged rows (and bytes of values) after which a stage is applied, so a large
#: transaction streams through in bounded memory.
MAX_ROWS = 10_000
MAX_BYTES = 16 << 20

_OP = sql.Identifier("pgferry_op")
_N = sql.Identifier("pgferry_n")


class StageMismatch(Exception):
    """A staged statement touched fewer rows than staged: a row is missing, or one
    expected absent exists (a conflict that exact apply reports)."""


class Eligibility(enum.Enum):
    NONE = "none"  # row by row
    INSERTS = "inserts"  # only INSERTs are staged (no usable key)
    KEYED = "keyed"  # every change is staged by its key


class Suspect(NamedTuple):
    """A local row a staged UPDATE or DELETE changes that another origin wrote last
    (confirmed by :meth:`~pgferry.apply.conflict_context.ConflictContext.origin_differs`)."""

    #: The remote transaction and the new values (None: a DELETE) of the change
    #: that met it first.
    tx: Any
    new: tuple[Value, ...] | None
    key: tuple[Value, ...]
    row: LocalRow


def eligibility(table: TableMap, origin_differs_applied: bool = True) -> Eligibility:
    """What of ``table``'s changes may be staged; ``origin_differs_applied``: the
    table's update/delete_origin_differs policies apply the remote change."""
    if table.fires_triggers:
        # Row triggers must see every change, in order.
        return Eligibility.NONE
    keyed = (
        not table.full
        and bool(table.key)
        and (table.stamps is not Stamps.ORIGIN or origin_differs_applied)
        and not table.other_uniques
        and not (table.identity_always - set(table.key))
        and any(
            set(ix.positions) == set(table.key) and ix.predicate is None for ix in table.uniques
        )
    )
    return Eligibility.KEYED if keyed else Eligibility.INSERTS


def _escape(value: Value) -> bytes:
    """A value as a field of COPY's text format."""
    if value is None:
        return b"\\N"
    assert isinstance(value, bytes)
    if b"\\" in value or b"\t" in value or b"\n" in value or b"\r" in value:
        value = (
            value.replace(b"\\", b"\\\\")
            .replace(b"\t", b"\\t")
            .replace(b"\n", b"\\n")
            .replace(b"\r", b"\\r")
        )
    return value


_NULL = b"\\N"


def _py_line(values: tuple[Value, ...], tail: bytes, n: int = -1) -> bytes:
    """A row of COPY's text format ending with ``tail`` (and, when ``n >= 0``, n
    and a newline). The fields are joined as they are, then checked for what
    would need escaping, all at C speed: most rows need none."""
    if n >= 0:
        tail += b"%d\n" % n
    nulls = values.count(None)
    fields = tuple(_NULL if v is None else v for v in values) if nulls else values
    line = b"\t".join(fields)  # type: ignore[arg-type]
    if (
        line.count(b"\\") != nulls
        or line.count(b"\t") != len(fields) - 1
        or b"\n" in line
        or b"\r" in line
    ):
        line = b"\t".join(map(_escape, values))
    return line + tail


def _py_plain_width(values: tuple[Value, ...]) -> int:
    """The values' total length when every one was sent in text form (the applier
    does not ask for binary), else -1."""
    if UNCHANGED_TOAST in values or BinaryValue in map(type, values):
        return -1
    return sum(map(len, filter(None, values)))  # type: ignore[arg-type]


_TAILS = {op: b"\t%s\t" % op.encode() for op in "DUIA"}

# The C twins where built (see pgferry._cmodule).
_line = SPEEDUPS.copy_line if SPEEDUPS is not None else _py_line
_plain_width = SPEEDUPS.plain_width if SPEEDUPS is not None else _py_plain_width
_stage_change = SPEEDUPS.stage_change if SPEEDUPS is not None else None


class Staged(NamedTuple):
    """One stage's rows and statements, ready to run in a transaction."""

    display: str
    create: bytes | None
    copy: bytes
    data: bytes
    statement: bytes
    counts: dict[str, int]
    #: The staged entries (by entry number), when the origins are checked.
    entries: list[tuple[tuple[Value, ...], list[Any]]] | None
    #: The statement ends with TRUNCATE (the batch goes on).
    keep: bool = False

    @property
    def checks_origins(self) -> bool:
        return self.entries is not None

    @property
    def commands(self) -> list[bytes]:
        """What :meth:`run` sends, in order (the COPY's rows apart)."""
        first = [] if self.create is None else [self.create]
        return [*first, self.copy, self.statement]

    def run(self, conn: psycopg.Connection[Any]) -> list[Suspect]:
        """COPY the rows and run the statements; returns the changed rows another
        origin wrote last. A row count that is not the staged one raises
        :class:`StageMismatch`."""
        counts = self.counts
        check = self.entries is not None
        if self.create is not None:
            conn.execute(self.create)
        absent: int | None = None
        with conn.cursor() as cur:
            with cur.copy(self.copy) as copy:
                copy.write(self.data)
            cur.execute(self.statement)
            # One result per statement, in order.
            found = cur.fetchall() if check else []
            touched: list[int] = []
            for op in "DUI":
                if counts[op]:
                    if touched or check:
                        cur.nextset()
                    touched.append(cur.rowcount)
            if counts["A"]:
                if touched or check:
                    cur.nextset()
                result = cur.fetchone()
                absent = None if result is None else result[0]
        self._verify(touched, absent)
        suspects = []
        if found:
            assert self.entries is not None
            for n, *row in found:
                key, (_existed, _values, tx, first) = self.entries[n]
                suspects.append(Suspect(tx, first, key, LocalRow.from_row(tuple(row))))
        return suspects

    def take(self, results: Iterator[Result]) -> None:
        """Check this run's part of the results of :func:`run_together`, in
        order (its ``commands``), as :meth:`run` checks its own."""
        assert self.entries is None  # (found rows are only read by run)
        counts = self.counts
        for _ in self.commands[:-1]:
            next(results)  # CREATE, COPY
        touched = [next(results).rows for op in "DUI" if counts[op]]
        absent: int | None = None
        if counts["A"]:
            value = next(results).value
            absent = None if value is None else int(value)
        if self.keep:
            next(results)  # TRUNCATE
        self._verify(touched, absent)

    def _verify(self, touched: list[int], absent: int | None) -> None:
        counts = self.counts
        expected = [counts[op] for op in "DUI" if counts[op]]
        if touched != expected or (counts["A"] and absent != 0):
            raise StageMismatch(f"table {self.display}: staged {counts}, touched {touched}")


class Result(NamedTuple):
    """One statement's result in :func:`run_together`."""

    status: int
    #: The rows it touched (-1: not a row count).
    rows: int
    #: The first field of its first row (None: none, or NULL).
    value: bytes | None


def run_together(conn: psycopg.Connection[Any], staged: list[Staged], *, begin: bool) -> None:
    """Run ``staged`` (none of which checks origins), after BEGIN with ``begin``:
    as ONE simple query, its COPYs fed inside libpq with the GIL released
    (``_speedups.exchange``), where that can be done (see
    :mod:`pgferry.stream.libpq`); otherwise one statement after the other. A
    round trip per COPY, not three per stage, and no wait for the GIL between
    them: this runs in the writer thread while the applier's thread is busy.
    Raises what running them one by one would: :class:`StageMismatch`, or a
    :class:`psycopg.Error` (of the server's SQLSTATE; its details are left to
    exact apply, which runs next)."""
    functions = libpq.functions()
    pgconn = conn.pgconn
    # pgconn_ptr: the PGconn's address, not part of psycopg's pq.abc
    pointer = getattr(pgconn, "pgconn_ptr", None)
    if functions is None or SPEEDUPS is None or not pointer:
        if begin:
            conn.execute("BEGIN")
        for run in staged:
            run.run(conn)
        return
    commands = [b"BEGIN"] if begin else []
    for run in staged:
        commands += run.commands
    with libpq.blocking(pgconn):
        results, error = SPEEDUPS.exchange(
            functions, pointer, b"; ".join(commands), tuple(run.data for run in staged)
        )
    if error is not None:
        raise _server_error(*error)
    taken = iter(map(Result._make, results))
    try:
        if begin:
            next(taken)
        for run in staged:
            run.take(taken)
    except StopIteration:
        raise StageMismatch(f"fewer results than statements: {results}") from None


def _server_error(sqlstate: bytes, message: bytes) -> psycopg.Error:
    """The psycopg error class of ``sqlstate`` (none: the connection's)."""
    text = message.decode(errors="replace").strip()
    if not sqlstate:
        return psycopg.OperationalError(text)
    try:
        cls = psycopg.errors.lookup(sqlstate.decode())
    except KeyError:
        cls = psycopg.DatabaseError
    return cls(text)


class Stage:
    """The staged net changes of one table (see the module docstring)."""

    def __init__(self, table: TableMap, kind: Eligibility) -> None:
        assert kind is not Eligibility.NONE
        self.table = table
        self.kind = kind
        # Named after the relation and its shape: an applier started again on the
        # same session (after RetryExact) finds its tables instead of adding more.
        shape = zlib.crc32(repr((table.names, table.types, table.key)).encode())
        self.name = f"pgferry_stage_{table.relation.relation_id}_{shape:08x}"
        #: The staging table exists (created in a committed transaction).
        self.created = False
        #: Old rows' origins are checked (see the module docstring).
        self.tracks = table.stamps is Stamps.ORIGIN
        # key -> [existed before the batch, last version (None: deleted),
        #         first remote transaction, its new values]
        self._rows: dict[tuple[Value, ...], list[Any]] = {}
        self._inserts: list[tuple[Value, ...]] = []
        # What the C twin of ``add`` is given besides the key's positions: the
        # list it appends to when the stage takes inserts only.
        self._inserts_only = self._inserts if kind is Eligibility.INSERTS else None
        self.size = 0
        #: Rows applied by staged statements so far (all batches).
        self.applied = 0
        self._statements: dict[tuple[bool, ...], bytes] = {}
        positions = table.key
        # A tuple even for a one-column key (itemgetter returns the bare value).
        self._key_of: Callable[[tuple[Value, ...]], tuple[Value, ...]] = (
            operator.itemgetter(*positions)
            if len(positions) > 1
            else (lambda values: (values[positions[0]],))
            if positions
            else (lambda values: ())
        )

    # -- staging -----------------------------------------------------------------

    @property
    def pending(self) -> bool:
        return bool(self._rows or self._inserts)

    @property
    def full(self) -> bool:
        return len(self._rows) + len(self._inserts) >= MAX_ROWS or self.size >= MAX_BYTES

    def add(self, change: Insert | Update | Delete, tx: Any = None) -> bool:
        """Stage ``change`` of remote transaction ``tx``; False when it cannot be
        (the caller applies the stage, then the change row by row)."""
        if _stage_change is not None:
            # The common cases in C; the rest (and every refusal) below.
            width = _stage_change(self._rows, self._inserts_only, self.table.key, change, tx)
            if width >= 0:
                self.size += width
                return True
        return self._py_add(change, tx)

    def _py_add(self, change: Insert | Update | Delete, tx: Any) -> bool:
        """The Python twin of ``add``, the reference."""
        if isinstance(change, Insert):
            return self._insert(change.new)
        if self.kind is Eligibility.INSERTS:
            return False
        if isinstance(change, Delete):
            return self._delete(change.old, tx)
        return self._update(change.old, change.new, tx)

    def _insert(self, new: tuple[Value, ...]) -> bool:
        width = _plain_width(new)
        if width < 0:
            return False
        if self.kind is Eligibility.INSERTS:
            self._inserts.append(new)
        else:
            key = self._key(new)
            if key is None:
                return False
            entry = self._rows.get(key)
            if entry is None:
                self._rows[key] = [False, new, None, None]
            elif entry[0] is False and entry[1] is None:
                entry[1] = new  # inserted, deleted, inserted again
            else:
                return False  # the key exists: an insert_exists for exact apply
        self.size += width
        return True

    def _delete(self, old: tuple[Value, ...], tx: Any) -> bool:
        key = self._key(old)
        if key is None:
            return False
        entry = self._rows.get(key)
        if entry is None:
            self._rows[key] = [True, None, tx, None]
        elif entry[1] is None:
            return False  # deleted twice: a delete_missing
        else:
            entry[1] = None
        return True

    def _update(self, old: tuple[Value, ...] | None, new: tuple[Value, ...], tx: Any) -> bool:
        key = self._key(new)
        if key is None or (old is not None and self._key(old) != key):
            return False  # a key-changing update is applied in order
        entry = self._rows.get(key)
        if entry is not None and entry[1] is None:
            return False  # an update of a deleted row: update_missing
        width = _plain_width(new)
        if width < 0:
            if entry is None or BinaryValue in map(type, new):
                return False
            # Unchanged TOAST: the value is the one this batch last gave it.
            new = tuple(
                p if v is UNCHANGED_TOAST else v for v, p in zip(new, entry[1], strict=True)
            )
            width = _plain_width(new)
        if entry is None:
            self._rows[key] = [True, new, tx, new]
        else:
            entry[1] = new
        self.size += width
        return True

    def _key(self, values: tuple[Value, ...] | None) -> tuple[Value, ...] | None:
        """The key columns' values; None when one is NULL or was not sent."""
        if values is None:
            return None
        key: tuple[Value, ...] = self._key_of(values)
        # (Not plain: unchanged TOAST or binary.)
        if None in key or _plain_width(key) < 0:
            return None
        return key

    def clear(self, *, created: bool = True) -> None:
        """Forget the staged rows (applied, or rolled back: then, unless
        ``created``, so may be the staging table)."""
        self._rows.clear()
        self._inserts.clear()
        self.size = 0
        self.created = self.created and created

    # -- applying ------------------------------------------------------------------

    def copy_data(self) -> tuple[bytes, dict[str, int]]:
        """The staged rows in COPY text format (with their operation and entry
        number), and how many of each operation."""
        width = len(self.table.names)
        key = self.table.key
        counts = {"D": 0, "U": 0, "I": 0, "A": 0}
        lines: list[bytes] = []
        for values in self._inserts:
            lines.append(_line(values, b"\tI\t0\n"))
        counts["I"] += len(self._inserts)
        for n, (key_values, entry) in enumerate(self._rows.items()):
            existed, values = entry[0], entry[1]
            if values is None:
                op = "D" if existed else "A"
                row: list[Value] = [None] * width
                for i, v in zip(key, key_values, strict=True):
                    row[i] = v
                values = tuple(row)
            else:
                op = "U" if existed else "I"
            counts[op] += 1
            lines.append(_line(values, _TAILS[op], n))
        return b"".join(lines), counts

    def prepare(self, *, keep: bool) -> Staged | None:
        """The staged rows as statements to run (:meth:`Staged.run`), and the stage
        cleared; None when nothing is staged. Running them needs nothing of the
        stage any more, so another thread may, while this one stages more."""
        if not self.pending:
            return None
        data, counts = self.copy_data()
        check = self.tracks and bool(counts["U"] or counts["D"])
        staged = Staged(
            self.table.display,
            None if self.created else self._create(),
            self._copy(),
            data,
            self._statement((check, *(counts[op] > 0 for op in "DUIA")), keep),
            counts,
            list(self._rows.items()) if check else None,
            keep,
        )
        self.created = True
        self.clear()
        self.applied += sum(counts.values())
        return staged

    # -- statements ----------------------------------------------------------------

    def _staged(self) -> sql.Identifier:
        return sql.Identifier("pg_temp", self.name)

    def _column(self, i: int) -> sql.Identifier:
        return sql.Identifier(f"c{i}")

    def _create(self) -> bytes:
        t = self.table
        columns = sql.SQL(", ").join(
            sql.SQL("{} {}").format(self._column(i), sql.SQL(t.types[i]))
            for i in range(len(t.names))
        )
        return (
            sql.SQL('CREATE TEMP TABLE IF NOT EXISTS {} ({}, {} "char", {} int)')
            .format(self._staged(), columns, _OP, _N)
            .as_bytes(t.context)
            + b" ON COMMIT DELETE ROWS"
        )

    def _copy(self) -> bytes:
        return sql.SQL("COPY {} FROM STDIN").format(self._staged()).as_bytes(self.table.context)

    def _update_columns(self) -> list[int]:
        """The columns the staged UPDATE writes: every one, the key's included.

        The join finds a row whose key is equal under the column's collation, which
        a nondeterministic one says of other bytes too; the row then takes the
        publisher's, as native writes the whole new tuple. A GENERATED ALWAYS
        identity column (only a key column in an eligible table) may not be set;
        being an integer, its equal values are its bytes.
        """
        t = self.table
        return [i for i in range(len(t.names)) if i not in t.identity_always]

    def _statement(self, present: tuple[bool, ...], keep: bool) -> bytes:
        """The origin check, DELETE, UPDATE, INSERT and the absence check, those
        needed, as one message (results in that order), then TRUNCATE with ``keep``."""
        shape = (*present, keep)
        cached = self._statements.get(shape)
        if cached is not None:
            return cached
        t = self.table
        staged = self._staged()
        join = sql.SQL(" AND ").join(
            sql.SQL("t.{} = s.{}").format(sql.Identifier(t.names[i]), self._column(i))
            for i in t.key
        )
        parts: list[sql.Composable] = []
        has_check, has_delete, has_update, has_insert, has_absent = present
        if has_check:
            # Lock the rows to change and return those another live origin (or a
            # local session: origin 0) wrote last; a table sync worker's origin is
            # no conflict (see ConflictContext.origin_differs).
            parts.append(
                sql.SQL(
                    "SELECT s.{n}, t.tableoid, t.ctid::text, st.timestamp, st.roident,"
                    " pg_catalog.to_jsonb(t.*) FROM {t} AS t JOIN {s} AS s ON {join}"
                    " CROSS JOIN LATERAL pg_catalog.pg_xact_commit_timestamp_origin(t.xmin)"
                    " AS st WHERE s.{op} IN ('U', 'D') AND st.timestamp IS NOT NULL"
                    " AND st.roident <> {ours} AND (st.roident = 0 OR st.roident IN ("
                    "SELECT r.roident FROM pg_catalog.pg_replication_origin AS r"
                    " WHERE NOT pg_catalog.starts_with(r.roname, {sync}))) FOR UPDATE OF t"
                ).format(
                    n=_N,
                    t=t.target,
                    s=staged,
                    join=join,
                    op=_OP,
                    ours=sql.Literal(t.origin_id),
                    sync=sql.Literal(origins.SYNC_PREFIX),
                )
            )
        if has_delete:
            parts.append(
                sql.SQL("DELETE FROM {} AS t USING {} AS s WHERE s.{} = 'D' AND {}").format(
                    t.target, staged, _OP, join
                )
            )
        if has_update:
            sets = self._update_columns()
            parts.append(
                sql.SQL("UPDATE {} AS t SET {} FROM {} AS s WHERE s.{} = 'U' AND {}").format(
                    t.target,
                    sql.SQL(", ").join(
                        sql.SQL("{} = s.{}").format(sql.Identifier(t.names[i]), self._column(i))
                        for i in sets
                    ),
                    staged,
                    _OP,
                    join,
                )
            )
        if has_insert:
            parts.append(
                sql.SQL("INSERT INTO {} ({}){} SELECT {} FROM {} WHERE {} = 'I'").format(
                    t.target,
                    sql.SQL(", ").join(sql.Identifier(n) for n in t.names),
                    sql.SQL(" OVERRIDING SYSTEM VALUE" if t.identity_always else ""),
                    sql.SQL(", ").join(self._column(i) for i in range(len(t.names))),
                    staged,
                    _OP,
                )
            )
        if has_absent:
            parts.append(
                sql.SQL("SELECT count(*) FROM {} AS t JOIN {} AS s ON {} WHERE s.{} = 'A'").format(
                    t.target, staged, join, _OP
                )
            )
        if keep:
            parts.append(sql.SQL("TRUNCATE {}").format(staged))
        statement = sql.SQL("; ").join(parts).as_bytes(t.context)
        self._statements[shape] = statement
        return statement
