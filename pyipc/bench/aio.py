"""Benches of the asyncio path, side by side with pyzmq's asyncio sockets
and an asyncio UNIX stream.

The measuring code is plain functions (``roundtrip``, ``throughput``,
``idle_cpu``): ``pyipc bench --latency --async`` prints their table
(``main``), and ``benches/bench_async.py`` wraps them for pytest-benchmark.

Every measurement runs this process (the event loop, and the helper threads
it starts, which inherit its affinity) on one CPU and the peer process on
another (``os.sched_setaffinity``); with a single CPU both share it,
unpinned.  Nothing here asserts a timing: the figures are compared with
baselines measured in the same run.

* round trip, 64 B: a coroutine puts a message, an echo server in the peer
  process (synchronous, blocking calls) sends it back, the coroutine awaits
  the reply.  ``ring-async`` (``put`` + ``await get_async()``), with
  ``ring-sync`` (``put`` + ``get()``) as the synchronous figure, ``zmq-async``
  (``zmq.asyncio`` PAIR over ``ipc://``), ``unix-async``
  (``asyncio.open_unix_connection``, fixed-size frames).
* throughput, 64 B: the peer produces as fast as it can with blocking
  calls; a coroutine receives.  ``ring-sync`` (``get``) is the synchronous
  figure; ``ring-async`` (``await get_async()``), ``ring-async-batch``
  (``await get_many_async(64)``), ``ring-async-put`` (this side produces with
  ``await put_async()``, the peer consumes), ``zmq-async`` (PUSH/PULL),
  ``unix-async`` (``readexactly`` per message).
* idle CPU: the share of one core that this process uses while 1,000
  coroutines wait on 1,000 rings and nothing happens.
"""
from __future__ import annotations

import asyncio
import multiprocessing
import os
import resource
import shutil
import socket
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pyipc

SIZE = 64
ROUNDTRIP = ["ring-async", "ring-sync", "zmq-async", "unix-async"]
THROUGHPUT = ["ring-sync", "ring-async", "ring-async-batch", "ring-async-put", "zmq-async", "unix-async"]
BATCH = 64


def pick_cpus() -> Tuple[Optional[int], Optional[int]]:
    """(this process's CPU, the peer's CPU), or (None, None) with one CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)


CPUS = pick_cpus()


def _pin(cpu: Optional[int]) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


@contextmanager
def _pinned() -> Iterator[None]:
    before = os.sched_getaffinity(0)
    _pin(CPUS[0])
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _unavailable(name: str) -> Optional[str]:
    """Why a transport cannot run here, or None."""
    if name.startswith("zmq"):
        try:
            import zmq.asyncio  # noqa: F401
        except ImportError:
            return "pyzmq is not installed (the bench extra)"
    return None


@contextmanager
def _peer(target: Callable[..., None], *args: Any) -> Iterator[Any]:
    """Run target(*args, cpu, conn) in a forked child; yield our end of a pipe
    on which it says "ready" (and later reports); always reap it."""
    ctx = multiprocessing.get_context("fork")
    mine, theirs = ctx.Pipe()
    proc = ctx.Process(target=target, args=(*args, CPUS[1], theirs), daemon=True)
    proc.start()
    theirs.close()
    try:
        if not mine.poll(30):
            raise RuntimeError(f"{target.__name__} did not start")
        assert mine.recv() == "ready"
        yield mine
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
        mine.close()


@contextmanager
def _rings(n: int, capacity: int = 1 << 20) -> Iterator[List[pyipc.RingBuffer]]:
    rings = []
    try:
        for _ in range(n):
            rings.append(pyipc.RingBuffer(None, create=True, capacity=capacity))
        yield rings
    finally:
        for r in rings:
            r.close()
            try:
                r.unlink()
            except FileNotFoundError:
                pass


@contextmanager
def _tempdir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="pyipc-bench-async-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ---- peers (forked children; blocking calls) -------------------------------


def _busy(ns: int) -> None:
    """Stand for ns of work before an answer (a busy wait: a sleep would add
    the scheduler's own wake-up to the figure)."""
    if ns:
        end = time.perf_counter_ns() + ns
        while time.perf_counter_ns() < end:
            pass


def _ring_echo(there: str, back: str, delay: int, cpu: Optional[int], conn: Any) -> None:
    _pin(cpu)
    with pyipc.RingBuffer(there) as a, pyipc.RingBuffer(back) as b:
        conn.send("ready")
        while True:
            m = a.get()
            if not m:
                return
            _busy(delay)
            b.put(m)


def _zmq_echo(addr: str, delay: int, cpu: Optional[int], conn: Any) -> None:
    import zmq

    _pin(cpu)
    ctx = zmq.Context()
    s = ctx.socket(zmq.PAIR)
    s.bind(addr)
    conn.send("ready")
    while True:
        m = s.recv()
        if not m:
            break
        _busy(delay)
        s.send(m)
    s.close(linger=0)
    ctx.term()


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return b""
        buf += chunk
    return bytes(buf)


def _unix_echo(path: str, delay: int, cpu: Optional[int], conn: Any) -> None:
    _pin(cpu)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    conn.send("ready")
    s, _ = srv.accept()
    while True:
        m = _recv_exactly(s, SIZE)
        if not m:
            break
        _busy(delay)
        s.sendall(m)
    s.close()
    srv.close()


def _ring_producer(name: str, count: int, cpu: Optional[int], conn: Any) -> None:
    _pin(cpu)
    msg = b"\x5a" * SIZE
    with pyipc.RingBuffer(name) as r:
        conn.send("ready")
        conn.recv()  # go
        put = r.put
        for _ in range(count):
            put(msg)


def _ring_consumer(name: str, count: int, cpu: Optional[int], conn: Any) -> None:
    _pin(cpu)
    with pyipc.RingBuffer(name) as r:
        conn.send("ready")
        get = r.get
        got = 0
        for _ in range(count):
            got += len(get())
        conn.send(got)


def _zmq_producer(addr: str, count: int, cpu: Optional[int], conn: Any) -> None:
    import zmq

    _pin(cpu)
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.connect(addr)
    conn.send("ready")
    conn.recv()
    msg = b"\x5a" * SIZE
    for _ in range(count):
        s.send(msg)
    s.close(linger=-1)
    ctx.term()


def _unix_producer(path: str, count: int, cpu: Optional[int], conn: Any) -> None:
    _pin(cpu)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    conn.send("ready")
    s, _ = srv.accept()
    msg = b"\x5a" * SIZE
    for _ in range(count):
        s.sendall(msg)
    s.close()
    srv.close()


# ---- round trips -------------------------------------------------------------


def _quantiles(lat: List[int]) -> Dict[str, float]:
    lat = sorted(lat)
    return {
        "p50_us": lat[len(lat) // 2] / 1e3,
        "p99_us": lat[min(len(lat) - 1, len(lat) * 99 // 100)] / 1e3,
    }


def roundtrip(name: str, rounds: int = 20_000, warmup: int = 500, delay_us: float = 0) -> List[int]:
    """Round-trip times (ns) of ``rounds`` 64 B ping-pongs through ``name``
    (one of ``ROUNDTRIP``), after ``warmup`` unmeasured ones.  The echo
    server answers at once, or after ``delay_us`` of busy work: long enough
    a delay (beyond the 50 us that waiters spin) shows the cost of a waiter
    that really sleeps."""
    delay = int(delay_us * 1000)
    why = _unavailable(name)
    if why:
        raise RuntimeError(why)
    msg = b"\x5a" * SIZE
    clock = time.perf_counter_ns
    with _pinned():
        if name.startswith("ring"):
            with _rings(2) as (there, back), _peer(_ring_echo, there.name, back.name, delay):
                try:
                    if name == "ring-sync":
                        put, get = there.put, back.get
                        out = []
                        for i in range(warmup + rounds):
                            t = clock()
                            put(msg)
                            get()
                            out.append(clock() - t)
                        return out[warmup:]

                    async def ring_main() -> List[int]:
                        put, get = there.put, back.get_async
                        out = []
                        for i in range(warmup + rounds):
                            t = clock()
                            put(msg)
                            await get()
                            out.append(clock() - t)
                        return out[warmup:]

                    return asyncio.run(ring_main())
                finally:
                    there.put(b"")
        with _tempdir() as tmp:
            if name == "zmq-async":
                import zmq
                import zmq.asyncio

                addr = f"ipc://{tmp}/echo"
                with _peer(_zmq_echo, addr, delay):

                    async def zmq_main() -> List[int]:
                        ctx = zmq.asyncio.Context()
                        s = ctx.socket(zmq.PAIR)
                        s.connect(addr)
                        out = []
                        try:
                            for i in range(warmup + rounds):
                                t = clock()
                                await s.send(msg)
                                await s.recv()
                                out.append(clock() - t)
                            await s.send(b"")
                        finally:
                            s.close(linger=1000)
                            ctx.term()
                        return out[warmup:]

                    return asyncio.run(zmq_main())
            path = os.path.join(tmp, "echo.sock")
            with _peer(_unix_echo, path, delay):

                async def unix_main() -> List[int]:
                    reader, writer = await asyncio.open_unix_connection(path)
                    out = []
                    try:
                        for i in range(warmup + rounds):
                            t = clock()
                            writer.write(msg)
                            await reader.readexactly(SIZE)
                            out.append(clock() - t)
                    finally:
                        writer.close()
                        await writer.wait_closed()
                    return out[warmup:]

                return asyncio.run(unix_main())


# ---- throughput ----------------------------------------------------------------


def throughput(name: str, count: int = 300_000) -> float:
    """Messages per second of 64 B through ``name`` (one of ``THROUGHPUT``),
    timed from the first message to the last one received."""
    why = _unavailable(name)
    if why:
        raise RuntimeError(why)
    clock = time.perf_counter
    with _pinned():
        if name == "ring-async-put":
            with _rings(1) as (ring,), _peer(_ring_consumer, ring.name, count) as conn:
                msg = b"\x5a" * SIZE

                async def put_main() -> float:
                    put = ring.put_async
                    t = clock()
                    for _ in range(count):
                        await put(msg)
                    return t

                t0 = asyncio.run(put_main())
                got = conn.recv()
                dt = clock() - t0
                assert got == count * SIZE, got
                return count / dt
        if name.startswith("ring"):
            with _rings(1) as (ring,), _peer(_ring_producer, ring.name, count) as conn:
                if name == "ring-sync":
                    get = ring.get
                    conn.send("go")
                    t = clock()
                    for _ in range(count):
                        get()
                    return count / (clock() - t)

                async def get_main() -> float:
                    conn.send("go")
                    t = clock()
                    if name == "ring-async":
                        get = ring.get_async
                        for _ in range(count):
                            await get()
                    else:
                        got = 0
                        get_many = ring.get_many_async
                        while got < count:
                            got += len(await get_many(BATCH))
                    return count / (clock() - t)

                return asyncio.run(get_main())
        with _tempdir() as tmp:
            if name == "zmq-async":
                import zmq
                import zmq.asyncio

                addr = f"ipc://{tmp}/tp"

                # The peer is forked before this process makes a ZeroMQ
                # context: a context does not survive fork().
                with _peer(_zmq_producer, addr, count) as conn:

                    async def zmq_main() -> float:
                        ctx = zmq.asyncio.Context()
                        s = ctx.socket(zmq.PULL)
                        s.bind(addr)
                        try:
                            conn.send("go")
                            t = clock()
                            got = 0
                            # Non-blocking receives through a synchronous
                            # shadow of the same socket (zmq.asyncio's
                            # recv(NOBLOCK) still returns a future).
                            recv = zmq.Socket.shadow(s.underlying).recv
                            poll, nowait = s.poll, zmq.NOBLOCK
                            last, seen = t, 0
                            while got < count:
                                try:
                                    recv(nowait)
                                    got += 1
                                except zmq.Again:
                                    # Not `await s.recv()` alone: under a
                                    # flood pyzmq's asyncio integration can
                                    # miss an edge of the ZeroMQ descriptor
                                    # and never wake (seen here, as in
                                    # pyzmq#1203); a poll with a timeout
                                    # recovers from that.
                                    await poll(10)
                                    now = clock()
                                    if got != seen:
                                        seen, last = got, now
                                    elif now - last > 10:
                                        # Seen now and then under pytest on
                                        # this machine: a stall, not a figure.
                                        raise RuntimeError(f"pyzmq stalled after {got} of {count} messages")
                            return count / (clock() - t)
                        finally:
                            s.close(linger=0)
                            ctx.term()

                    return asyncio.run(zmq_main())
            path = os.path.join(tmp, "tp.sock")
            with _peer(_unix_producer, path, count):

                async def unix_main() -> float:
                    reader, writer = await asyncio.open_unix_connection(path)
                    try:
                        t = clock()
                        for _ in range(count):
                            await reader.readexactly(SIZE)
                        return count / (clock() - t)
                    finally:
                        writer.close()
                        await writer.wait_closed()

                return asyncio.run(unix_main())


# ---- idle CPU ------------------------------------------------------------------


def idle_cpu(waiters: int = 1000, seconds: float = 5.0) -> float:
    """The share of one core this process (helper threads included) uses
    while ``waiters`` coroutines wait on as many rings for ``seconds``."""
    with _rings(waiters, capacity=4096) as rings:

        async def main() -> float:
            tasks = [asyncio.ensure_future(r.get_async()) for r in rings]
            await asyncio.sleep(0.5)  # every one asleep
            t, cpu = time.monotonic(), _cpu_seconds()
            await asyncio.sleep(seconds)
            share = (_cpu_seconds() - cpu) / (time.monotonic() - t)
            for r in rings:
                r.put(b"x")
            await asyncio.gather(*tasks)
            return share

        return asyncio.run(main())


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def main(runs: int = 3) -> None:
    """A short table on stdout: medians of a few runs of every function
    (round trips also with an echo that answers after 100 us of work)."""
    print(f"pinned: this process on CPU {CPUS[0]}, the peer on CPU {CPUS[1]}; medians of {runs} runs")
    for delay in (0, 100):
        for name in ROUNDTRIP:
            label = f"{name}{'' if not delay else f' (echo after {delay} us)'}"
            why = _unavailable(name)
            try:
                if why:
                    raise RuntimeError(why)
                qs = [_quantiles(roundtrip(name, 10_000, delay_us=delay)) for _ in range(runs)]
            except RuntimeError as e:
                print(f"{label:34} failed: {e}")
                continue
            print(
                f"{label:34} round trip p50 {statistics.median(q['p50_us'] for q in qs):7.1f} us"
                f"  p99 {statistics.median(q['p99_us'] for q in qs):7.1f} us"
            )
    rates: Dict[str, List[float]] = {}
    for _ in range(runs):
        for name in THROUGHPUT:
            if _unavailable(name):
                continue
            try:
                rates.setdefault(name, []).append(throughput(name, 200_000))
            except RuntimeError as e:
                print(f"{name:34} failed: {e}")
    sync = statistics.median(rates["ring-sync"])
    for name, rs in rates.items():
        med = statistics.median(rs)
        print(f"{name:34} {med / 1e6:6.2f} M msg/s  ({med / sync:.2f} x ring-sync)")
    print(f"idle CPU, 1,000 waiters on 1,000 rings: {100 * idle_cpu(1000, 5.0):.3f} % of a core")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
