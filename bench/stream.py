"""``pgferry stream`` against ``pg_recvlogical``, same workload, same slot type.

One pgbench run is decoded several times: before it, 2 x ROUNDS identical pgoutput
slots are created at the same point; each round streams one slot with
``pgferry stream > /dev/null`` and another with ``pg_recvlogical -f /dev/null``,
both up to the same end LSN with the same pgoutput options (newest protocol,
streaming on). Wall times, their medians and the ratio are printed. Goal:
pgferry <= 1.2x pg_recvlogical's wall time.

    python -m bench.stream [--transactions 50000] [--rounds 3] [--dsn DSN]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

from bench.common import (
    PUBLICATION,
    Publisher,
    Timer,
    add_arguments,
    create_slots,
    drop_slots,
    machine,
    prepare_pgbench,
    publisher,
)
from pgferry.conninfo import with_params
from pgferry.protocol import Lsn
from pgferry.stream import max_protocol_version


def run_pgferry(pub: Publisher, slot: str, end: Lsn) -> float:
    cmd = [
        sys.executable,
        "-m",
        "pgferry",
        "-d",
        pub.dsn,
        "stream",
        "--slot",
        slot,
        "--publication",
        PUBLICATION,
        "--streaming",
        "on",
        "--end-lsn",
        str(end),
    ]
    with Timer() as t:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return t.seconds


def run_recvlogical(
    pub: Publisher, slot: str, end: Lsn, proto: int, publication: str = PUBLICATION
) -> float:
    """pg_recvlogical from ``slot`` to ``end`` into /dev/null (streaming on): seconds."""
    dsn = with_params(pub.dsn, replication="database")
    cmd = [
        str(pub.install.bin("pg_recvlogical")),
        "-d",
        dsn,
        "--slot",
        slot,
        "--start",
        "--no-loop",
        "--endpos",
        str(end),
        "-f",
        "/dev/null",
        "-o",
        f"proto_version={proto}",
        "-o",
        f"publication_names={publication}",
        "-o",
        "streaming=on",
    ]
    with Timer() as t:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return t.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--transactions", type=int, default=50000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with publisher(args) as pub:
        prepare_pgbench(pub, args.scale)
        version_num = int(str(pub.sql("SHOW server_version_num")[0][0]))
        proto = max_protocol_version(version_num)
        slots = [f"bench_pf_{i}" for i in range(args.rounds)]
        slots += [f"bench_rl_{i}" for i in range(args.rounds)]
        create_slots(pub, slots)
        pub.pgbench(
            "-n", "-c", str(args.clients), "-t", str(max(1, args.transactions // args.clients))
        )
        end = pub.lsn()
        ours, theirs = [], []
        try:
            for i in range(args.rounds):
                # Alternate who goes first so caching favours neither.
                if i % 2 == 0:
                    ours.append(run_pgferry(pub, f"bench_pf_{i}", end))
                    theirs.append(run_recvlogical(pub, f"bench_rl_{i}", end, proto))
                else:
                    theirs.append(run_recvlogical(pub, f"bench_rl_{i}", end, proto))
                    ours.append(run_pgferry(pub, f"bench_pf_{i}", end))
        finally:
            drop_slots(pub, slots)
        print(f"machine: {machine()}")
        print(
            f"PostgreSQL {pub.server_version()}, pgbench scale {args.scale}, "
            f"{args.transactions} transactions, {args.clients} clients, protocol {proto}"
        )
        print("pgferry stream  :", " ".join(f"{s:.2f}s" for s in ours))
        print("pg_recvlogical  :", " ".join(f"{s:.2f}s" for s in theirs))
        ratio = statistics.median(ours) / statistics.median(theirs)
        print(
            f"median ratio pgferry/pg_recvlogical: {ratio:.2f}x "
            f"(goal <= 1.2x: {'met' if ratio <= 1.2 else 'NOT met'})"
        )


if __name__ == "__main__":
    main()
