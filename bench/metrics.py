"""What the metrics endpoint (``pgferry run --metrics``) costs, under an apply load.

The clusters of :mod:`bench.apply` (a publisher with pgbench at ``--scale`` and the
publication ``bench``; a subscriber database ``ferry`` with the publisher's rows,
subscribed without copy), ``pgferry run --metrics 127.0.0.1:PORT`` as a
subprocess, then three phases of ``--seconds`` each:

* ``idle``: no load, the endpoint scraped every ``--interval`` seconds;
* ``load``: pgbench TPC-B at the publisher's full rate (``--clients``), no scrapes:
  the launcher process's CPU rate without them;
* ``load+scrapes``: the same load, scraped every ``--interval`` seconds.

Printed: the scrape latency (HTTP round trip, p50/p95/max) idle and under load;
the launcher process's CPU per scrape (its CPU time in ``load+scrapes`` minus the
``load`` rate over the same time, per scrape); the CPU of one scrape's Python
work measured in this process (:func:`pgferry.metrics.read` plus the exposition,
``time.thread_time``, under the same load); the size of a scrape; and how far the
subscription was behind at the end of each loaded phase (it must keep up).

    python -m bench.metrics                          # defaults: a short run
    python -m bench.metrics --scale 10 --seconds 60 --clients 4 --interval 1

With ``--publisher-dsn``/``--subscriber-dsn``: as :mod:`bench.apply`.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from bench.apply import Bench, add_server_arguments
from bench.common import Publisher, machine
from pgferry import metrics

SUBSCRIPTION = "ferry"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (its own threads, not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 (http)
        body: bytes = response.read()
        return body


def start_launcher(bench: Bench, port: int) -> subprocess.Popen[bytes]:
    """``pgferry run --metrics``, once its endpoint answers with the subscription."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pgferry",
            "-d",
            bench.sub.dsn("ferry"),
            "run",
            "--metrics",
            f"127.0.0.1:{port}",
        ],
        env={**os.environ, "PGFERRY_LOG_LEVEL": "WARNING"},
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            if b'pgferry_workers{kind="apply"' in fetch(f"http://127.0.0.1:{port}/metrics"):
                return process
        except OSError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError("pgferry run --metrics did not start")
        time.sleep(0.1)


def scrapes(url: str, seconds: float, interval: float) -> list[float]:
    """Scrape every ``interval`` for ``seconds``; each scrape's latency (seconds)."""
    latencies = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        fetch(url)
        latencies.append(time.perf_counter() - started)
        time.sleep(max(0.0, interval - latencies[-1]))
    return latencies


def in_process(dsn: str, seconds: float, interval: float) -> list[float]:
    """CPU seconds of one scrape's Python work (read + exposition) in this process
    (``process_time``: the publisher probes run in threads of their own)."""
    registry = CollectorRegistry()
    registry.register(metrics.Collector(dsn))
    times = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.process_time()
        generate_latest(registry)
        times.append(time.process_time() - started)
        time.sleep(interval)
    return times


def loaded(bench: Bench, clients: int, seconds: float, during: Callable[[], None]) -> int:
    """pgbench for ``seconds`` while ``during`` runs; the subscription's lag in bytes
    right after the load."""
    pub = Publisher(bench.pub.dsn(), bench.install)
    load = threading.Thread(
        target=pub.pgbench, args=("-n", "-c", str(clients), "-T", str(int(seconds)))
    )
    load.start()
    during()
    load.join()
    rows = bench.pub.sql(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint"
        f" FROM pg_replication_slots WHERE slot_name = '{SUBSCRIPTION}'"
    )
    return int(rows[0][0])


def ms(values: list[float], q: float) -> str:
    ordered = sorted(values)
    return f"{1000 * ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]:.1f}"


def latency_line(name: str, latencies: list[float]) -> str:
    return (
        f"{name:28} {len(latencies):4d} scrapes, latency p50 {ms(latencies, 0.5)} ms,"
        f" p95 {ms(latencies, 0.95)} ms, max {ms(latencies, 1.0)} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_arguments(parser, scale=2)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between scrapes")
    args = parser.parse_args()
    if bool(args.publisher_dsn) != bool(args.subscriber_dsn):
        parser.error("give both --publisher-dsn and --subscriber-dsn, or neither")
    bench = Bench(args)
    lines = []
    try:
        bench.start()
        bench.copy_data("ferry")
        bench.ferry_subscribe("copy_data=false")
        port = free_port()
        bench.launcher = start_launcher(bench, port)
        pid = bench.launcher.pid
        url = f"http://127.0.0.1:{port}/metrics"
        body = fetch(url)
        samples = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        lines.append(f"{'scrape size':28} {len(body)} bytes, {samples} samples")
        lines.append(latency_line("idle", scrapes(url, args.seconds, args.interval)))

        cpu = cpu_seconds(pid)
        lag = loaded(bench, args.clients, args.seconds, lambda: time.sleep(args.seconds))
        base_rate = (cpu_seconds(pid) - cpu) / args.seconds
        lines.append(
            f"{'load, no scrapes':28} launcher CPU {1000 * base_rate:.1f} ms/s,"
            f" lag after the load {lag} bytes"
        )

        under: list[float] = []
        cpu, started = cpu_seconds(pid), time.monotonic()

        def scrape_during() -> None:
            under.extend(scrapes(url, args.seconds, args.interval))

        lag = loaded(bench, args.clients, args.seconds, scrape_during)
        spent = cpu_seconds(pid) - cpu - base_rate * (time.monotonic() - started)
        lines.append(latency_line("load + scrapes", under))
        lines.append(
            f"{'launcher CPU per scrape':28} {1000 * spent / len(under):.1f} ms"
            f" (its CPU minus the no-scrape rate), lag after the load {lag} bytes"
        )
        cpu_times: list[float] = []
        dsn = bench.sub.dsn("ferry")
        loaded(
            bench,
            args.clients,
            args.seconds,
            lambda: cpu_times.extend(in_process(dsn, args.seconds, args.interval)),
        )
        lines.append(
            f"{'one scrape, in process':28} CPU p50 {ms(cpu_times, 0.5)} ms,"
            f" mean {1000 * statistics.fmean(cpu_times):.1f} ms ({len(cpu_times)} scrapes,"
            " read + exposition, under the same load; process CPU, the probes' threads included)"
        )
    finally:
        bench.close()
    print(f"machine: {machine()}")
    version = bench.pub.sql("SHOW server_version")[0][0] if args.publisher_dsn else None
    print(
        f"PostgreSQL {version or bench.install.version}, pgbench scale {args.scale},"
        f" {args.clients} clients, {args.seconds:g} s per phase, a scrape every"
        f" {args.interval:g} s"
    )
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
