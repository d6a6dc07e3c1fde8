"""How a subscription's ``origin = none`` is honoured by its publisher.

``origin = none`` asks for the changes that did not reach the publisher through
replication. From PostgreSQL 16 the publisher filters them itself (the pgoutput
``origin`` option, per change, by each WAL record's origin). Before 16, pgferry
drops every transaction that carries an Origin message (:attr:`OriginFilter.skip_origins`),
and asks for whole transactions (no streaming): a transaction streamed while in
progress has the Origin message of its first decoded change, none when that is
not a row change, so it could not be told apart; one sent whole, after its
commit, has its commit record's origin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pgferry.catalog.store import Subscription
from pgferry.stream.commands import Streaming

#: First publisher major that filters by origin itself.
SERVER_FILTERS_MAJOR = 16


@dataclass(frozen=True)
class OriginFilter:
    #: Drop transactions carrying an Origin message (origin = none before PG 16).
    skip_origins: bool
    #: The pgoutput ``origin`` option (the publisher filters from PG 16 on).
    origin_option: Literal["none"] | None

    def streaming(self, wanted: Streaming) -> Streaming:
        """The pgoutput ``streaming`` option to ask for instead of ``wanted``."""
        return "off" if self.skip_origins else wanted


def origin_filter(sub: Subscription, publisher_major: int) -> OriginFilter:
    """How ``sub``'s origin option is honoured by a publisher of that major."""
    none = sub.options.origin == "none"
    server = publisher_major >= SERVER_FILTERS_MAJOR
    return OriginFilter(none and not server, "none" if none and server else None)
