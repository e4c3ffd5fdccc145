"""A pool of RPC servers, one per CPU, fed by one client with ``submit``.

Each server process exposes ``count_primes``; the main process connects to
every server and spreads the chunks over them round-robin, with many calls
in flight at once, then collects the futures.

    python examples/rpc_worker_pool.py
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
import uuid

import pyipc.rpc


def count_primes(lo: int, hi: int) -> int:
    """The work: count the primes in [lo, hi) by trial division."""
    count = 0
    for n in range(max(lo, 2), hi):
        if all(n % d for d in range(2, int(n**0.5) + 1)):
            count += 1
    return count


def serve(address: str) -> None:
    # workers=1: one call at a time per process, the CPUs come from the
    # number of processes (Python threads would share one).
    with pyipc.rpc.Server(address, workers=1) as server:
        server.register(count_primes)
        server.register(os.getpid, "pid")
        server.register(server.close, "stop")
        server.serve_forever()


def connect_when_up(address: str, proc: mp.process.BaseProcess) -> pyipc.rpc.Client:
    while True:
        try:
            return pyipc.rpc.connect(address, timeout=5)
        except (FileNotFoundError, ConnectionRefusedError):
            if not proc.is_alive():
                raise RuntimeError(f"server {address} exited") from None
            time.sleep(0.01)


def main() -> None:
    n = max(2, len(os.sched_getaffinity(0)))
    addresses = [f"primes-{uuid.uuid4().hex[:8]}-{i}" for i in range(n)]
    procs = [mp.Process(target=serve, args=(a,)) for a in addresses]
    for p in procs:
        p.start()
    clients = [connect_when_up(a, p) for a, p in zip(addresses, procs)]

    chunks = [(lo, lo + 1000) for lo in range(0, 50_000, 1000)]
    futures = [clients[i % n].submit("count_primes", lo, hi)
               for i, (lo, hi) in enumerate(chunks)]
    total = sum(f.result() for f in futures)
    pids = {c.call("pid") for c in clients}

    for c in clients:
        c.notify("stop")  # delivered before close() returns: the server exits
        c.close()
    for p in procs:
        p.join()
    print(f"rpc_worker_pool: {len(chunks)} calls, {total} primes below 50000, "
          f"{len(pids)} servers used, exit codes {sorted({p.exitcode for p in procs})}")


if __name__ == "__main__":
    main()
