"""An asyncio service answering requests from another process over pyipc.

The service runs an event loop in the main process.  Client processes put
requests on one queue; the service awaits them with ``get_async`` (the loop
stays free for other tasks while it waits) and answers each on the client's
reply queue with ``put_async``.

How the coroutines wake: ``get_async`` first tries a non-blocking get on the
loop's thread; when the queue is empty it looks again for up to 50 us and
then registers the ring's futex word with the loop's waitset, where a helper
thread of this process sleeps in ``futex_waitv`` on it (with up to 126 other
words) and wakes the loop through an eventfd when a producer's put moves it.
No thread per waiter, nothing in the loop's executor, no CPU while idle.
Cancelling the coroutine never loses a message: messages are only taken on
the loop's thread.

    python examples/asyncio_service.py
"""
from __future__ import annotations

import asyncio
import multiprocessing as mp

import pyipc

CLIENTS = 2
REQUESTS = 50


def client(cid: int, requests: pyipc.Queue, replies: pyipc.Queue) -> None:
    # An ordinary blocking client in its own process.
    for i in range(REQUESTS):
        requests.put((cid, i, f"hello {i}"))
        got_cid, got_i, answer = replies.get(timeout=30)
        assert (got_cid, got_i) == (cid, i), (got_cid, got_i)
        assert answer == f"HELLO {i}"
    requests.put((cid, None, None))  # this client is done


async def handle(cid: int, i: int, text: str, reply: pyipc.Queue) -> None:
    await asyncio.sleep(0.001)  # stands for real asynchronous work
    await reply.put_async((cid, i, text.upper()))


async def serve(requests: pyipc.Queue, replies: list[pyipc.Queue]) -> int:
    ticks = 0

    async def heartbeat() -> None:
        # Proof that waiting for requests never blocks the loop.
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    beat = asyncio.ensure_future(heartbeat())
    handlers: set[asyncio.Future[None]] = set()
    served = 0
    open_clients = CLIENTS
    while open_clients:
        cid, i, text = await requests.get_async(timeout=30)
        if i is None:
            open_clients -= 1
            continue
        fut = asyncio.ensure_future(handle(cid, i, text, replies[cid]))
        handlers.add(fut)
        fut.add_done_callback(handlers.discard)
        served += 1
    await asyncio.gather(*handlers)
    beat.cancel()
    # An idle wait is cheap to abandon: cancel one to show it loses nothing.
    try:
        await asyncio.wait_for(requests.get_async(), timeout=0.05)
    except asyncio.TimeoutError:
        pass
    print(f"asyncio_service: the heartbeat ticked {ticks} times while the service waited")
    return served


def main() -> None:
    requests = pyipc.Queue()
    replies = [pyipc.Queue() for _ in range(CLIENTS)]
    procs = [mp.Process(target=client, args=(c, requests, replies[c])) for c in range(CLIENTS)]
    for p in procs:
        p.start()
    served = asyncio.run(serve(requests, replies))
    for p in procs:
        p.join()
    ok = all(p.exitcode == 0 for p in procs)
    for q in (requests, *replies):
        q.close()
    print(f"asyncio_service: served {served} requests from {CLIENTS} clients, clients ok: {ok}")


if __name__ == "__main__":
    main()
