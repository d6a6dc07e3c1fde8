"""Replication commands and pgoutput options, per server version. Pure text building.

What each server version accepts (PostgreSQL docs, "Streaming Replication
Protocol" and the pgoutput options of "Logical Streaming Replication Parameters"):

===========  =====  ===============================================================
server       proto  options
===========  =====  ===============================================================
13           1      publication_names, binary (14+ only: not here)
14           2      + binary, messages, streaming (boolean)
15           3      + two_phase
16, 17, 18   4      + origin (any/none), streaming = parallel
===========  =====  ===============================================================

CREATE_REPLICATION_SLOT has a parenthesised option list from 15 on; before that
the snapshot action is a bare keyword.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pgferry.errors import FeatureNotSupported, InterfaceError
from pgferry.protocol.lsn import Lsn
from pgferry.sqltext import quote_ident, quote_literal

SnapshotAction = Literal["export", "use", "nothing"]
Streaming = Literal["off", "on", "parallel"]


def streaming_for(value: Streaming, publisher_major: int) -> Streaming:
    """The ``streaming`` option a subscription's publisher of ``publisher_major``
    is asked for: ``on`` for ``on`` and ``parallel`` from 14 on (pgferry applies a
    streamed transaction as it arrives by itself: ``parallel`` needs nothing of the
    publisher's protocol 4); an older publisher sends transactions whole."""
    return "off" if value == "off" or publisher_major < 14 else "on"


def major_version(server_version_num: int) -> int:
    """``server_version_num`` (e.g. 150004) -> major version (15)."""
    return server_version_num // 10000


def max_protocol_version(server_version_num: int) -> int:
    """The newest pgoutput protocol version a server supports."""
    major = major_version(server_version_num)
    if major >= 16:
        return 4
    if major == 15:
        return 3
    if major == 14:
        return 2
    return 1


@dataclass(frozen=True)
class PgoutputOptions:
    """The pgoutput options START_REPLICATION passes to the output plugin.

    ``protocol_version`` None means the newest the server supports (and, for
    ``streaming = parallel``, at least 4).
    """

    publication_names: tuple[str, ...]
    protocol_version: int | None = None
    binary: bool = False
    messages: bool = False
    streaming: Streaming = "off"
    two_phase: bool = False
    origin: Literal["any", "none"] | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def resolve_protocol(self, server_version_num: int) -> int:
        """The protocol version to use with this server, checking every option."""
        major = major_version(server_version_num)
        newest = max_protocol_version(server_version_num)
        version = newest if self.protocol_version is None else self.protocol_version
        if not 1 <= version <= 4:
            raise InterfaceError(f"pgoutput protocol version {version} does not exist (1-4)")
        if version > newest:
            raise FeatureNotSupported(
                f"PostgreSQL {major} supports pgoutput protocol up to {newest}, not {version}"
            )
        if not self.publication_names:
            raise InterfaceError("at least one publication is needed")
        needs: list[tuple[bool, str, int, int]] = [
            # (wanted, what, minimum server major, minimum protocol)
            (self.binary, "binary", 14, 1),
            (self.messages, "messages", 14, 1),
            (self.streaming == "on", "streaming", 14, 2),
            (self.streaming == "parallel", "streaming = parallel", 16, 4),
            (self.two_phase, "two_phase", 15, 3),
            (self.origin is not None, "origin", 16, 1),
        ]
        for wanted, what, min_major, min_proto in needs:
            if not wanted:
                continue
            if major < min_major:
                raise FeatureNotSupported(
                    f"the pgoutput option {what} needs PostgreSQL {min_major} or later; "
                    f"the publisher runs {major}"
                )
            if version < min_proto:
                raise FeatureNotSupported(
                    f"the pgoutput option {what} needs protocol version {min_proto} or later"
                )
        return version


def identify_system() -> str:
    return "IDENTIFY_SYSTEM"


def create_replication_slot(
    slot_name: str,
    server_version_num: int,
    *,
    temporary: bool = False,
    snapshot: SnapshotAction = "nothing",
    two_phase: bool = False,
) -> str:
    """CREATE_REPLICATION_SLOT for a pgoutput slot, in the syntax the server wants."""
    major = major_version(server_version_num)
    temp = " TEMPORARY" if temporary else ""
    head = f"CREATE_REPLICATION_SLOT {quote_ident(slot_name)}{temp} LOGICAL pgoutput"
    if major >= 15:
        options = [f"SNAPSHOT {quote_literal(snapshot)}"]
        if two_phase:
            options.append("TWO_PHASE true")
        return f"{head} ({', '.join(options)})"
    if two_phase:
        raise FeatureNotSupported(
            f"two-phase slots need PostgreSQL 15 or later; the publisher runs {major}"
        )
    keyword = {"export": "EXPORT_SNAPSHOT", "use": "USE_SNAPSHOT", "nothing": "NOEXPORT_SNAPSHOT"}
    return f"{head} {keyword[snapshot]}"


def drop_replication_slot(slot_name: str, *, wait: bool = False) -> str:
    return f"DROP_REPLICATION_SLOT {quote_ident(slot_name)}{' WAIT' if wait else ''}"


def start_replication(
    slot_name: str, start_lsn: Lsn, options: PgoutputOptions, server_version_num: int
) -> tuple[str, int]:
    """START_REPLICATION ... LOGICAL with pgoutput options; returns it and the protocol."""
    version = options.resolve_protocol(server_version_num)
    # publication_names is parsed with SplitIdentifierString: a comma-separated
    # list of (optionally double-quoted) identifiers inside one string literal.
    pubs = ",".join(quote_ident(p) for p in options.publication_names)
    opts = [
        ("proto_version", str(version)),
        ("publication_names", pubs),
    ]
    if options.binary:
        opts.append(("binary", "true"))
    if options.messages:
        opts.append(("messages", "true"))
    if options.streaming != "off":
        # 14 and 15 take a boolean; 16+ also takes "parallel".
        opts.append(("streaming", options.streaming))
    if options.two_phase:
        opts.append(("two_phase", "true"))
    if options.origin is not None:
        opts.append(("origin", options.origin))
    opts.extend(options.extra.items())
    rendered = ", ".join(f"{quote_ident(k)} {quote_literal(v)}" for k, v in opts)
    command = f"START_REPLICATION SLOT {quote_ident(slot_name)} LOGICAL {start_lsn} ({rendered})"
    return command, version
