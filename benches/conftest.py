"""The benches' one harness (``pytest benches/ --benchmark-only``).

Every ``bench_*.py`` here is a pytest-benchmark file (the default test run
never collects them: ``testpaths = ["tests"]``); they share what is below:

* ``CPUS``: the consumer's and the producer's CPU (``pick_cpus``), and the
  ``pinned`` fixture, which puts this process on the consumer's CPU;
* ``cross_process(benchmark, name, size)``: the producer in a forked child
  pinned to the other CPU, this process receiving; one round receives a
  fixed number of messages, so the time per round is the inverse of the
  throughput (``msg_per_s`` in the bench's extra info);
* ``roundtrip(benchmark, name)``: ping-pong of 64 B with an echo server in a
  pinned child; one round is one round trip.

A transport is one entry of ``pyipc.bench.transports.TRANSPORTS`` (the
ones ``pyipc bench`` runs): to add one, add a ``Transport`` there (that
module's docstring says how) and name it in a bench.  To add a bench, write
a ``bench_<topic>.py`` whose tests take the ``benchmark`` fixture and call
``cross_process``/``roundtrip`` or time anything local; set
``benchmark.group`` so that like is compared with like, and never assert a
timing.  Baselines absent here (an optional package) are skipped with the
reason.
"""
from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Any, Iterator, List, Optional

import pytest

from pyipc._util import format_size
from pyipc.bench import LATENCY_SIZE, runner, transports

CPUS = runner.pick_cpus()
ROUNDS = 15


def pytest_collect_file(file_path: Path, parent: Any) -> Optional[pytest.Module]:
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        module: pytest.Module = pytest.Module.from_parent(parent, path=file_path)
        return module
    return None


@pytest.fixture
def pinned() -> Iterator[None]:
    """Run this process on the consumer's CPU, restoring the affinity after."""
    before = os.sched_getaffinity(0)
    if CPUS[0] is not None:
        os.sched_setaffinity(0, {CPUS[0]})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def transport(name: str) -> transports.Transport:
    """The transport called ``name``; the bench is skipped if it cannot run."""
    t = transports.TRANSPORTS[name]
    reason = t.unavailable()
    if reason is not None:
        pytest.skip(f"{name}: {reason}")
    return t


def per_round(size: int) -> int:
    """Messages per round: about 2 MB of data, at least 100 messages."""
    return max(100, min(20_000, (2 << 20) // max(size, 1)))


def _stop(proc: Any) -> None:
    proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join()


def cross_process(benchmark: Any, name: str, size: int, rounds: int = ROUNDS) -> None:
    """Time rounds of ``per_round(size)`` messages from a producer in a
    pinned child (use with the ``pinned`` fixture)."""
    t = transport(name)
    if t.max_size is not None and size > t.max_size:
        pytest.skip(f"{name} carries at most {format_size(t.max_size)}")
    n = per_round(size)
    # One warm-up round, then the measured ones; the producer sends exactly
    # that many (rounded up to whole batches), then a stop message.
    total = n * (rounds + 1)
    kind = t.kind_for(size)
    ctx = multiprocessing.get_context("fork")
    state = t.create(size)
    proc = None
    try:
        recv, close = t.receiver(state, size)
        ready, done = ctx.Event(), ctx.Event()
        r, w = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=runner.throughput_child,
            args=("producer", t, state, size, 0.0, CPUS[1], ready, done, w),
            kwargs={"count": total},
            daemon=True,
        )
        proc.start()
        w.close()
        ready.set()
        # [messages received beyond the last round, stop message seen]
        carry: List[Any] = [0, False]
        if kind == "batch":

            def one_round() -> None:
                # A batch may end with the stop message (an empty one).
                got = carry[0]
                while got < n:
                    batch = recv()
                    got += len(batch)
                    if not batch[-1]:
                        carry[1] = True
                        break
                carry[0] = got - n
        else:

            def one_round() -> None:
                for _ in range(n):
                    recv()

        benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=1)
        # Drain to the stop message so that the producer can finish cleanly.
        while not carry[1]:
            m = recv()
            if kind == "batch":
                if any(len(x) == 0 for x in m):
                    break
            elif (m if kind == "into" else len(m)) == 0:
                break
        done.set()
        result = r.recv() if r.poll(runner.GRACE) else {"error": "producer did not report"}
        assert "error" not in result, result
        close()
        median = benchmark.stats.stats.median
        benchmark.extra_info["msg_per_s"] = n / median
        benchmark.extra_info["MB_per_s"] = n * size / median / 1e6
        benchmark.extra_info["pinned"] = CPUS[0] is not None
    finally:
        if proc is not None:
            _stop(proc)
        t.destroy(state)


def roundtrip(benchmark: Any, name: str, rounds: int = 20_000) -> None:
    """Time one ping-pong of a 64 B message with an echo server in a pinned
    child (use with the ``pinned`` fixture)."""
    t = transport(name)
    size = LATENCY_SIZE
    ctx = multiprocessing.get_context("fork")
    there = t.create(size)
    back = t.create(size)
    proc = None
    try:
        ready, ready_back, done = ctx.Event(), ctx.Event(), ctx.Event()
        r, w = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=runner.pingpong_child,
            args=("server", t, there, back, 0.0, CPUS[1], ready, ready_back, done, w),
            daemon=True,
        )
        proc.start()
        w.close()
        # The same order as pyipc bench: our receiver first, then connect.
        recv, close_recv = t.receiver(back, size)
        ready_back.set()
        assert ready.wait(runner.GRACE), "the echo server never became ready"
        send, close_send = t.sender(there, size)
        msg = b"\x5a" * size

        def one() -> None:
            send(msg)
            recv()

        benchmark.pedantic(one, rounds=rounds, iterations=1, warmup_rounds=500)
        send(b"")
        assert done.wait(runner.GRACE), "the echo server did not stop"
        close_send()
        close_recv()
        result = r.recv() if r.poll(runner.GRACE) else {"error": "server did not report"}
        assert "error" not in result, result
    finally:
        if proc is not None:
            _stop(proc)
        t.destroy(back)
        t.destroy(there)
