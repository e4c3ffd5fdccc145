"""Channel throughput: pyipc channels against pure-Python framing over the
same kernel primitive, ``multiprocessing.Pipe``, ``posix_ipc`` and the ring.

One producer and one consumer.  The producer is a child made with
``os.fork()`` and pinned with ``os.sched_setaffinity`` to another CPU than
the consumer (the parent), when the machine has two; each run sends N
messages of one size and the consumer's rate is messages per second from its
first message to its last.  Every transport is measured in the same run, so
the ratios compare like with like.  Third-party baselines are skipped with a
note when their package is missing.

    python benches/bench_channels.py [--sizes 64,1048576] [--repeat 5]
    python -m pytest benches/bench_channels.py --benchmark-only
"""
from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import socket
import statistics
import struct
import sys
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

import pyipc

_HDR = struct.Struct("<Q")
_CPUS = sorted(os.sched_getaffinity(0))
# A transport: make() -> (producer(payload, n) run in the child after fork,
#                         consumer(n) -> seconds for messages 2..n, cleanup()).
Transport = Callable[[], Tuple[Callable[[bytes, int], None], Callable[[int], float], Callable[[], None]]]


def _pin(child: bool) -> None:
    if len(_CPUS) >= 2:
        os.sched_setaffinity(0, {_CPUS[1] if child else _CPUS[0]})


def _time_recv(recv: Callable[[], Any], n: int) -> float:
    recv()  # the first message starts the clock: fork time is not counted
    t0 = time.perf_counter()
    for _ in range(n - 1):
        recv()
    return time.perf_counter() - t0


def _time_recv_into(recv_into: Callable[[Any], Any], n: int, size: int) -> float:
    buf = bytearray(max(size, 1))
    recv_into(buf)
    t0 = time.perf_counter()
    for _ in range(n - 1):
        recv_into(buf)
    return time.perf_counter() - t0


# ---------------------------------------------------------------- pyipc


def t_pyipc_pipe() -> Any:
    r, w = pyipc.pipe()

    def prod(p: bytes, n: int) -> None:
        r.close()
        send = w.send
        for _ in range(n):
            send(p)

    def cons(n: int) -> float:
        w.close()
        return _time_recv(r.recv, n)

    return prod, cons, r.close


def t_pyipc_socket(kind: str) -> Any:
    def make() -> Any:
        a, b = pyipc.socketpair(kind)

        def prod(p: bytes, n: int) -> None:
            b.close()
            send = a.send
            for _ in range(n):
                send(p)

        def cons(n: int) -> float:
            a.close()
            return _time_recv(b.recv, n)

        return prod, cons, b.close

    return make


def t_pyipc_mq() -> Any:
    name = f"pyipc-bench-{uuid.uuid4().hex[:8]}"
    q = pyipc.MessageQueue(name, create=True, max_messages=10, max_message_size=8192)

    def prod(p: bytes, n: int) -> None:
        send = q.send
        for _ in range(n):
            send(p)

    def cons(n: int) -> float:
        return _time_recv(q.recv, n)

    def clean() -> None:
        q.unlink()
        q.close()

    return prod, cons, clean


def t_pyipc_ring() -> Any:
    ring = pyipc.RingBuffer(create=True, capacity=1 << 20)

    def prod(p: bytes, n: int) -> None:
        put = ring.put
        for _ in range(n):
            put(p)

    def cons(n: int) -> float:
        return _time_recv(ring.get, n)

    def clean() -> None:
        ring.unlink()
        ring.close()

    return prod, cons, clean


# ------------------------------------------------------ pure-Python framing


def _framed_writer(write: Callable[[bytes], Any]) -> Callable[[bytes, int], None]:
    pack = _HDR.pack

    def prod(p: bytes, n: int) -> None:
        # One system call per message: header and payload concatenated
        # (cheaper than writev for small messages, no worse for large).
        if len(p) <= 65536:
            frame = pack(len(p)) + p
            for _ in range(n):
                write(frame)
        else:
            h = pack(len(p))
            for _ in range(n):
                write(h)
                write(p)

    return prod


def t_os_pipe_unbuffered() -> Any:
    """os.pipe, reader: os.read for the header, then for the payload."""
    r, w = os.pipe()

    def write_all(b: bytes) -> None:
        mv = memoryview(b)
        while mv:
            mv = mv[os.write(w, mv):]

    def cons(n: int) -> float:
        os.close(w)
        read, unpack = os.read, _HDR.unpack

        def recv() -> bytes:
            h = read(r, 8)
            while len(h) < 8:
                h += read(r, 8 - len(h))
            (size,) = unpack(h)
            data = read(r, size) if size else b""
            while len(data) < size:
                data += read(r, size - len(data))
            return data

        return _time_recv(recv, n)

    def prod(p: bytes, n: int) -> None:
        os.close(r)
        _framed_writer(write_all)(p, n)

    return prod, cons, lambda: os.close(r)


def t_os_pipe_buffered() -> Any:
    """os.pipe, reader: an io.BufferedReader (reads ahead), read(8), read(n)."""
    r, w = os.pipe()

    def cons(n: int) -> float:
        os.close(w)
        f = io.open(r, "rb", buffering=65536)
        read, unpack = f.read, _HDR.unpack

        def recv() -> bytes:
            (size,) = unpack(read(8))
            return read(size)

        return _time_recv(recv, n)

    def prod(p: bytes, n: int) -> None:
        os.close(r)
        f = io.open(w, "wb", buffering=0)
        _framed_writer(f.write)(p, n)  # FileIO.write of a pipe: loops below

    return prod, cons, lambda: None


def t_socket_stream_buffered() -> Any:
    """socketpair, sendall; reader: sock.makefile('rb') read(8), read(n)."""
    a, b = socket.socketpair()

    def cons(n: int) -> float:
        a.close()
        f = b.makefile("rb", buffering=65536)
        read, unpack = f.read, _HDR.unpack

        def recv() -> bytes:
            (size,) = unpack(read(8))
            return read(size)

        return _time_recv(recv, n)

    def prod(p: bytes, n: int) -> None:
        b.close()
        _framed_writer(a.sendall)(p, n)

    return prod, cons, b.close


def t_socket_stream_unbuffered() -> Any:
    """socketpair, sendall; reader: recv for the header, recv_into payload."""
    a, b = socket.socketpair()

    def cons(n: int) -> float:
        a.close()
        recv_raw, unpack = b.recv, _HDR.unpack

        def recv() -> bytes:
            h = recv_raw(8, socket.MSG_WAITALL)
            (size,) = unpack(h)
            return recv_raw(size, socket.MSG_WAITALL) if size else b""

        return _time_recv(recv, n)

    def prod(p: bytes, n: int) -> None:
        b.close()
        _framed_writer(a.sendall)(p, n)

    return prod, cons, b.close


def t_socket_packet(kind: str) -> Any:
    """socketpair of packets: no framing needed, send / recv."""

    def make() -> Any:
        t = socket.SOCK_SEQPACKET if kind == "seqpacket" else socket.SOCK_DGRAM
        a, b = socket.socketpair(socket.AF_UNIX, t)

        def prod(p: bytes, n: int) -> None:
            b.close()
            send = a.send
            for _ in range(n):
                send(p)

        def cons(n: int) -> float:
            a.close()
            recv = b.recv
            return _time_recv(lambda: recv(1 << 20), n)

        return prod, cons, b.close

    return make


def t_mp_pipe() -> Any:
    """multiprocessing.Pipe(duplex=False): send_bytes / recv_bytes."""
    r, w = multiprocessing.Pipe(duplex=False)

    def prod(p: bytes, n: int) -> None:
        r.close()
        send = w.send_bytes
        for _ in range(n):
            send(p)

    def cons(n: int) -> float:
        w.close()
        return _time_recv(r.recv_bytes, n)

    return prod, cons, r.close


def t_posix_ipc() -> Any:
    import posix_ipc  # type: ignore[import-not-found]

    name = f"/pyipc-bench-{uuid.uuid4().hex[:8]}"
    q = posix_ipc.MessageQueue(name, posix_ipc.O_CREX, max_messages=10, max_message_size=8192)

    def prod(p: bytes, n: int) -> None:
        send = q.send
        for _ in range(n):
            send(p)

    def cons(n: int) -> float:
        recv = q.receive
        return _time_recv(recv, n)

    def clean() -> None:
        q.unlink()
        q.close()

    return prod, cons, clean


def _has(mod: str) -> bool:
    try:
        __import__(mod)
        return True
    except ImportError:
        return False


# (group, name, factory, max size it takes, third-party module or None)
TRANSPORTS: List[Tuple[str, str, Any, int, Optional[str]]] = [
    ("pipe", "pyipc.pipe", t_pyipc_pipe, 1 << 30, None),
    ("pipe", "os.pipe + BufferedReader", t_os_pipe_buffered, 1 << 30, None),
    ("pipe", "os.pipe + os.read", t_os_pipe_unbuffered, 1 << 30, None),
    ("pipe", "multiprocessing.Pipe", t_mp_pipe, 1 << 30, None),
    ("stream", "pyipc.socketpair(stream)", t_pyipc_socket("stream"), 1 << 30, None),
    ("stream", "socket + makefile", t_socket_stream_buffered, 1 << 30, None),
    ("stream", "socket + recv WAITALL", t_socket_stream_unbuffered, 1 << 30, None),
    ("seqpacket", "pyipc.socketpair(seqpacket)", t_pyipc_socket("seqpacket"), 100_000, None),
    ("seqpacket", "socket seqpacket", t_socket_packet("seqpacket"), 100_000, None),
    ("dgram", "pyipc.socketpair(dgram)", t_pyipc_socket("dgram"), 100_000, None),
    ("dgram", "socket dgram", t_socket_packet("dgram"), 100_000, None),
    ("mq", "pyipc.MessageQueue", t_pyipc_mq, 8192, None),
    ("mq", "posix_ipc.MessageQueue", t_posix_ipc, 8192, "posix_ipc"),
    ("ring", "pyipc.RingBuffer", t_pyipc_ring, 256 * 1024, None),
]


def run_once(factory: Any, size: int, n: int) -> float:
    """Messages per second for one run of n messages of size bytes."""
    prod, cons, clean = factory()
    payload = os.urandom(size)
    pid = os.fork()
    if pid == 0:  # the producer
        code = 0
        try:
            _pin(True)
            prod(payload, n)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    try:
        _pin(False)
        secs = cons(n)
    finally:
        _, status = os.waitpid(pid, 0)
        clean()
        os.sched_setaffinity(0, set(_CPUS))
    if status != 0:
        raise RuntimeError("producer failed")
    return (n - 1) / secs


def count_for(size: int) -> int:
    # Enough messages for ~0.1-0.5 s per run at the speeds seen here.
    return max(200, min(200_000, (256 << 20) // max(size, 1) // 4))


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="64,1048576")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--only", default="", help="comma-separated groups")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    groups = set(args.only.split(",")) if args.only else None
    print(f"CPUs {_CPUS}; producer pinned to {_CPUS[-1] if len(_CPUS) > 1 else 'same CPU'}")
    results: Dict[Tuple[str, int], float] = {}
    for size in sizes:
        n = count_for(size)
        todo = []
        for group, name, factory, maxsize, dep in TRANSPORTS:
            if (groups and group not in groups) or size > maxsize:
                continue
            if dep and not _has(dep):
                print(f"  {name:32s} skipped: {dep} not installed")
                continue
            todo.append((name, factory))
        # Round-robin over the transports, so that a noisy neighbour on a
        # shared machine hits all of them alike rather than one.
        rates: Dict[str, List[float]] = {name: [] for name, _ in todo}
        for _ in range(args.repeat):
            for name, factory in todo:
                rates[name].append(run_once(factory, size, n))
        print(f"\n{size} B messages, {n} per run, median of {args.repeat} (min-max):")
        for name, _ in todo:
            med = statistics.median(rates[name])
            results[(name, size)] = med
            print(
                f"  {name:32s} {med / 1e3:9.1f} k msg/s {med * size / 2**20:9.1f} MiB/s"
                f"   ({min(rates[name]) / 1e3:.0f}-{max(rates[name]) / 1e3:.0f} k)"
            )
    print("\nratios (pyipc / best pure-Python baseline over the same primitive):")
    for size in sizes:
        for group in ("pipe", "stream", "seqpacket", "dgram", "mq"):
            names = [t[1] for t in TRANSPORTS if t[0] == group and (t[1], size) in results]
            ours = [x for x in names if x.startswith("pyipc")]
            base = [x for x in names if not x.startswith("pyipc") and x != "multiprocessing.Pipe"]
            if ours and base:
                best = max(base, key=lambda x: results[(x, size)])
                r = results[(ours[0], size)] / results[(best, size)]
                print(f"  {size:>8} B {group:10s} {r:5.2f}x  vs {best}")


# ------------------------------------------------------ pytest-benchmark

try:
    import pytest
except ImportError:  # pragma: no cover
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    def _cases() -> List[Any]:
        out = []
        for size in (64, 1 << 20):
            for group, name, factory, maxsize, dep in TRANSPORTS:
                if size <= maxsize:
                    out.append(pytest.param(name, factory, size, dep, id=f"{name}-{size}"))
        return out

    @pytest.mark.parametrize("name,factory,size,dep", _cases())
    def test_channel_throughput(benchmark: Any, name: str, factory: Any, size: int, dep: Optional[str]) -> None:
        """Time one producer/consumer run (N messages) per round."""
        if dep and not _has(dep):
            pytest.skip(f"{dep} not installed")
        n = count_for(size) // 4
        benchmark.extra_info["messages"] = n
        benchmark.extra_info["size"] = size
        benchmark.pedantic(run_once, args=(factory, size, n), rounds=3, iterations=1)


if __name__ == "__main__":
    main()
