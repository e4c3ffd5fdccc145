"""Cross-process throughput of object queues: pyipc.Queue against
multiprocessing.Queue and faster_fifo.Queue, measured in the same run.

A producer process puts N small objects (a tuple of five ints); the parent
gets them.  Each transport runs several rounds, interleaved so that all of
them see the same machine load, and the median rate is reported with its
ratio to each baseline.  Not part of the test run; prints, never asserts.

    python benches/bench_queue.py [--count N] [--rounds R] [--start fork|spawn]
                                  [--payload tuple|numpy-1m|bytes-1m]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time
from typing import Any, Callable, Dict, List

ITEM: Any = (1, 2, 3, 4, 5)


def _make_item(payload: str) -> Any:
    if payload == "numpy-1m":
        import numpy as np

        return np.arange(1 << 17, dtype=np.float64)
    if payload == "bytes-1m":
        return bytes(1 << 20)
    return (1, 2, 3, 4, 5)


def _produce(q: Any, n: int, go: Any, batch: int, payload: str) -> None:
    go.wait()
    put = q.put
    item = _make_item(payload)
    if batch > 1:
        put_many = q.put_many
        chunk = [item] * batch
        for _ in range(n // batch):
            put_many(chunk)
    else:
        for _ in range(n):
            put(item)
    put(None)


def _run(make: Callable[[], Any], n: int, ctx: Any, batch: int = 1, payload: str = "tuple") -> float:
    """Return messages per second for one round."""
    q = make()
    go = ctx.Event()
    p = ctx.Process(target=_produce, args=(q, n, go, batch, payload))
    p.start()
    get = q.get
    # The producer waits for `go`, so process start-up is not timed.
    time.sleep(0.05)
    t0 = time.perf_counter()
    go.set()
    got = 0
    if batch > 1:
        get_many = q.get_many
        while True:
            items = get_many(batch)
            got += len(items)
            if items[-1] is None:
                break
    else:
        while get() is not None:
            got += 1
    elapsed = time.perf_counter() - t0
    p.join()
    close = getattr(q, "close", None)
    if close is not None:
        close()
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--start", default="fork", choices=["fork", "spawn", "forkserver"])
    ap.add_argument("--payload", default="tuple", choices=["tuple", "numpy-1m", "bytes-1m"])
    args = ap.parse_args()
    ctx = mp.get_context(args.start)
    large = args.payload != "tuple"
    # Large payloads need rings that hold a few of them.
    ring_bytes = 8 << 20 if large else 1 << 20

    import pyipc

    makers: Dict[str, Callable[[], Any]] = {
        "pyipc.Queue": lambda: pyipc.Queue(capacity=ring_bytes),
        "multiprocessing.Queue": lambda: ctx.Queue(),
    }
    try:
        import faster_fifo

        makers["faster_fifo.Queue"] = lambda: faster_fifo.Queue(max_size_bytes=ring_bytes)
    except ImportError:
        print("faster_fifo is not installed: pip install faster-fifo")

    rates: Dict[str, List[float]] = {k: [] for k in makers}
    for _ in range(args.rounds):
        for label, make in makers.items():
            rates[label].append(_run(make, args.count, ctx, payload=args.payload))

    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"{args.rounds} rounds of {args.count} messages, {args.start}, payload {args.payload}")
    for label, rate in med.items():
        spread = f"{min(rates[label]):,.0f}..{max(rates[label]):,.0f}"
        print(f"  {label:24s} {rate:12,.0f} msg/s  (median; range {spread})")
    ours = med["pyipc.Queue"]
    for label, rate in med.items():
        if label != "pyipc.Queue":
            print(f"  pyipc.Queue / {label}: {ours / rate:.2f}x")


if __name__ == "__main__":
    main()
