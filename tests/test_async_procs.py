"""asyncio across processes and at scale: many waiters, cancellation races
with another process, waiters in fork and spawn children, a waiter's
process killed.

Two tests here check a time bound; neither measures performance.  Each one
is a functional check that something is *not* happening, with a margin of
orders of magnitude: that the loop's executor is not occupied by waits (when
it was, a job queued behind 50 waiters waited 700 ms: every waiter held an
executor thread for a 100 ms slice), and that idle waiters do not spin (a
spinning waiter uses a whole core, not under 1 % of one).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing as mp
import os
import random
import resource
import signal
import threading
import time
from typing import Any, Callable, Iterator, List

import pytest

from pyipc import RingBuffer, ShutDown
from pyipc import _reactor
from pyipc._core import ffi, lib

NameFactory = Callable[[], str]


@pytest.fixture(autouse=True)
def no_audit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only futex wakes may end a wait here: the periodic readiness check
    (which would also end it, late) is pushed out of every test's reach."""
    monkeypatch.setattr(_reactor, "AUDIT_INTERVAL", 3600.0)


@pytest.fixture
def many(shm_name: NameFactory) -> Iterator[Callable[[int], List[RingBuffer]]]:
    """Make n small rings; all closed (and unlinked by shm_name) afterwards."""
    made: List[RingBuffer] = []

    def make(n: int) -> List[RingBuffer]:
        rings = [RingBuffer(shm_name(), create=True, capacity=64) for _ in range(n)]
        made.extend(rings)
        return rings

    yield make
    for r in made:
        r.close()


def os_threads() -> int:
    """Threads of this process, as the kernel counts them (helpers included)."""
    return len(os.listdir("/proc/self/task"))


async def settle(words: int) -> None:
    rx = _reactor.reactor()
    for _ in range(2000):
        if rx.count() >= words:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"only {rx.count()} of {words} waits registered")


def needs_waitv() -> None:
    async def mode() -> str:
        return _reactor.reactor().mode

    if os.environ.get("PYIPC_ASYNC_WAIT") == "threads" or asyncio.run(mode()) != "futex_waitv":
        pytest.skip("futex_waitv is not in use: the fallback costs a thread per word (documented)")


def _put_each(names: List[str], delay: float) -> None:
    time.sleep(delay)
    for n in names:
        with RingBuffer(n) as r:
            r.put(b"wake")


@pytest.mark.timeout(60)
def test_200_waiters_leave_the_executor_and_getaddrinfo_free(many: Any) -> None:
    """With 200 coroutines waiting on 200 rings, run_in_executor and getaddrinfo each finish within 100 ms."""
    rings = many(200)
    submitted: List[Any] = []

    class Recording(concurrent.futures.ThreadPoolExecutor):
        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            submitted.append(fn)
            return super().submit(fn, *args, **kwargs)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(Recording())
        tasks = [asyncio.ensure_future(r.get_async()) for r in rings]
        await settle(len(rings))
        assert submitted == []  # no wait went to the executor
        for _ in range(3):
            t = time.monotonic()
            await loop.run_in_executor(None, lambda: None)
            assert time.monotonic() - t < 0.1
            t = time.monotonic()
            await loop.getaddrinfo("localhost", 80)
            assert time.monotonic() - t < 0.1
        for r in rings:
            r.put(b"x")
        assert await asyncio.gather(*tasks) == [b"x"] * len(rings)

    asyncio.run(main())


@pytest.mark.timeout(120)
def test_1000_waiters_few_threads_all_woken_by_another_process(many: Any) -> None:
    """1,000 coroutines on 1,000 rings cost a handful of threads, and all wake when another process puts."""
    needs_waitv()
    rings = many(1000)
    before = threading.active_count(), os_threads()

    async def main() -> None:
        tasks = [asyncio.ensure_future(r.get_async()) for r in rings]
        await settle(len(rings))
        # Python threads: none added.  Kernel threads: the helpers, 127
        # words each (8 for 1,000), and nothing per waiter.
        assert threading.active_count() == before[0]
        helpers = _reactor.reactor().threads()
        assert helpers == -(-len(rings) // 127)
        assert os_threads() <= before[1] + helpers
        p = mp.get_context("fork").Process(target=_put_each, args=([r.name for r in rings], 0.0))
        p.start()
        try:
            got = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        finally:
            await asyncio.get_running_loop().run_in_executor(None, p.join)
        assert got == [b"wake"] * len(rings)
        assert p.exitcode == 0

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_idle_waiters_use_no_cpu(many: Any) -> None:
    """1,000 coroutines idle on 1,000 rings for 5 s use under 1 % of a core (helper threads included)."""
    needs_waitv()
    rings = many(1000)

    async def main() -> float:
        tasks = [asyncio.ensure_future(r.get_async()) for r in rings]
        await settle(len(rings))
        await asyncio.sleep(0.5)
        ru0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        await asyncio.sleep(5)
        ru1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        for r in rings:
            r.put(b"x")
        await asyncio.gather(*tasks)
        cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        return cpu / (t1 - t0)

    share = asyncio.run(main())
    assert share < 0.01, f"{share:.2%} of a core while idle"


# ---- cancellation races with another process -----------------------------------


def _producer(name: str, n: int, seed: int) -> None:
    rng = random.Random(seed)
    with RingBuffer(name) as r:
        for i in range(n):
            if rng.random() < 0.7:
                time.sleep(rng.random() * 0.0005)
            r.put(i.to_bytes(4, "little"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["futex_waitv", "threads"])
def test_cancelled_gets_race_a_producer_every_message_once(
    shm_name: NameFactory, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """1,000 get_async calls cancelled at random moments while another process puts: every message arrives exactly once, in order."""
    if mode == "threads":
        monkeypatch.setenv("PYIPC_ASYNC_WAIT", "threads")
    n = 1000
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    with RingBuffer(shm_name(), create=True, capacity=1 << 16) as ring:
        p = mp.get_context("fork").Process(target=_producer, args=(ring.name, n, seed))

        async def main() -> List[int]:
            got: List[int] = []
            cancelled = 0
            p.start()
            for _ in range(n):
                task = asyncio.ensure_future(ring.get_async())
                how = rng.randrange(4)
                if how == 1:
                    await asyncio.sleep(0)
                elif how == 2:
                    await asyncio.sleep(rng.random() * 0.001)
                elif how == 3:
                    for _ in range(rng.randrange(1, 20)):
                        await asyncio.sleep(0)
                task.cancel()
                try:
                    got.append(int.from_bytes(await task, "little"))
                except asyncio.CancelledError:
                    cancelled += 1
            while len(got) < n:
                got.append(int.from_bytes(await ring.get_async(), "little"))
            assert cancelled > n // 10, cancelled  # the race was run
            return got

        try:
            got = asyncio.run(main())
        finally:
            p.join(30)
        assert p.exitcode == 0
        assert got == list(range(n)), f"seed {seed}"
        assert ring.qsize() == 0


def _consumer(name: str, out: str, seed: int) -> None:
    rng = random.Random(seed)
    got = []
    with RingBuffer(name) as r, RingBuffer(out) as o:
        while True:
            m = r.get(timeout=60)
            if m == b"stop":
                break
            got.append(int.from_bytes(m, "little"))
            if rng.random() < 0.7:
                time.sleep(rng.random() * 0.0005)
        o.put(b"".join(i.to_bytes(4, "little") for i in got))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["futex_waitv", "threads"])
def test_cancelled_puts_race_a_consumer_every_message_once(
    shm_name: NameFactory, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """1,000 put_async calls on a nearly full ring, cancelled at random moments while another process gets: exactly the puts that returned arrive, once each."""
    if mode == "threads":
        monkeypatch.setenv("PYIPC_ASYNC_WAIT", "threads")
    n = 1000
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    # 64 bytes of records: four 4-byte messages (16-byte records) fill it.
    with RingBuffer(shm_name(), create=True, capacity=64) as ring, RingBuffer(
        shm_name(), create=True, capacity=1 << 16
    ) as out:
        p = mp.get_context("fork").Process(target=_consumer, args=(ring.name, out.name, seed))

        async def main() -> List[int]:
            put: List[int] = []
            cancelled = 0
            p.start()
            for i in range(n):
                task = asyncio.ensure_future(ring.put_async(i.to_bytes(4, "little")))
                how = rng.randrange(4)
                if how == 1:
                    await asyncio.sleep(0)
                elif how == 2:
                    await asyncio.sleep(rng.random() * 0.001)
                elif how == 3:
                    for _ in range(rng.randrange(1, 20)):
                        await asyncio.sleep(0)
                task.cancel()
                try:
                    await task
                    put.append(i)
                except asyncio.CancelledError:
                    cancelled += 1
            await ring.put_async(b"stop")
            assert cancelled > n // 10, cancelled
            return put

        try:
            put = asyncio.run(main())
            blob = out.get(timeout=60)
        finally:
            p.join(30)
        got = [int.from_bytes(blob[i : i + 4], "little") for i in range(0, len(blob), 4)]
        assert got == put, f"seed {seed}"


# ---- fork and spawn --------------------------------------------------------------


def _await_in_child(ring: RingBuffer, out: RingBuffer, k: int) -> None:
    async def main() -> None:
        rx = _reactor.reactor()
        for _ in range(k):
            m = await ring.get_async()
            out.put(m + b" via " + rx.mode.encode())

    asyncio.run(main())
    ring.close()
    out.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_waiters_in_children(shm_name: NameFactory, method: str) -> None:
    """Children made by fork and by spawn await the rings they were handed, woken by this process's puts."""
    k = 20
    with RingBuffer(shm_name(), create=True, capacity=4096) as ring, RingBuffer(
        shm_name(), create=True, capacity=1 << 16
    ) as out:
        ctx = mp.get_context(method)
        procs = [ctx.Process(target=_await_in_child, args=(ring, out, k)) for _ in range(3)]
        for p in procs:
            p.start()
        try:
            deadline = time.monotonic() + 60
            # Put only once they all sleep: each put must wake a waiter.
            while ring.stats()["get_waits"] < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            for i in range(3 * k):
                ring.put(b"m%d" % i)
                time.sleep(0.001)
            got = sorted(out.get(timeout=30) for _ in range(3 * k))
        finally:
            for p in procs:
                p.join(30)
                if p.is_alive():  # a wait that was never woken
                    p.kill()
                    p.join()
        assert all(p.exitcode == 0 for p in procs)
        assert {g.split(b" via ")[0] for g in got} == {b"m%d" % i for i in range(3 * k)}


@pytest.mark.timeout(120)
def test_fork_while_waiting(shm_name: NameFactory) -> None:
    """A child forked while this process's loop has waiters (and helper threads) waits with a waitset of its own."""
    with RingBuffer(shm_name(), create=True, capacity=4096) as mine, RingBuffer(
        shm_name(), create=True, capacity=4096
    ) as theirs, RingBuffer(shm_name(), create=True, capacity=4096) as out:

        async def main() -> None:
            waiters = [asyncio.ensure_future(mine.get_async()) for _ in range(5)]
            await settle(1)
            p = mp.get_context("fork").Process(target=_await_in_child, args=(theirs, out, 1))
            p.start()
            try:
                await asyncio.sleep(0.2)
                theirs.put(b"to the child")
                assert (await out.get_async()).startswith(b"to the child via ")
                for _ in range(5):
                    mine.put(b"to the parent")
                assert await asyncio.gather(*waiters) == [b"to the parent"] * 5
            finally:
                await asyncio.get_running_loop().run_in_executor(None, p.join, 30)
                if p.is_alive():
                    p.kill()
                    p.join()
            assert p.exitcode == 0

        asyncio.run(main())


# ---- a waiter's process killed --------------------------------------------------


def _wait_forever(name: str, ready: Any) -> None:
    async def main() -> None:
        with RingBuffer(name) as r:
            tasks = [asyncio.ensure_future(r.get_async()) for _ in range(10)]
            await settle(1)
            ready.set()
            await asyncio.gather(*tasks)

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_killed_waiter_costs_one_wake(shm_name: NameFactory) -> None:
    """A process killed with async waiters leaves only its waiter bit, which the next put clears with its one wake call."""
    with RingBuffer(shm_name(), create=True, capacity=4096) as ring:
        # The consumers' event count, as pyipc_ring_arm hands it out.
        word, val = ffi.new("uint32_t **"), ffi.new("uint32_t *")
        assert lib.pyipc_ring_arm(ring._h, 0, 0, word, val) == 0
        evt = word[0]
        ring.put(b"a")  # clears the bit we just set, with a wake
        assert ring.get() == b"a"
        assert evt[0] & 1 == 0
        ctx = mp.get_context("fork")
        ready = ctx.Event()
        p = ctx.Process(target=_wait_forever, args=(ring.name, ready))
        p.start()
        try:
            assert ready.wait(30)
            assert evt[0] & 1 == 1  # its waiters announced themselves
            os.kill(p.pid, signal.SIGKILL)
        finally:
            p.join()
        ring.put(b"b")  # the one wake call, for nobody
        assert evt[0] & 1 == 0
        before = evt[0]
        ring.put(b"c")
        ring.put(b"d")
        assert evt[0] == before  # no waiter bit: no wake call, not even a count bump

        async def main() -> List[bytes]:
            # And the others' waits work as before.
            got = [await ring.get_async(timeout=5) for _ in range(3)]
            task = asyncio.ensure_future(ring.get_async())
            await settle(1)
            threading.Timer(0.05, ring.put, (b"e",)).start()
            got.append(await task)
            return got

        assert asyncio.run(main()) == [b"b", b"c", b"d", b"e"]


def _shutdown(name: str) -> None:
    with RingBuffer(name) as r:
        r.shutdown()


@pytest.mark.timeout(60)
def test_shutdown_by_another_process_wakes_waiters(shm_name: NameFactory) -> None:
    """shutdown() called in another process wakes this process's waiting coroutines with ShutDown."""
    with RingBuffer(shm_name(), create=True, capacity=4096) as ring:

        async def main() -> None:
            tasks = [asyncio.ensure_future(ring.get_async()) for _ in range(5)]
            await settle(1)
            p = mp.get_context("fork").Process(target=_shutdown, args=(ring.name,))
            p.start()
            res = await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.get_running_loop().run_in_executor(None, p.join)
            assert all(isinstance(e, ShutDown) for e in res), res

        asyncio.run(main())


def _hold_view(name: str, ready: Any) -> None:
    with RingBuffer(name) as r, r.view():
        ready.set()
        time.sleep(60)


@pytest.mark.timeout(60)
def test_dead_lease_holder_does_not_strand_an_async_put(shm_name: NameFactory) -> None:
    """A put_async waiting for room that a view holds completes once the view's process is killed (a dead holder wakes nobody: the wait looks again)."""
    with RingBuffer(shm_name(), create=True, capacity=4096) as ring:
        ring.put(b"v" * ring.max_message_size)
        ctx = mp.get_context("fork")
        ready = ctx.Event()
        p = ctx.Process(target=_hold_view, args=(ring.name, ready))
        p.start()
        try:
            assert ready.wait(30)

            async def main() -> None:
                task = asyncio.ensure_future(ring.put_async(b"after"))
                await asyncio.sleep(0.2)
                assert not task.done()  # the view holds the room
                os.kill(p.pid, signal.SIGKILL)
                await asyncio.wait_for(task, 20)

            asyncio.run(main())
        finally:
            if p.is_alive():
                p.kill()
            p.join()
        assert ring.get(timeout=1) == b"after"
