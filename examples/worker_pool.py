"""A pool of worker processes fed through pyipc.Queue.

The main process puts tasks on one queue, a few workers take them, and the
results come back on a second queue.  It is the classic
``multiprocessing.Queue`` pattern; only the import changes.

    python examples/worker_pool.py
"""
from __future__ import annotations

import multiprocessing as mp
import os

import pyipc

WORKERS = 3
STOP = None  # one per worker: "no more tasks"


def count_primes(lo: int, hi: int) -> int:
    """The work: count the primes in [lo, hi) by trial division."""
    count = 0
    for n in range(max(lo, 2), hi):
        if all(n % d for d in range(2, int(n**0.5) + 1)):
            count += 1
    return count


def worker(tasks: pyipc.Queue, results: pyipc.Queue) -> None:
    # The queues arrive pickled by name (spawn) or inherited (fork); either
    # way this process only attaches and never removes them.
    for lo, hi in iter(tasks.get, STOP):
        results.put((lo, count_primes(lo, hi), os.getpid()))


def main() -> None:
    # maxsize bounds the tasks in flight: the producer waits when it is
    # ahead, exactly as with multiprocessing.Queue(maxsize).
    tasks = pyipc.Queue(maxsize=16)
    results = pyipc.Queue()
    procs = [mp.Process(target=worker, args=(tasks, results)) for _ in range(WORKERS)]
    for p in procs:
        p.start()

    chunks = [(lo, lo + 1000) for lo in range(0, 50_000, 1000)]
    # Feed and drain at once: with a bounded task queue, feeding everything
    # first could wait for room that only the workers' progress makes.
    pending = 0
    total = 0
    pids = set()
    for chunk in chunks:
        tasks.put(chunk)
        pending += 1
        while pending and not results.empty():
            _, n, pid = results.get()
            total += n
            pids.add(pid)
            pending -= 1
    for _ in procs:
        tasks.put(STOP)
    for _ in range(pending):
        _, n, pid = results.get()
        total += n
        pids.add(pid)
    for p in procs:
        p.join()

    # The creator owns the segments: close() removes them from /dev/shm
    # (exit would too, but closing says when).
    tasks.close()
    results.close()
    print(f"worker_pool: {len(chunks)} tasks, {total} primes below 50000, "
          f"{len(pids)} workers used")


if __name__ == "__main__":
    main()
