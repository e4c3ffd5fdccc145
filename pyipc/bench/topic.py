"""Broadcast benchmark: one publisher, N subscriber processes (``pyipc bench --topic``).

The publisher runs pinned to one CPU and the N subscribers share the other
(pinned too; on a one-CPU machine nothing is pinned).  The publisher sends
for a fixed time, then ends the stream (a topic's ``shutdown()``, an empty
message elsewhere); every subscriber counts and size-checks what it gets.
A cell is the messages *delivered* (summed over subscribers) per second,
from the moment all are ready until the last subscriber has seen the end;
a cell whose subscribers did not all receive every message is reported as
failed, never as a figure (every contender here is lossless).

Contenders, each where installed: pyipc topics (one call per message;
``publish_many``/``recv_many`` in batches of 64; at 1 MiB, ``reserve`` and
``view``), ZeroMQ XPUB/SUB over ``ipc://`` (``XPUB_NODROP`` and high-water
marks: a full subscriber blocks the publisher instead of losing
messages), iceoryx2 publish-subscribe (blocking back-pressure; its
subscribers poll, as its Python binding has no blocking receive), and one
``multiprocessing.Queue`` per subscriber.  Two ceilings are measured in the
same run: the subscribers' own loop fed by a receive that costs nothing (an
``itertools.repeat``), and NumPy summing a 1 MiB frame, alone, on the
subscribers' CPU.  At 1 MiB the publisher fills each frame with NumPy and
every subscriber sums it (as ``int32``).
"""
from __future__ import annotations

import ctypes
import importlib
import importlib.util
import itertools
import multiprocessing as mp
import os
import queue
import secrets
import statistics
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .runner import pick_cpus

__all__ = ["CONTENDERS", "run_cell", "ceiling", "overwrite_rate", "run_topic_bench", "format_topic_table"]

BATCH = 64
MIB = 1 << 20


def _zmq_hwm(size: int) -> int:
    """High-water marks of about 64 MiB a pipe: a full pipe is rare, and
    XPUB_NODROP's wake-up when one drains is unreliable with several
    subscribers (see _zmq_publisher)."""
    return max(64, min(100_000, (64 * MIB) // max(size, 1)))


def _pin(cpu: Optional[int]) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _np() -> Any:
    return importlib.import_module("numpy")


# ---- the subscribers' loops ---------------------------------------------------
#
# One loop per shape of receive, shared by every contender and by the
# ceilings, so that a ceiling is exactly the loop a contender runs.


# A loop ends at an empty message, or at one of `stop` (a topic's ShutDown).
Stop = Tuple[type[BaseException], ...]


def _loop_one(recv: Callable[[], Any], size: int, stop: Stop = ()) -> Tuple[int, int]:
    n = bad = 0
    try:
        while True:
            m = recv()
            if len(m) != size:
                if not m:
                    break
                bad += 1
            n += 1
    except stop:
        pass
    return n, bad


def _loop_many(recv_many: Callable[[], List[Any]], size: int, stop: Stop = ()) -> Tuple[int, int]:
    n = bad = 0
    try:
        while True:
            msgs = recv_many()
            for m in msgs:
                if len(m) != size:
                    if not m:
                        return n, bad
                    bad += 1
            n += len(msgs)
    except stop:
        pass
    return n, bad


def _loop_sum(recv: Callable[[], Any], size: int, stop: Stop = ()) -> Tuple[int, int]:
    """1 MiB: every frame is summed with NumPy (as int32)."""
    np = _np()
    frombuffer, i32 = np.frombuffer, np.int32
    n = bad = 0
    try:
        while True:
            m = recv()
            if len(m) != size:
                if not m:
                    break
                bad += 1
            else:
                frombuffer(m, i32).sum()
            n += 1
    except stop:
        pass
    return n, bad


# ---- pyipc topics ----------------------------------------------------------------


class _TopicEnd(Exception):
    pass


def _pyipc_setup(size: int, nsubs: int, overflow: str = "block") -> Dict[str, Any]:
    import pyipc

    cap = max(4 * MIB, 8 * (size + 16)) if size >= 65536 else 1 << 20
    pub = pyipc.Publisher("pyipc-bench-" + secrets.token_hex(6), create=True, capacity=cap,
                          max_subscribers=max(4, nsubs), overflow=overflow)
    return {"name": pub.name, "keep": pub}


def _pyipc_teardown(ctx: Dict[str, Any]) -> None:
    ctx["keep"].unlink()
    ctx["keep"].close()


def _pyipc_subscriber(ctx: Dict[str, Any], size: int, mode: str) -> Callable[[], Tuple[int, int]]:
    import pyipc

    sub = pyipc.Subscriber(ctx["name"])

    def run() -> Tuple[int, int]:
        stop = (pyipc.ShutDown,)
        if mode == "batch":
            recv_many = sub.recv_many
            counts = _loop_many(lambda: recv_many(BATCH), size, stop)
        elif mode == "view":
            np = _np()
            frombuffer, i32, view = np.frombuffer, np.int32, sub.view
            n = 0
            try:
                while True:
                    with view() as v:
                        a = frombuffer(v, i32)
                        a.sum()
                        del a
                    n += 1
            except pyipc.ShutDown:
                pass
            counts = (n, 0)
        elif size >= 65536:
            buf = bytearray(size)
            recv_into = sub.recv_into
            mv = memoryview(buf)

            def recv() -> Any:
                return mv[: recv_into(buf)]

            counts = _loop_sum(recv, size, stop)
        else:
            counts = _loop_one(sub.recv, size, stop)
        sub.close()
        return counts

    return run


def _pyipc_publisher(ctx: Dict[str, Any], size: int, mode: str) -> Tuple[Callable[[], None], Callable[[], None]]:
    import pyipc

    pub = pyipc.Publisher(ctx["name"])
    if mode == "batch":
        batch = [b"\x5a" * size] * BATCH
        publish_many = pub.publish_many

        def send() -> None:
            publish_many(batch)
    elif mode == "view":  # reserve, fill with NumPy in place
        np = _np()
        frombuffer, i32, reserve = np.frombuffer, np.int32, pub.reserve
        k = itertools.count()

        def send() -> None:
            with reserve(size) as b:
                a = frombuffer(b, i32)
                a.fill(next(k))
                del a
    elif size >= 65536:
        np = _np()
        arr = np.zeros(size // 4, dtype=np.int32)
        k = itertools.count()
        publish = pub.publish

        def send() -> None:
            arr.fill(next(k))
            publish(arr)
    else:
        msg = b"\x5a" * size
        publish = pub.publish

        def send() -> None:
            publish(msg)

    def end() -> None:
        pub.shutdown()
        pub.close()

    return send, end


# ---- ZeroMQ XPUB/SUB ----------------------------------------------------------------


def _zmq_setup(size: int, nsubs: int) -> Dict[str, Any]:
    path = f"/tmp/pyipc-bench-{secrets.token_hex(6)}.ipc"
    return {"addr": "ipc://" + path, "path": path, "nsubs": nsubs}


def _zmq_teardown(ctx: Dict[str, Any]) -> None:
    try:
        os.unlink(ctx["path"])
    except FileNotFoundError:
        pass


def _zmq_subscriber(ctx: Dict[str, Any], size: int, mode: str) -> Callable[[], Tuple[int, int]]:
    zmq = importlib.import_module("zmq")

    zc = zmq.Context()
    s = zc.socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, _zmq_hwm(size))
    # A subscriber that hears nothing for this long ends: the cell then
    # fails on its counts instead of hanging (seen with XPUB_NODROP).
    s.setsockopt(zmq.RCVTIMEO, 10_000)
    s.setsockopt(zmq.SUBSCRIBE, b"")
    # The publisher binds; retry until it has.
    s.connect(ctx["addr"])

    def run() -> Tuple[int, int]:
        if size >= 65536:
            recv = s.recv
            counts = _loop_sum(lambda: recv(copy=False).buffer, size, (zmq.Again,))
        else:
            counts = _loop_one(s.recv, size, (zmq.Again,))
        s.close(linger=0)
        zc.term()
        return counts

    return run


def _zmq_publisher(ctx: Dict[str, Any], size: int, mode: str) -> Tuple[Callable[[], None], Callable[[], None]]:
    zmq = importlib.import_module("zmq")

    zc = zmq.Context()
    p = zc.socket(zmq.XPUB)
    p.setsockopt(zmq.SNDHWM, _zmq_hwm(size))
    p.setsockopt(zmq.XPUB_NODROP, 1)
    p.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription, not only the first of each topic
    p.bind(ctx["addr"])
    # The slow-joiner problem: wait for every subscription before sending.
    p.setsockopt(zmq.RCVTIMEO, 20_000)
    for _ in range(ctx["nsubs"]):
        p.recv()
    psend, poll, again, noblock, pollout = p.send, p.poll, zmq.Again, zmq.NOBLOCK, zmq.POLLOUT

    def sendm(data: Any) -> None:
        # XPUB_NODROP: a full subscriber makes the send fail with EAGAIN.  A
        # blocking send can miss the wake-up when several subscribers are
        # attached and hang for good, so send without blocking and poll
        # (with a short timeout, for the same reason) until it goes.
        while True:
            try:
                psend(data, noblock)
                return
            except again:
                poll(1, pollout)

    if size >= 65536:
        np = _np()
        arr = np.zeros(size // 4, dtype=np.int32)
        k = itertools.count()

        def send() -> None:
            arr.fill(next(k))
            sendm(arr)
    else:
        msg = b"\x5a" * size

        def send() -> None:
            sendm(msg)

    def end() -> None:
        sendm(b"")
        p.close(linger=-1)
        zc.term()

    return send, end


# ---- iceoryx2 publish-subscribe ---------------------------------------------------------


def _iox2_service(name: str, nsubs: int) -> Tuple[Any, Any]:
    iox2 = importlib.import_module("iceoryx2")
    iox2.set_log_level(iox2.LogLevel.Error)
    node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
    service = (
        node.service_builder(iox2.ServiceName.new(name))
        .publish_subscribe(iox2.Slice[ctypes.c_uint8])
        .enable_safe_overflow(False)
        .max_subscribers(max(8, nsubs))
        .subscriber_max_buffer_size(BATCH)
        .open_or_create()
    )
    return node, service


def _iox2_setup(size: int, nsubs: int) -> Dict[str, Any]:
    return {"name": "pyipc-bench-" + secrets.token_hex(6), "nsubs": nsubs}


def _iox2_subscriber(ctx: Dict[str, Any], size: int, mode: str) -> Callable[[], Tuple[int, int]]:
    node, service = _iox2_service(ctx["name"], ctx["nsubs"])
    sub = service.subscriber_builder().buffer_size(BATCH).create()
    receive = sub.receive
    string_at = ctypes.string_at
    yield_cpu = os.sched_yield

    def run() -> Tuple[int, int]:
        if size >= 65536:
            np = _np()
            frombuffer, i32 = np.frombuffer, np.int32
            n = bad = 0
            while True:
                sample = receive()
                if sample is None:
                    yield_cpu()  # iceoryx2's subscribers poll: let the others run
                    continue
                k = sample.header.number_of_elements
                if k != size:
                    sample.delete()
                    if k == 0:
                        break
                    bad += 1
                    continue
                frombuffer((ctypes.c_uint8 * k).from_address(sample.payload_ptr), i32).sum()
                sample.delete()
                n += 1
            counts = (n, bad)
        else:
            def recv() -> bytes:
                while True:
                    sample = receive()
                    if sample is not None:
                        break
                    yield_cpu()
                data = string_at(sample.payload_ptr, sample.header.number_of_elements)
                sample.delete()
                return data

            counts = _loop_one(recv, size)
        sub.delete()
        return counts

    return run


def _iox2_publisher(ctx: Dict[str, Any], size: int, mode: str) -> Tuple[Callable[[], None], Callable[[], None]]:
    iox2 = importlib.import_module("iceoryx2")
    node, service = _iox2_service(ctx["name"], ctx["nsubs"])
    pub = (
        service.publisher_builder()
        .initial_max_slice_len(max(size, 1))
        .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered)
        .create()
    )
    while True:
        pub.update_connections()
        if service.dynamic_config.number_of_subscribers >= ctx["nsubs"]:
            break
        time.sleep(0.001)
    loan, memmove = pub.loan_slice_uninit, ctypes.memmove
    if size >= 65536:
        np = _np()
        frombuffer, i32 = np.frombuffer, np.int32
        k = itertools.count()

        def send() -> None:
            sample = loan(size)
            frombuffer((ctypes.c_uint8 * size).from_address(sample.payload_ptr), i32).fill(next(k))
            sample.assume_init().send()
    else:
        msg = b"\x5a" * size

        def send() -> None:
            sample = loan(size)
            memmove(sample.payload_ptr, msg, size)
            sample.assume_init().send()

    def end() -> None:
        loan(0).assume_init().send()
        pub.delete()

    return send, end


# ---- one multiprocessing.Queue per subscriber -----------------------------------------------


def _mpq_setup(size: int, nsubs: int) -> Dict[str, Any]:
    ctx = mp.get_context("fork")
    return {"queues": [ctx.Queue() for _ in range(nsubs)]}


def _mpq_subscriber(ctx: Dict[str, Any], size: int, mode: str) -> Callable[[], Tuple[int, int]]:
    q = ctx["queues"][ctx["index"]]

    def run() -> Tuple[int, int]:
        if size >= 65536:
            return _loop_sum(q.get, size)
        return _loop_one(q.get, size)

    return run


def _mpq_publisher(ctx: Dict[str, Any], size: int, mode: str) -> Tuple[Callable[[], None], Callable[[], None]]:
    puts = [q.put for q in ctx["queues"]]
    if size >= 65536:
        np = _np()
        arr = np.zeros(size // 4, dtype=np.int32)
        k = itertools.count()

        def send() -> None:
            arr.fill(next(k))
            data = arr.tobytes()
            for put in puts:
                put(data)
    else:
        msg = b"\x5a" * size

        def send() -> None:
            for put in puts:
                put(msg)

    def end() -> None:
        for put in puts:
            put(b"")
        for q in ctx["queues"]:
            q.close()
            q.join_thread()

    return send, end


# ---- the contenders ----------------------------------------------------------------


class Contender:
    def __init__(self, name: str, note: str, module: Optional[str], setup: Callable[..., Dict[str, Any]],
                 teardown: Callable[[Dict[str, Any]], None], sub: Callable[..., Any], pub: Callable[..., Any],
                 mode: str = "one", sizes: Sequence[int] = (64, MIB), per_send: int = 1) -> None:
        self.name, self.note, self.module = name, note, module
        self.setup, self.teardown, self.sub, self.pub = setup, teardown, sub, pub
        self.mode, self.sizes, self.per_send = mode, sizes, per_send

    def unavailable(self) -> Optional[str]:
        if self.module is not None and not _have(self.module):
            return f"{self.module} is not installed"
        return None


def _nothing(ctx: Dict[str, Any]) -> None:
    return None


CONTENDERS: Dict[str, Contender] = {
    c.name: c
    for c in (
        Contender("pyipc", "pyipc topic, publish/recv (recv_into + NumPy at 1 MiB)", None, _pyipc_setup,
                  _pyipc_teardown, _pyipc_subscriber, _pyipc_publisher),
        Contender("pyipc-batch", f"pyipc topic, publish_many/recv_many, batches of {BATCH}", None,
                  _pyipc_setup, _pyipc_teardown, _pyipc_subscriber, _pyipc_publisher, mode="batch",
                  sizes=(64,), per_send=BATCH),
        Contender("pyipc-lease", "pyipc topic, reserve (NumPy fill) / view (NumPy sum)", None, _pyipc_setup,
                  _pyipc_teardown, _pyipc_subscriber, _pyipc_publisher, mode="view", sizes=(MIB,)),
        Contender("zmq", "ZeroMQ XPUB/SUB ipc://, XPUB_NODROP, HWM ~64 MiB a pipe", "zmq", _zmq_setup, _zmq_teardown,
                  _zmq_subscriber, _zmq_publisher),
        Contender("iceoryx2", "iceoryx2 publish-subscribe, back-pressure, polling subscribers", "iceoryx2",
                  _iox2_setup, _nothing, _iox2_subscriber, _iox2_publisher),
        Contender("mp-queue", "one multiprocessing.Queue per subscriber", None, _mpq_setup, _nothing,
                  _mpq_subscriber, _mpq_publisher),
    )
}


# ---- running a cell ------------------------------------------------------------------


def _sub_main(c: Contender, ctx: Dict[str, Any], size: int, cpu: Optional[int], barrier: Any,
              out: Any) -> None:
    _pin(cpu)
    try:
        if size >= 65536:
            # Import NumPy before the clock starts, as the ceiling does: a
            # loop importing it inside the timed window paid ~0.1 s of CPU
            # per subscriber, all on the subscribers' one CPU.
            _np()
        run = c.sub(ctx, size, c.mode)
        barrier.wait(60)
        n, bad = run()
        out.put(("sub", n, bad, time.monotonic()))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        out.put(("error", repr(e), 0, 0.0))
        raise


def _pub_main(c: Contender, ctx: Dict[str, Any], size: int, cpu: Optional[int], barrier: Any, out: Any,
              seconds: float) -> None:
    _pin(cpu)
    try:
        send, end = c.pub(ctx, size, c.mode)
        barrier.wait(60)
        n = 0
        stop = time.monotonic() + seconds
        mono = time.monotonic
        while True:
            for _ in range(16):
                send()
            n += 16
            if mono() >= stop:
                break
        end()
        out.put(("pub", n * c.per_send, 0, time.monotonic()))
    except BaseException as e:  # noqa: BLE001
        out.put(("error", repr(e), 0, 0.0))
        raise


def run_cell(name: str, size: int, nsubs: int, seconds: float = 1.0,
             overflow: str = "block") -> Dict[str, Any]:
    """One run of contender ``name``: {"rate": deliveries/s, "published": n,
    "delivered": n, "ok": bool, "error": str or None}."""
    c = CONTENDERS[name]
    sub_cpu, pub_cpu = pick_cpus()
    fork = mp.get_context("fork")
    ctx = c.setup(size, nsubs) if c.setup is not _pyipc_setup else _pyipc_setup(size, nsubs, overflow)
    barrier = fork.Barrier(nsubs + 2)
    out = fork.Queue()
    procs = []
    try:
        for i in range(nsubs):
            sctx = dict(ctx, index=i)
            procs.append(fork.Process(target=_sub_main, args=(c, sctx, size, sub_cpu, barrier, out)))
        procs.append(fork.Process(target=_pub_main, args=(c, ctx, size, pub_cpu, barrier, out, seconds)))
        for p in procs:
            p.start()
        try:
            barrier.wait(120)
        except threading.BrokenBarrierError:
            return {"rate": 0.0, "ok": False, "error": "a process did not start"}
        t0 = time.monotonic()
        results = []
        for _ in procs:
            try:
                results.append(out.get(timeout=seconds * 20 + 30))
            except queue.Empty:
                results.append(("error", "a process did not finish in time", 0, 0.0))
                break
        for p in procs:
            p.join(10)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        c.teardown(ctx)
    errors = [r[1] for r in results if r[0] == "error"]
    pub = [r for r in results if r[0] == "pub"]
    subs = [r for r in results if r[0] == "sub"]
    if errors or not pub or len(subs) != nsubs:
        return {"rate": 0.0, "ok": False, "error": "; ".join(map(str, errors)) or "a process failed"}
    published = pub[0][1]
    delivered = sum(r[1] for r in subs)
    end = max(r[3] for r in subs)
    ok = all(r[1] == published and r[2] == 0 for r in subs)
    return {"rate": delivered / (end - t0), "published": published, "delivered": delivered,
            "publish_rate": published / (pub[0][3] - t0), "ok": ok,
            "error": None if ok else f"published {published}, received {[r[1] for r in subs]}"}


# ---- ceilings ----------------------------------------------------------------------


def _ceiling_main(kind: str, size: int, cpu: Optional[int], barrier: Any, out: Any, count: int) -> None:
    _pin(cpu)
    if kind == "sum":
        np = _np()
        frame = np.ones(size // 4, dtype=np.int32).tobytes()
        it = itertools.chain(itertools.repeat(frame, count), [b""])
        barrier.wait(60)
        n, _ = _loop_sum(it.__next__, size)
    elif kind == "batch":
        batch = [b"\x5a" * size] * BATCH
        it = itertools.chain(itertools.repeat(batch, count // BATCH), [[b""]])
        barrier.wait(60)
        n, _ = _loop_many(it.__next__, size)
    else:
        it2 = itertools.chain(itertools.repeat(b"\x5a" * size, count), [b""])
        barrier.wait(60)
        n, _ = _loop_one(it2.__next__, size)
    out.put((n, time.monotonic()))


def ceiling(kind: str, size: int, nsubs: int, seconds: float = 1.0) -> float:
    """Deliveries per second of the subscribers' own loop (``kind`` "one",
    "batch" or "sum") fed by a receive that costs nothing, N processes on
    the subscribers' CPU."""
    sub_cpu, _ = pick_cpus()
    fork = mp.get_context("fork")
    # Size the work for about `seconds` of the loop.
    per = {"one": 15_000_000, "batch": 30_000_000, "sum": 5_000}[kind]
    count = max(BATCH, int(per * seconds / nsubs))
    barrier = fork.Barrier(nsubs + 1)
    out = fork.Queue()
    procs = [fork.Process(target=_ceiling_main, args=(kind, size, sub_cpu, barrier, out, count))
             for _ in range(nsubs)]
    for p in procs:
        p.start()
    barrier.wait(60)
    t0 = time.monotonic()
    res = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
    return float(sum(r[0] for r in res) / (max(r[1] for r in res) - t0))


def overwrite_rate(nsubs: int, seconds: float = 1.0) -> float:
    """Messages of 64 B published per second on an "overwrite" topic with
    ``nsubs`` subscriber processes reading."""
    res = run_cell("pyipc", 64, nsubs, seconds, overflow="overwrite")
    return float(res.get("publish_rate", 0.0))


# ---- the table -----------------------------------------------------------------------


def run_topic_bench(seconds: float = 1.0, repeat: int = 3, subs: Sequence[int] = (1, 4),
                    names: Optional[Sequence[str]] = None,
                    progress: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Every cell, ``repeat`` times, medians; ceilings and the overwrite ratio too."""
    say = progress or (lambda s: None)
    names = list(names or CONTENDERS)
    report: Dict[str, Any] = {"cells": {}, "ceilings": {}, "cpus": pick_cpus(), "seconds": seconds,
                              "repeat": repeat}
    for size in (64, MIB):
        for n in subs:
            for name in names:
                c = CONTENDERS[name]
                if size not in c.sizes:
                    continue
                why = c.unavailable()
                if why:
                    report["cells"][(name, size, n)] = {"rate": None, "error": why}
                    continue
                runs = []
                for r in range(repeat):
                    say(f"{name} {size} B x {n} subscribers, run {r + 1}/{repeat}")
                    runs.append(run_cell(name, size, n, seconds))
                bad = [x for x in runs if not x["ok"]]
                report["cells"][(name, size, n)] = {
                    "rate": None if bad else statistics.median(x["rate"] for x in runs),
                    "error": bad[0]["error"] if bad else None,
                }
            kinds = ("one", "batch") if size == 64 else ("sum",)
            for kind in kinds:
                say(f"ceiling {kind} {size} B x {n}")
                report["ceilings"][(kind, size, n)] = statistics.median(
                    ceiling(kind, size, n, seconds) for _ in range(repeat))
    for n in (1, 4):
        say(f"overwrite publisher rate x {n}")
        report["ceilings"][("overwrite-publish", 64, n)] = statistics.median(
            overwrite_rate(n, seconds) for _ in range(repeat))
    return report


def _fmt(rate: Optional[float]) -> str:
    if rate is None:
        return "-"
    if rate >= 1e6:
        return f"{rate / 1e6:.2f} M"
    if rate >= 1e3:
        return f"{rate / 1e3:.1f} k"
    return f"{rate:.0f}"


def format_topic_table(report: Dict[str, Any]) -> str:
    """The report as a table: deliveries per second (summed over subscribers)."""
    cells, ceil = report["cells"], report["ceilings"]
    subs = sorted({k[2] for k in cells})
    lines = []
    sub_cpu, pub_cpu = report["cpus"]
    lines.append("pinned: " + ("nothing (one CPU)" if sub_cpu is None
                               else f"publisher on CPU {pub_cpu}, all subscribers on CPU {sub_cpu}"))
    for size in (64, MIB):
        label = "64 B" if size == 64 else "1 MiB"
        lines.append("")
        lines.append(f"{label}: deliveries/s (summed over subscribers), median of {report['repeat']}")
        head = f"{'contender':<14}" + "".join(f"{f'{n} sub':>12}" for n in subs)
        lines.append(head)
        names = [k[0] for k in cells if k[1] == size]
        for name in dict.fromkeys(names):
            row = f"{name:<14}"
            for n in subs:
                cell = cells.get((name, size, n))
                row += f"{_fmt(cell['rate']) if cell and cell['rate'] else 'failed' if cell and cell['error'] else '-':>12}"
            lines.append(row)
        for kind in ("one", "batch", "sum"):
            if any((kind, size, n) in ceil for n in subs):
                title = {"one": "ceil: loop", "batch": "ceil: loop/64", "sum": "ceil: NumPy sum"}[kind]
                lines.append(f"{title:<14}" + "".join(f"{_fmt(ceil.get((kind, size, n))):>12}" for n in subs))
    o1, o4 = ceil.get(("overwrite-publish", 64, 1)), ceil.get(("overwrite-publish", 64, 4))
    if o1 and o4:
        lines.append("")
        lines.append(f"overwrite topic, 64 B, publisher's rate: {_fmt(o1)}/s with 1 subscriber, "
                     f"{_fmt(o4)}/s with 4 ({o4 / o1:.0%})")
    errors = [(k, v["error"]) for k, v in cells.items() if v.get("error") and v.get("rate") is None]
    for (name, size, n), err in errors:
        lines.append(f"  {name} {size} B x {n}: {err}")
    return "\n".join(lines)


if __name__ == "__main__":
    rep = run_topic_bench(progress=lambda s: print(s, flush=True))
    print(format_topic_table(rep))
