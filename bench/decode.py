"""Decode throughput of the pgoutput decoder on one core.

Records the pgoutput stream of a real pgbench run (throwaway embedded cluster by
default), then decodes the recorded payloads several times in one process and
prints messages/s and MB/s (best of the passes). Goal: >= 500k messages/s.

    python -m bench.decode [--transactions 20000] [--passes 5] [--dsn DSN]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.common import (
    Timer,
    add_arguments,
    create_slots,
    drop_slots,
    load_recording,
    machine,
    prepare_pgbench,
    publisher,
    record,
)
from pgferry.protocol import PgoutputDecoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--transactions", type=int, default=20000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--recording", type=Path, help="reuse or keep the recording here")
    args = parser.parse_args()

    path = args.recording
    version = 4
    if path is None or not path.exists():
        path = path or Path(tempfile.mkdtemp(prefix="pgferry-bench-")) / "pgbench.pgoutput"
        with publisher(args) as pub:
            prepare_pgbench(pub, scale=1)
            create_slots(pub, ["bench_decode"])
            per_client = max(1, args.transactions // args.clients)
            pub.pgbench("-n", "-c", str(args.clients), "-t", str(per_client))
            end = pub.lsn()
            count, size, version = record(pub, "bench_decode", end, path)
            drop_slots(pub, ["bench_decode"])
            print(
                f"recorded {count} messages ({size / 1e6:.1f} MB) from PostgreSQL "
                f"{pub.server_version()} into {path}"
            )
    payloads = load_recording(path)
    total_bytes = sum(len(p) for p in payloads)
    best = float("inf")
    for _ in range(args.passes):
        decoder = PgoutputDecoder(version)
        decode = decoder.decode
        with Timer() as t:
            for payload in payloads:
                decode(payload)
        best = min(best, t.seconds)
    rate = len(payloads) / best
    print(f"machine: {machine()}")
    print(f"messages: {len(payloads)}  bytes: {total_bytes}  protocol: {version}")
    print(
        f"decode: {rate:,.0f} messages/s  {total_bytes / best / 1e6:.1f} MB/s  "
        f"(best of {args.passes} passes, {best:.3f} s)"
    )
    print(f"goal 500,000 messages/s: {'met' if rate >= 500_000 else 'NOT met'}")


if __name__ == "__main__":
    main()
