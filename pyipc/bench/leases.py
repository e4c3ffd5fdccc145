"""``pyipc bench --leases``: large messages that the producer fills and the
consumer reads, zero-copy leases side by side with copies and the peers.

Each message is an array of N bytes that the producer fills (``fill``: every
byte set, as a frame grabber or a model would write its output) and the
consumer sums as 64-bit integers (a read of every byte) and checks against
what was written, so a torn or stale message fails the cell.  Producer and
consumer are two processes pinned to two CPUs.  Contenders:

* ``lease``: ``RingBuffer.reserve`` (fill in place) and ``view`` (sum in place);
* ``put/get_into``: fill a private array, ``put`` it; ``get_into`` a private
  array, sum it;
* ``queue``: ``pyipc.Queue`` of NumPy arrays (one copy each way);
* ``iceoryx2``: its loan API (``loan_slice_uninit``, fill, send; sum the
  received sample in place), lossless back-pressure;
* ``shared_memory``: ``multiprocessing.shared_memory`` blocks filled in
  place, their indices sent through a ``multiprocessing.Queue`` (and back
  when free);
* ``mp.Queue``: ``multiprocessing.Queue`` of NumPy arrays.

More rows are not transports: ``limit`` is writing a message and then
reading it once, on one CPU, with no transport at all (what a transport
that copies nothing still costs per message); ``ceiling`` is one CPU only
filling while the other only sums (the slower of the two), which no
two-process pipeline can pass; and ``lease cost`` is pyipc's own time per
leased message, a reserve/view round with no fill and no sum.
"""
from __future__ import annotations

import ctypes
import importlib
import multiprocessing as mp
import os
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = ["CONTENDERS", "DEFAULT_SIZES", "run_lease_bench", "format_lease_table"]

DEFAULT_SIZES = (1 << 20, 16 << 20, 64 << 20)
BUDGET = 1 << 31  # bytes moved per cell and run: 2 GiB
WARMUP = 4        # messages before the clock starts
LANE = 0x0101010101010101


def _count(size: int) -> int:
    return max(16, BUDGET // size)


def _expect(size: int, k: int) -> int:
    """The sum, as uint64 lanes, of a message of `size` bytes all equal to k."""
    return ((size // 8) * ((k & 0xFF) * LANE)) & 0xFFFFFFFFFFFFFFFF


def _pin(cpu: Optional[int]) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def _cpus() -> Tuple[Optional[int], Optional[int]]:
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)


# ---- one side of each contender ---------------------------------------------
#
# produce(size, n, link) sends n messages; consume(size, n, link) receives n
# and returns (seconds from the WARMUP-th message to the last, all sums ok).


def _np() -> Any:
    return importlib.import_module("numpy")


def _lease_produce(size: int, n: int, name: str) -> None:
    np = _np()
    from pyipc import RingBuffer

    ring = RingBuffer(name)
    for k in range(n):
        with ring.reserve(size) as buf:
            np.frombuffer(buf, np.uint64).fill((k & 0xFF) * LANE)
    ring.close()


def _lease_consume(size: int, n: int, name: str) -> Tuple[float, bool]:
    np = _np()
    from pyipc import RingBuffer

    ring = RingBuffer(name)
    ok = True
    t0 = 0.0
    for k in range(n):
        if k == WARMUP:
            t0 = time.perf_counter()
        with ring.view() as msg:
            arr = np.frombuffer(msg, np.uint64)
            ok &= int(arr.sum()) == _expect(size, k)
            del arr
    ring.close()
    return time.perf_counter() - t0, ok


def _copy_produce(size: int, n: int, name: str) -> None:
    np = _np()
    from pyipc import RingBuffer

    ring = RingBuffer(name)
    arr = np.empty(size // 8, np.uint64)
    for k in range(n):
        arr.fill((k & 0xFF) * LANE)
        ring.put(arr)
    ring.close()


def _copy_consume(size: int, n: int, name: str) -> Tuple[float, bool]:
    np = _np()
    from pyipc import RingBuffer

    ring = RingBuffer(name)
    arr = np.empty(size // 8, np.uint64)
    ok = True
    t0 = 0.0
    for k in range(n):
        if k == WARMUP:
            t0 = time.perf_counter()
        ring.get_into(arr)
        ok &= int(arr.sum()) == _expect(size, k)
    ring.close()
    return time.perf_counter() - t0, ok


def _queue_produce(size: int, n: int, q: Any) -> None:
    np = _np()
    arr = np.empty(size // 8, np.uint64)
    for k in range(n):
        arr.fill((k & 0xFF) * LANE)
        q.put(arr)


def _mp_queue_produce(size: int, n: int, q: Any) -> None:
    # multiprocessing.Queue pickles in a feeder thread after put() returns:
    # an array refilled for the next message could be sent half-refilled,
    # so each message gets an array of its own.
    np = _np()
    for k in range(n):
        arr = np.empty(size // 8, np.uint64)
        arr.fill((k & 0xFF) * LANE)
        q.put(arr)


def _queue_consume(size: int, n: int, q: Any) -> Tuple[float, bool]:
    ok = True
    t0 = 0.0
    for k in range(n):
        if k == WARMUP:
            t0 = time.perf_counter()
        arr = q.get()
        ok &= int(arr.sum()) == _expect(size, k)
    return time.perf_counter() - t0, ok


def _shm_produce(size: int, n: int, link: Tuple[List[str], Any, Any]) -> None:
    np = _np()
    from multiprocessing import shared_memory

    names, full, free = link
    blocks = [shared_memory.SharedMemory(name) for name in names]
    arrays = [np.ndarray(size // 8, np.uint64, b.buf) for b in blocks]
    for k in range(n):
        i = free.get()
        arrays[i].fill((k & 0xFF) * LANE)
        full.put(i)
    del arrays
    for b in blocks:
        b.close()


def _shm_consume(size: int, n: int, link: Tuple[List[str], Any, Any]) -> Tuple[float, bool]:
    np = _np()
    from multiprocessing import shared_memory

    names, full, free = link
    blocks = [shared_memory.SharedMemory(name) for name in names]
    arrays = [np.ndarray(size // 8, np.uint64, b.buf) for b in blocks]
    ok = True
    t0 = 0.0
    for k in range(n):
        if k == WARMUP:
            t0 = time.perf_counter()
        i = full.get()
        ok &= int(arrays[i].sum()) == _expect(size, k)
        free.put(i)
    del arrays
    for b in blocks:
        b.close()
    return time.perf_counter() - t0, ok


def _iox2_service(name: str, size: int) -> Tuple[Any, Any, Any]:
    iox2 = importlib.import_module("iceoryx2")
    iox2.set_log_level(iox2.LogLevel.Error)
    node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
    service = (
        node.service_builder(iox2.ServiceName.new(name))
        .publish_subscribe(iox2.Slice[ctypes.c_uint8])
        .enable_safe_overflow(False)
        .subscriber_max_buffer_size(2)
        .open_or_create()
    )
    return iox2, node, service


def _iox2_produce(size: int, n: int, name: str) -> None:
    np = _np()
    iox2, node, service = _iox2_service(name, size)
    pub = (
        service.publisher_builder()
        .initial_max_slice_len(size)
        .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered)
        .create()
    )
    # Wait for the subscriber, so that no sample goes to no one.
    while True:
        pub.update_connections()
        if service.dynamic_config.number_of_subscribers > 0:
            break
        time.sleep(0.001)
    lanes = ctypes.c_uint64 * (size // 8)
    for k in range(n):
        while True:
            sample = pub.loan_slice_uninit(size)
            np.ctypeslib.as_array(lanes.from_address(sample.payload_ptr)).fill((k & 0xFF) * LANE)
            if sample.assume_init().send():
                break
            pub.update_connections()
    pub.delete()


def _iox2_consume(size: int, n: int, name: str) -> Tuple[float, bool]:
    np = _np()
    _, node, service = _iox2_service(name, size)
    sub = service.subscriber_builder().buffer_size(2).create()
    lanes = ctypes.c_uint64 * (size // 8)
    ok = True
    t0 = 0.0
    for k in range(n):
        if k == WARMUP:
            t0 = time.perf_counter()
        while True:  # iceoryx2 is polled: no blocking receive in Python
            sample = sub.receive()
            if sample is not None:
                break
        ok &= int(np.ctypeslib.as_array(lanes.from_address(sample.payload_ptr)).sum()) == _expect(size, k)
        sample.delete()
    sub.delete()
    return time.perf_counter() - t0, ok


# ---- contenders: how to set up and tear down each ---------------------------


class Contender:
    def __init__(self, name: str, needs: Tuple[str, ...], setup: Callable[[int], Tuple[Any, Callable[[], None]]],
                 produce: Callable[..., None], consume: Callable[..., Tuple[float, bool]]) -> None:
        self.name, self.needs, self.setup = name, needs, setup
        self.produce, self.consume = produce, consume

    def unavailable(self) -> Optional[str]:
        for module in self.needs:
            try:
                importlib.import_module(module)
            except Exception as e:  # noqa: BLE001 - any import failure means "cannot run"
                return f"{module} is not installed ({e})"
        return None


def _ring_setup(size: int) -> Tuple[Any, Callable[[], None]]:
    from pyipc import RingBuffer

    # Room for three messages in flight, as the other contenders have (the
    # producer fills one while the consumer reads another): a bigger ring
    # only makes the consumer read what left the CPU caches long ago.
    ring = RingBuffer(f"pyipc-bench-lease-{os.getpid()}-{os.urandom(4).hex()}", create=True,
                      capacity=4 * size)
    name = ring.name

    def done() -> None:
        ring.unlink()
        ring.close()

    return name, done


def _pyipc_queue_setup(size: int) -> Tuple[Any, Callable[[], None]]:
    from pyipc import Queue

    q = Queue(capacity=4 * size)
    return q, q.close


def _mp_queue_setup(size: int) -> Tuple[Any, Callable[[], None]]:
    q = mp.get_context("fork").Queue(maxsize=3)
    return q, q.close


def _shm_setup(size: int) -> Tuple[Any, Callable[[], None]]:
    from multiprocessing import shared_memory

    ctx = mp.get_context("fork")
    blocks = [shared_memory.SharedMemory(create=True, size=size) for _ in range(3)]
    full, free = ctx.Queue(), ctx.Queue()
    for i in range(len(blocks)):
        free.put(i)

    def done() -> None:
        for b in blocks:
            b.close()
            b.unlink()
        full.close()
        free.close()

    return ([b.name for b in blocks], full, free), done


def _iox2_setup(size: int) -> Tuple[Any, Callable[[], None]]:
    # The service is made here, before the two sides start: made by both at
    # once, iceoryx2 refuses one of them (HangsInCreation).
    name = f"pyipc-bench-iox2-{os.getpid()}-{os.urandom(4).hex()}"
    kept = _iox2_service(name, size)
    return name, lambda: kept and None


CONTENDERS: Dict[str, Contender] = {
    c.name: c
    for c in (
        Contender("lease", ("numpy",), _ring_setup, _lease_produce, _lease_consume),
        Contender("put/get_into", ("numpy",), _ring_setup, _copy_produce, _copy_consume),
        Contender("queue", ("numpy",), _pyipc_queue_setup, _queue_produce, _queue_consume),
        Contender("iceoryx2", ("numpy", "iceoryx2"), _iox2_setup, _iox2_produce, _iox2_consume),
        Contender("shared_memory", ("numpy",), _shm_setup, _shm_produce, _shm_consume),
        Contender("mp.Queue", ("numpy",), _mp_queue_setup, _mp_queue_produce, _queue_consume),
    )
}


def _producer_main(c: Contender, size: int, n: int, link: Any, cpu: Optional[int]) -> None:
    _pin(cpu)
    c.produce(size, n, link)


def _run_cell(c: Contender, size: int, cpus: Tuple[Optional[int], Optional[int]]) -> Tuple[float, bool]:
    """One run: messages per second as the consumer saw them, and whether all were whole."""
    n = _count(size) + WARMUP
    link, done = c.setup(size)
    ctx = mp.get_context("fork")
    prod = ctx.Process(target=_producer_main, args=(c, size, n, link, cpus[1]), daemon=True)
    old = os.sched_getaffinity(0)
    try:
        prod.start()
        _pin(cpus[0])
        elapsed, ok = c.consume(size, n, link)
        prod.join(60)
        ok = ok and prod.exitcode == 0
    finally:
        os.sched_setaffinity(0, old)
        if prod.is_alive():
            prod.kill()
            prod.join()
        done()
    return (n - WARMUP) / elapsed, ok


def _limits(size: int, cpus: Tuple[Optional[int], Optional[int]], repeat: int) -> Tuple[float, float]:
    """Two limits, in messages per second, measured in NumPy with no
    transport, cycling through three arrays as the contenders do:

    * ``once``: writing a message and then reading it, once, on one CPU:
      what any transport that copies nothing costs at least, per message;
    * ``pipelined``: one CPU only filling while the other only sums, the
      slower of the two: a ceiling no two-process pipeline can pass.
    """
    np = _np()
    arrays = [np.empty(size // 8, np.uint64) for _ in range(3)]
    for a in arrays:
        a.fill(1)
    n = max(9, _count(size) // 4)
    old = os.sched_getaffinity(0)

    def timed(work: Callable[[int], None]) -> float:
        runs = []
        for _ in range(repeat):
            t = time.perf_counter()
            for k in range(n):
                work(k)
            runs.append((time.perf_counter() - t) / n)
        return statistics.median(runs)

    def fill(k: int) -> None:
        arrays[k % 3].fill((k & 0xFF) * LANE)

    def total(k: int) -> None:
        int(arrays[k % 3].sum())

    def both(k: int) -> None:
        fill(k)
        total(k)

    try:
        _pin(cpus[0])
        once = timed(both)
        sums = timed(total)
        _pin(cpus[1])
        fills = timed(fill)
    finally:
        os.sched_setaffinity(0, old)
    return 1 / once, 1 / max(fills, sums)


def _lease_cost(cpus: Tuple[Optional[int], Optional[int]], repeat: int, size: int = 64 << 20) -> float:
    """Seconds of pyipc's own work per leased message (reserve then view,
    one process, no fill and no sum): the same whatever the size."""
    from pyipc import RingBuffer

    ring = RingBuffer(f"pyipc-bench-lcost-{os.getpid()}", create=True, capacity=2 * size)
    old = os.sched_getaffinity(0)
    try:
        _pin(cpus[0])
        runs = []
        for _ in range(repeat):
            n = 2000
            t = time.perf_counter()
            for _ in range(n):
                with ring.reserve(size):
                    pass
                with ring.view():
                    pass
            runs.append((time.perf_counter() - t) / n)
    finally:
        os.sched_setaffinity(0, old)
        ring.unlink()
        ring.close()
    return statistics.median(runs)


def run_lease_bench(
    sizes: Any = DEFAULT_SIZES,
    names: Optional[List[str]] = None,
    repeat: int = 3,
    progress: Optional[Callable[[str], None]] = None,
) -> Dict[str, Any]:
    """Run every contender at every size; medians of `repeat` runs."""
    cpus = _cpus()
    names = list(CONTENDERS) if names is None else names
    report: Dict[str, Any] = {"sizes": list(sizes), "pinned": cpus[0] is not None,
                              "consumer_cpu": cpus[0], "producer_cpu": cpus[1], "cells": {},
                              "skipped": {}}
    for name in names:
        c = CONTENDERS[name]
        why = c.unavailable()
        if why:
            report["skipped"][name] = why
            continue
        for size in sizes:
            if progress:
                progress(f"{name} at {size >> 20} MiB")
            rates, whole = [], True
            for _ in range(repeat):
                rate, ok = _run_cell(c, size, cpus)
                rates.append(rate)
                whole &= ok
            report["cells"][f"{name}@{size}"] = {"rate": statistics.median(rates), "runs": rates, "ok": whole}
    for size in sizes:
        once, pipelined = _limits(size, cpus, repeat)
        report["cells"][f"limit@{size}"] = {"rate": once, "ok": True}
        report["cells"][f"ceiling@{size}"] = {"rate": pipelined, "ok": True}
    report["lease_cost_us"] = _lease_cost(cpus, repeat) * 1e6
    return report


def format_lease_table(report: Dict[str, Any]) -> str:
    sizes = report["sizes"]
    rows = [name for name in CONTENDERS if any(f"{name}@{s}" in report["cells"] for s in sizes)]
    rows += ["limit", "ceiling"]
    head = f"{'messages/s':<16}" + "".join(f"{(s >> 20):>10} MiB" for s in sizes)
    lines = [head]
    for name in rows:
        cells = []
        for s in sizes:
            cell = report["cells"].get(f"{name}@{s}")
            if cell is None:
                cells.append(f"{'-':>14}")
            elif not cell["ok"]:
                cells.append(f"{'FAILED':>14}")
            else:
                limit = report["cells"][f"limit@{s}"]["rate"]
                cells.append(f"{cell['rate']:>8.1f} {cell['rate'] / limit:>4.0%}")
        lines.append(f"{name:<16}" + "".join(cells))
    lines.append("(each cell: messages/s, and its share of the limit: writing a message and then reading "
                 "it once, on one CPU, with no transport; ceiling: one CPU only filling while the other "
                 "only sums)")
    for s in sizes:
        lease, copy = report["cells"].get(f"lease@{s}"), report["cells"].get(f"put/get_into@{s}")
        iox = report["cells"].get(f"iceoryx2@{s}")
        parts = []
        if lease and copy:
            parts.append(f"lease/copy {lease['rate'] / copy['rate']:.2f}x")
        if lease and iox:
            parts.append(f"lease/iceoryx2 {lease['rate'] / iox['rate']:.2f}x")
        q, mq = report["cells"].get(f"queue@{s}"), report["cells"].get(f"mp.Queue@{s}")
        if q and mq:
            parts.append(f"queue/mp.Queue {q['rate'] / mq['rate']:.2f}x")
        if parts:
            lines.append(f"{s >> 20} MiB: " + ", ".join(parts))
    lines.append(f"pyipc's own cost per leased message (reserve + view, no fill, no sum): "
                 f"{report['lease_cost_us']:.2f} us")
    for name, why in report["skipped"].items():
        lines.append(f"{name}: skipped, {why}")
    where = ("producer on CPU %s, consumer on CPU %s" % (report["producer_cpu"], report["consumer_cpu"])
             if report["pinned"] else "not pinned (one CPU)")
    lines.append(where)
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(format_lease_table(run_lease_bench(progress=lambda m: print(m, file=sys.stderr))))
