"""pytest-benchmark benches of the ring, side by side with the baselines.

Run with ``pytest benches/ --benchmark-only`` (needs the ``bench`` extra).
Three groups per size, each comparing pyipc's ring with multiprocessing,
faster_fifo, pyzmq and iceoryx2 (those not installed are skipped with the
reason):

* ``local-<size>``: put then get in one process (the ring only: the cost
  of the calls themselves, no other process involved);
* ``throughput-<size>``: the producer runs in a forked child pinned to one
  CPU, this process receives on another; one round receives a fixed number
  of messages, so time per round is inversely proportional to throughput
  (``msg_per_s`` in each bench's extra info);
* ``roundtrip-64 B``: ping-pong of 64 B messages with an echo server in a
  pinned child; one round is one round trip.

The transports are those of ``pyipc bench`` (``pyipc/bench.py``).
"""
from __future__ import annotations

import multiprocessing
import os
from typing import Any, Iterator, List

import pytest

import pyipc
from pyipc import bench
from pyipc.bench import runner

SIZES = [64, 4096, 65536, 1 << 20]
CROSS = ["ring", "ring-batch", "mp-queue", "mp-pipe", "faster-fifo", "zmq", "iceoryx2"]
ROUNDTRIP = ["ring", "mp-queue", "mp-pipe", "faster-fifo", "zmq", "iceoryx2"]
ROUNDS = 15
# Messages per round: about 2 MB of data, at least 100 messages.
PER_ROUND = {size: max(100, min(20_000, (2 << 20) // size)) for size in SIZES}

CPUS = bench.pick_cpus()


def _transport(name: str) -> bench.Transport:
    t = bench.TRANSPORTS[name]
    reason = t.unavailable()
    if reason is not None:
        pytest.skip(f"{name}: {reason}")
    return t


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


@pytest.mark.parametrize("size", SIZES, ids=bench.format_size)
def test_local_put_get(benchmark: Any, size: int) -> None:
    """put then get of one message in one process."""
    benchmark.group = f"local-{bench.format_size(size)}"
    msg = b"\x5a" * size
    with pyipc.RingBuffer(None, create=True, capacity=max(1 << 20, 4 * size)) as ring:
        try:
            put, get = ring.put, ring.get

            def one() -> None:
                put(msg)
                get()

            benchmark(one)
        finally:
            ring.unlink()


@pytest.mark.parametrize("size", [65536, 1 << 20], ids=bench.format_size)
def test_local_put_get_into(benchmark: Any, size: int) -> None:
    """put then get_into a reused buffer, in one process."""
    benchmark.group = f"local-{bench.format_size(size)}"
    msg = b"\x5a" * size
    buf = bytearray(size)
    with pyipc.RingBuffer(None, create=True, capacity=4 * size) as ring:
        try:
            put, get_into = ring.put, ring.get_into

            def one() -> None:
                put(msg)
                get_into(buf)

            benchmark(one)
        finally:
            ring.unlink()


@pytest.mark.parametrize("size", SIZES, ids=bench.format_size)
@pytest.mark.parametrize("name", CROSS)
def test_cross_process(benchmark: Any, pinned: None, name: str, size: int) -> None:
    """Receive PER_ROUND messages from a producer in a pinned child process."""
    t = _transport(name)
    if t.max_size is not None and size > t.max_size:
        pytest.skip(f"{name} carries at most {t.max_size} B")
    benchmark.group = f"throughput-{bench.format_size(size)}"
    n = PER_ROUND[size]
    # One warm-up round, then ROUNDS measured ones; the producer sends
    # exactly that many (rounded up to whole batches), then a stop message.
    total = n * (ROUNDS + 1)
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

        benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1, warmup_rounds=1)
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
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        t.destroy(state)


@pytest.mark.parametrize("name", ROUNDTRIP)
def test_roundtrip(benchmark: Any, pinned: None, name: str) -> None:
    """One ping-pong round trip of a 64 B message with an echo server in a pinned child."""
    t = _transport(name)
    benchmark.group = f"roundtrip-{bench.format_size(bench.LATENCY_SIZE)}"
    size = bench.LATENCY_SIZE
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

        benchmark.pedantic(one, rounds=20_000, iterations=1, warmup_rounds=500)
        send(b"")
        assert done.wait(runner.GRACE), "the echo server did not stop"
        close_send()
        close_recv()
        result = r.recv() if r.poll(runner.GRACE) else {"error": "server did not report"}
        assert "error" not in result, result
    finally:
        if proc is not None:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        t.destroy(back)
        t.destroy(there)
