"""asyncio on rings and queues, in one process: waits, timeouts, batches,
cancellation, close/shutdown/scribbling under a waiter, several loops, and
the waitset fallback (every test here runs in both modes of the waitset)."""
from __future__ import annotations

import asyncio
import concurrent.futures
import mmap
import os
import threading
import time
from typing import Any, Callable, Iterator, List

import pytest

from pyipc import CorruptedError, Empty, Full, MessageTooLarge, Queue, RingBuffer, ShutDown
from pyipc import _reactor
from pyipc._core import lib

pytestmark = pytest.mark.timeout(60)

NameFactory = Callable[[], str]


@pytest.fixture(autouse=True)
def no_audit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only futex wakes may end a wait here: the periodic readiness check
    (which would also end it, late) is pushed out of every test's reach."""
    monkeypatch.setattr(_reactor, "AUDIT_INTERVAL", 3600.0)


@pytest.fixture(params=["futex_waitv", "threads"])
def mode(request: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test runs with the waitset's usual mode and with the forced fallback."""
    if request.param == "threads":
        monkeypatch.setenv("PYIPC_ASYNC_WAIT", "threads")
    else:
        monkeypatch.delenv("PYIPC_ASYNC_WAIT", raising=False)
    return str(request.param)


@pytest.fixture
def ring(shm_name: NameFactory, mode: str) -> Iterator[RingBuffer]:
    """A 4 KiB ring with a fixture-managed name."""
    with RingBuffer(shm_name(), create=True, capacity=4096) as r:
        yield r


async def settle(r: RingBuffer, words: int = 1) -> None:
    """Wait until `words` words are registered in this loop's waitset (the
    waiters are past their spin and asleep)."""
    rx = _reactor.reactor()
    for _ in range(1000):
        if rx.count() >= words:
            return
        await asyncio.sleep(0.002)
    raise AssertionError(f"only {rx.count()} of {words} waits registered")


def test_mode_is_what_was_asked(mode: str) -> None:
    """PYIPC_ASYNC_WAIT=threads forces the fallback; otherwise futex_waitv is used where the kernel has it."""

    async def main() -> str:
        return _reactor.reactor().mode

    got = asyncio.run(main())
    if mode == "threads":
        assert got == "threads"
        return
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    if (major, minor) < (5, 16):
        assert got == "threads"  # no futex_waitv before Linux 5.16
        return
    with open("/proc/self/status") as f:
        filtered = any(line.split() == ["Seccomp:", "2"] for line in f)
    if filtered and got == "threads":
        pytest.skip("a seccomp filter refuses futex_waitv here: the fallback is in use")
    assert got == "futex_waitv"


def test_get_async_wakes_for_a_put_from_a_thread(ring: RingBuffer) -> None:
    """A waiting get_async returns the message another thread puts later."""

    async def main() -> bytes:
        task = asyncio.ensure_future(ring.get_async())
        await settle(ring)  # asleep, its word registered
        t = threading.Thread(target=ring.put, args=(b"hello",))
        t.start()
        try:
            return await task  # type: ignore[no-any-return]
        finally:
            t.join()

    assert asyncio.run(main()) == b"hello"
    assert ring.stats()["get_waits"] == 1  # it slept once, as a synchronous get counts


def test_put_async_waits_for_room(ring: RingBuffer) -> None:
    """put_async on a full ring waits until a get makes room."""
    big = b"x" * (ring.max_message_size // 2)
    ring.put(big)

    async def main() -> None:
        task = asyncio.ensure_future(ring.put_async(big + big[:16]))
        await settle(ring)
        assert not task.done()
        assert ring.get() == big
        await task

    asyncio.run(main())
    assert len(ring.get()) == len(big) + 16


def test_timeouts_raise_empty_and_full(ring: RingBuffer) -> None:
    """get_async and get_many_async raise Empty, put_async raises Full, put_many_async returns its count."""
    ring.put(b"x" * ring.max_message_size)

    async def main() -> None:
        t = time.monotonic()
        with pytest.raises(Full, match="in time"):
            await ring.put_async(b"y", timeout=0.2)
        assert time.monotonic() - t >= 0.19
        assert await ring.put_many_async([b"y", b"z"], timeout=0.1) == 0
        ring.get()
        with pytest.raises(Empty, match="in time"):
            await ring.get_async(timeout=0.2)
        with pytest.raises(Empty):
            await ring.get_many_async(4, timeout=0)
        with pytest.raises(Empty):
            await ring.get_async(timeout=0)

    asyncio.run(main())


def test_bad_arguments(ring: RingBuffer) -> None:
    """Negative timeouts, max_messages < 1, non-buffers and messages that never fit raise at once."""

    async def main() -> None:
        with pytest.raises(ValueError):
            await ring.get_async(timeout=-1)
        with pytest.raises(ValueError):
            await ring.put_async(b"x", timeout=-1)
        with pytest.raises(ValueError):
            await ring.get_many_async(0)
        with pytest.raises(TypeError):
            await ring.put_async(42)
        with pytest.raises(MessageTooLarge):
            await ring.put_async(b"x" * (ring.max_message_size + 1))
        with pytest.raises(MessageTooLarge):
            await ring.put_many_async([b"a", b"x" * (ring.max_message_size + 1)])
        assert ring.get() == b"a"  # the one before the oversized item stays queued

    asyncio.run(main())


def test_buffers_of_any_kind(ring: RingBuffer) -> None:
    """put_async takes any bytes-like object, and get_async grows past its pooled buffer."""

    async def main() -> None:
        await ring.put_async(bytearray(b"ab"))
        await ring.put_async(memoryview(b"xcdx")[1:3])
        assert await ring.get_async() == b"ab"
        assert await ring.get_async() == b"cd"

    asyncio.run(main())

    async def large(r: RingBuffer) -> bytes:
        t = threading.Timer(0.05, r.put, (b"L" * 100_000,))
        t.start()
        try:
            return await r.get_async()  # type: ignore[no-any-return]
        finally:
            t.join()

    with RingBuffer(None, create=True, capacity=1 << 18) as big:
        try:
            assert asyncio.run(large(big)) == b"L" * 100_000
        finally:
            big.unlink()


def test_batches(ring: RingBuffer) -> None:
    """put_many_async moves more than the ring holds, in order, while get_many_async drains it."""
    items = [b"%05d" % i + b"." * (i % 40) for i in range(2000)]

    async def main() -> List[bytes]:
        got: List[bytes] = []

        async def consume() -> None:
            while len(got) < len(items):
                batch = await ring.get_many_async(64)
                assert 1 <= len(batch) <= 64
                got.extend(batch)

        c = asyncio.ensure_future(consume())
        assert await ring.put_many_async(iter(items)) == len(items)
        await c
        return got

    assert asyncio.run(main()) == items


def test_cancelled_get_takes_nothing(ring: RingBuffer) -> None:
    """Cancelling a waiting get_async leaves a message put afterwards queued."""

    async def main() -> None:
        task = asyncio.ensure_future(ring.get_async())
        await settle(ring)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert _reactor.reactor().count() == 0
        ring.put(b"kept")
        await asyncio.sleep(0.05)
        assert ring.get_nowait() == b"kept"

    asyncio.run(main())


def test_cancelled_put_queues_nothing(ring: RingBuffer) -> None:
    """Cancelling a put_async waiting for room leaves nothing queued."""
    ring.put(b"f" * ring.max_message_size)

    async def main() -> None:
        task = asyncio.ensure_future(ring.put_async(b"second"))
        await settle(ring)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        ring.get()
        await asyncio.sleep(0.05)
        assert ring.qsize() == 0

    asyncio.run(main())


def test_cancelled_put_many_leaves_a_prefix(ring: RingBuffer) -> None:
    """A cancelled put_many_async leaves exactly the items before its wait queued."""
    items = [b"%04d" % i + b"-" * 100 for i in range(100)]

    async def main() -> None:
        task = asyncio.ensure_future(ring.put_many_async(items))
        await settle(ring)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    got = ring.get_many(1000, block=False)
    assert 0 < len(got) < len(items)
    assert got == items[: len(got)]


def test_wait_for_timeout_takes_nothing(ring: RingBuffer) -> None:
    """asyncio.wait_for around get_async times out cleanly and takes nothing."""

    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ring.get_async(), 0.1)
        ring.put(b"later")
        assert await ring.get_async(timeout=1) == b"later"

    asyncio.run(main())


def test_close_wakes_waiters_with_value_error(shm_name: NameFactory, mode: str) -> None:
    """close() under a waiting get_async and put_async makes both raise ValueError and unregisters their words."""
    with RingBuffer(shm_name(), create=True, capacity=4096) as a, RingBuffer(
        shm_name(), create=True, capacity=64
    ) as b:
        b.put(b"z" * b.max_message_size)

        async def main() -> None:
            getter = asyncio.ensure_future(a.get_async())
            putter = asyncio.ensure_future(b.put_async(b"no"))
            await settle(a, 2)
            a.close()
            b.close()
            for task in (getter, putter):
                with pytest.raises(ValueError, match="closed"):
                    await task
            assert _reactor.reactor().count() == 0

        asyncio.run(main())


def test_close_from_another_thread(shm_name: NameFactory, mode: str) -> None:
    """A handle closed by another thread while coroutines wait on it wakes them with ValueError."""
    name = shm_name()
    with RingBuffer(name, create=True, capacity=4096) as owner:
        r = RingBuffer(name)
        owner.put(b"x" * owner.max_message_size)

        async def main() -> List[Any]:
            tasks = [asyncio.ensure_future(r.put_async(b"p")) for _ in range(3)]
            await settle(r, 3)
            closer = threading.Thread(target=r.close)
            closer.start()
            res = await asyncio.gather(*tasks, return_exceptions=True)
            closer.join()
            assert _reactor.reactor().count() == 0
            return res

        res = asyncio.run(main())
        assert all(isinstance(e, ValueError) for e in res), res
        assert owner.qsize() == 1


def test_shutdown_wakes_waiters(ring: RingBuffer) -> None:
    """shutdown() wakes a waiting get_async (ShutDown once drained) and put_async (ShutDown)."""

    async def main() -> None:
        getter = asyncio.ensure_future(ring.get_async())
        await settle(ring)
        with RingBuffer(ring.name) as other:
            other.shutdown()
        with pytest.raises(ShutDown):
            await getter

    asyncio.run(main())


def test_shutdown_wakes_putters_and_drains(shm_name: NameFactory, mode: str) -> None:
    """After shutdown() a waiting put_async raises ShutDown and get_async drains what is queued, then raises."""
    with RingBuffer(shm_name(), create=True, capacity=64) as r:
        r.put(b"q" * r.max_message_size)

        async def main() -> None:
            putter = asyncio.ensure_future(r.put_async(b"late"))
            await settle(r)
            threading.Thread(target=r.shutdown).start()
            with pytest.raises(ShutDown):
                await putter
            assert await r.get_async() == b"q" * r.max_message_size
            with pytest.raises(ShutDown):
                await r.get_async()
            with pytest.raises(ShutDown):
                await r.put_async(b"x")

        asyncio.run(main())


def test_immediate_shutdown_discards(ring: RingBuffer) -> None:
    """After shutdown(immediate=True) get_async raises ShutDown even with messages queued."""
    ring.put(b"gone")
    ring.shutdown(immediate=True)

    async def main() -> None:
        with pytest.raises(ShutDown):
            await ring.get_async()
        with pytest.raises(ShutDown):
            await ring.get_many_async(3)

    asyncio.run(main())


def _scribble(name: str, offset: int, data: bytes) -> None:
    with open(f"/dev/shm/{name}", "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        m[offset : offset + len(data)] = data


def test_scribbled_ring_raises_corrupted_error(shm_name: NameFactory, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A waiting get_async and put_async whose ring's cursors are scribbled (no wake at all) raise CorruptedError."""
    monkeypatch.setattr(_reactor, "AUDIT_INTERVAL", 0.5)
    with RingBuffer(shm_name(), create=True, capacity=4096) as empty, RingBuffer(
        shm_name(), create=True, capacity=4096
    ) as full:
        full.put(b"f" * full.max_message_size)

        async def main() -> None:
            getter = asyncio.ensure_future(empty.get_async())
            putter = asyncio.ensure_future(full.put_async(b"x"))
            await settle(empty, 2)
            t = time.monotonic()
            # The cursor each side's readiness test reads, misaligned: the
            # producers' published tail, the consumers' published free.
            _scribble(empty.name, lib.PYIPC_OFF_PROD_TAIL, (123457).to_bytes(8, "little"))
            _scribble(full.name, lib.PYIPC_OFF_CONS_FREE, (123457).to_bytes(8, "little"))
            for task in (getter, putter):
                with pytest.raises(CorruptedError):
                    await task
            # Found by the periodic readiness check, not by a wake.
            assert time.monotonic() - t < 10 * _reactor.AUDIT_INTERVAL

        asyncio.run(main())


def test_never_uses_the_default_executor(ring: RingBuffer) -> None:
    """Waiting coroutines submit nothing to the loop's default executor."""
    submitted: List[Any] = []

    class Recording(concurrent.futures.ThreadPoolExecutor):
        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            submitted.append(fn)
            return super().submit(fn, *args, **kwargs)

    async def main() -> None:
        asyncio.get_running_loop().set_default_executor(Recording(max_workers=2))
        others = [RingBuffer(None, create=True, capacity=4096) for _ in range(20)]
        try:
            tasks = [asyncio.ensure_future(o.get_async(timeout=5)) for o in others]
            await settle(ring, len(others))
            for o in others:
                o.put(b"m")
            assert len(await asyncio.gather(*tasks)) == len(others)
        finally:
            for o in others:
                o.close()
                o.unlink()

    asyncio.run(main())
    assert submitted == []


def test_several_loops_in_several_threads(shm_name: NameFactory, mode: str) -> None:
    """Event loops in three threads wait on their own rings and on a shared one; each gets what it should."""
    names = [shm_name() for _ in range(4)]
    rings = [RingBuffer(n, create=True, capacity=4096) for n in names]
    results: dict[int, Any] = {}

    def worker(i: int) -> None:
        async def main() -> Any:
            own = RingBuffer(names[i])
            shared = RingBuffer(names[3])
            try:
                a = await own.get_async()
                b = await shared.get_async()
                return (a, b, _reactor.reactor().mode)
            finally:
                own.close()
                shared.close()

        try:
            results[i] = asyncio.run(main())
        except BaseException as e:  # reported below
            results[i] = e

    try:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        for i in range(3):
            rings[i].put(b"own%d" % i)
        for i in range(3):
            rings[3].put(b"shared")
        for t in threads:
            t.join(30)
        for i in range(3):
            a, b, m = results[i]
            assert (a, b) == (b"own%d" % i, b"shared")
            assert m == mode or mode == "futex_waitv"
    finally:
        for r in rings:
            r.close()


def test_fallback_costs_a_thread_per_word(shm_name: NameFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Forced fallback: one helper thread per word waited on, and none once idle for a while."""
    monkeypatch.setenv("PYIPC_ASYNC_WAIT", "threads")
    rings = [RingBuffer(shm_name(), create=True, capacity=4096) for _ in range(10)]

    async def main() -> None:
        rx = _reactor.reactor()
        assert rx.mode == "threads"
        tasks = [asyncio.ensure_future(r.get_async()) for r in rings]
        await settle(rings[0], 10)
        assert rx.threads() == 10
        for r in rings:
            r.put(b"w")
        assert await asyncio.gather(*tasks) == [b"w"] * 10
        for _ in range(100):
            if rx.threads() == 0:
                break
            await asyncio.sleep(0.1)
        assert rx.threads() == 0

    try:
        asyncio.run(main())
    finally:
        for r in rings:
            r.close()


# ---- Queue -------------------------------------------------------------------


@pytest.fixture
def q(shm_name: NameFactory, mode: str) -> Iterator[Queue]:
    """A small queue with a fixture-managed name."""
    qq = Queue(name=shm_name(), capacity=4096)
    try:
        yield qq
    finally:
        qq.close()


def test_queue_coroutines(q: Queue) -> None:
    """Queue's four coroutines move objects, wait, and time out like RingBuffer's."""

    async def main() -> None:
        getter = asyncio.ensure_future(q.get_async())
        await asyncio.sleep(0.1)
        await q.put_async({"a": 1})
        assert await getter == {"a": 1}
        assert await q.put_many_async(range(5)) == 5
        assert await q.get_many_async(10) == [0, 1, 2, 3, 4]
        with pytest.raises(Empty, match="in time"):
            await q.get_async(timeout=0.1)
        with pytest.raises(Empty):
            await q.get_many_async(3, timeout=0.05)
        with pytest.raises(Full):
            while True:
                q.put_nowait("filler")
        with pytest.raises(Full, match="in time"):
            await q.put_async("more", timeout=0.1)

    asyncio.run(main())


def test_queue_close_wakes_waiters(q: Queue) -> None:
    """Closing a queue under a waiting get_async raises ValueError naming the queue."""

    async def main() -> None:
        getter = asyncio.ensure_future(q.get_async())
        await asyncio.sleep(0.1)
        q.close()
        with pytest.raises(ValueError, match="Queue"):
            await getter
        with pytest.raises(ValueError):
            await q.put_async(1)

    asyncio.run(main())


def test_queue_shutdown_wakes_waiters(q: Queue) -> None:
    """Queue.shutdown() wakes a waiting get_async with ShutDown."""

    async def main() -> None:
        getter = asyncio.ensure_future(q.get_async())
        await asyncio.sleep(0.1)
        q.shutdown()
        with pytest.raises(ShutDown):
            await getter

    asyncio.run(main())
