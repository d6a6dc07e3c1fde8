"""Where pgferry's catch-up time goes: the apply worker run in this process.

The catch-up scenario of :mod:`bench.apply` (``--transactions`` pgbench TPC-B
transactions written while the subscriber is stopped, then applied), repeated
``--runs`` times, with pgferry's apply worker run on a thread of this process (as
a worker process runs it, garbage collection tuned the same way). Each run prints:

* the wall time from the worker's start to the slot caught up;
* the CPU time of the apply thread and of this whole process (the writer thread
  and the C parts that release the GIL included);
* the CPU time of each cluster's processes meanwhile (the publisher's is mostly
  the walsender's, the subscriber's the backend's that applies);
* with ``--native``, native's time and its clusters' CPU for the same load first
  (the subscriber's is mostly its apply worker's), and the ratio.

At the end: the median of each column. ``--cprofile`` profiles the apply thread
(deterministic profiling slows it down: compare profiles with each other, not
with the wall times of runs without it) and prints the top functions by own
time.

    python -m bench.profile --runs 5 --native
    python -m bench.profile --transactions 20000 --cprofile
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import statistics
import threading
import time
from pathlib import Path

from bench.apply import Bench, Server, wait_caught_up
from pgferry.apply.worker import ApplyWorker
from pgferry.runner.child import tune_gc
from pgferry.testing import Cluster

_TICKS = os.sysconf("SC_CLK_TCK")


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _stat(pid: int | str) -> list[str]:
    """The fields of /proc/<pid>/stat after the command's name."""
    return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()


def server_cpu(server: Server | Cluster) -> float:
    """CPU seconds of a cluster's processes so far: the postmaster's, its exited
    children's (which it has waited for) and its live children's; NaN for a
    server given by DSN."""
    pid = server.pid() if isinstance(server, Cluster) else None
    if pid is None:
        return float("nan")
    # utime, stime, cutime, cstime: fields 14-17 of stat, 12-15 after the name.
    ticks = sum(int(v) for v in _stat(pid)[11:15])
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat(entry.name)
        except OSError:
            continue  # exited meanwhile
        if int(fields[1]) == pid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / _TICKS


class Cpu:
    """CPU seconds of both clusters between ``start`` and ``stop``."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.pub = self.sub = float("nan")

    def start(self) -> None:
        self.pub, self.sub = server_cpu(self.bench.pub), server_cpu(self.bench.sub)

    def stop(self) -> None:
        self.pub = server_cpu(self.bench.pub) - self.pub
        self.sub = server_cpu(self.bench.sub) - self.sub


def run_pgferry(
    bench: Bench, profile: cProfile.Profile | None, servers: Cpu
) -> tuple[float, float, float]:
    """One catch-up by an in-process apply worker: wall, thread CPU, process CPU
    (and the clusters' CPU into ``servers``)."""
    worker = ApplyWorker(bench.sub.dsn("ferry"), "ferry", status_interval=1.0)
    thread_cpu: list[float] = []
    failure: list[BaseException] = []

    def target() -> None:
        began = time.thread_time()
        if profile is not None:
            profile.enable()
        try:
            worker.run()
        except BaseException as exc:  # shown by the main thread
            failure.append(exc)
        finally:
            if profile is not None:
                profile.disable()
            thread_cpu.append(time.thread_time() - began)

    cpu = _process_cpu()
    servers.start()
    began = time.monotonic()
    thread = threading.Thread(target=target, name="apply")
    thread.start()
    try:
        wait_caught_up(bench.pub, "ferry", bench.ferry_ready, bench.args.timeout)
    finally:
        wall = time.monotonic() - began
        servers.stop()
        worker.request_stop()
        thread.join()
    if failure:
        raise failure[0]
    return wall, thread_cpu[0], _process_cpu() - cpu


def _line(row: tuple[float, ...]) -> str:
    native, native_pub, native_sub, wall, pub, sub, thread_cpu, process_cpu = row
    text = ""
    if native == native:  # not NaN
        text = (
            f"native {native:.2f} s (CPU: publisher {native_pub:.2f} s,"
            f" subscriber {native_sub:.2f} s), ratio {wall / native:.2f}x; "
        )
    return text + (
        f"pgferry {wall:.2f} s (CPU: publisher {pub:.2f} s, subscriber {sub:.2f} s,"
        f" apply thread {thread_cpu:.2f} s, pgferry process {process_cpu:.2f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bindir", help="PostgreSQL bin directory (default: embedded)")
    parser.add_argument("--scale", type=int, default=20)
    parser.add_argument("--transactions", type=int, default=100000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--native", action="store_true", help="time native first, each run")
    parser.add_argument("--cprofile", action="store_true", help="profile the apply thread")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()
    # What Bench expects of bench.apply's arguments, for the parts used here.
    args.publisher_dsn = args.subscriber_dsn = None
    tune_gc()
    bench = Bench(args)
    profile = cProfile.Profile() if args.cprofile else None
    rows: list[tuple[float, ...]] = []
    try:
        bench.start()
        for run in range(1, args.runs + 1):
            bench.subscribed_idle()
            bench.catchup_load()
            native = float("nan")
            native_cpu = Cpu(bench)
            if args.native:
                native_cpu.start()
                native = bench.native_catch_up()
                native_cpu.stop()
            else:
                bench.native_drop()
            ferry_cpu = Cpu(bench)
            wall, thread_cpu, process_cpu = run_pgferry(bench, profile, ferry_cpu)
            bench.pgferry("subscription", "drop", "ferry")
            row = (
                native,
                native_cpu.pub,
                native_cpu.sub,
                wall,
                ferry_cpu.pub,
                ferry_cpu.sub,
                thread_cpu,
                process_cpu,
            )
            rows.append(row)
            print(f"run {run}: " + _line(row), flush=True)
    finally:
        bench.close()
    if rows:
        medians = tuple(statistics.median(column) for column in zip(*rows, strict=True))
        print(f"median of {len(rows)}: " + _line(medians))
    if profile is not None:
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
