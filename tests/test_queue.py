"""pyipc.Queue in one process: multiprocessing.Queue semantics, ownership of
the segment, pickling by name, custom serializers and the asyncio methods."""
from __future__ import annotations

import asyncio
import gc
import os
import pickle
import queue
import threading
import time
from typing import Any, Callable, Iterator

import pytest

import pyipc
from pyipc import Empty, Full, MessageTooLarge, Queue, ShutDown

NameFactory = Callable[[], str]


def shm_exists(name: str) -> bool:
    return os.path.exists(f"/dev/shm/{name}")


@pytest.fixture
def q(shm_name: NameFactory) -> Iterator[Queue]:
    """A fresh queue with a fixture-managed name."""
    with Queue(name=shm_name()) as qq:
        yield qq


# -- put/get ----------------------------------------------------------------


def test_round_trip_keeps_order_and_values(q: Queue) -> None:
    """Objects come out equal to what went in, in FIFO order."""
    items: list[Any] = [
        (1, 2, 3, 4, 5),
        None,
        "text",
        b"bytes",
        {"a": [1, 2.5, {3}]},
        bytearray(b"x" * 100_000),
        list(range(1000)),
    ]
    for item in items:
        q.put(item)
    assert [q.get() for _ in items] == items


def test_exceptions_are_the_queue_modules(q: Queue) -> None:
    """Empty and Full raised by a Queue are caught as queue.Empty/queue.Full."""
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(block=False)
    small = Queue(1, name=q.name + "-b")
    try:
        small.put(1)
        with pytest.raises(queue.Full):
            small.put_nowait(2)
        with pytest.raises(Full):
            small.put(2, block=False)
    finally:
        small.close()


@pytest.mark.timeout(10)
def test_timeouts_raise_after_waiting(shm_name: NameFactory) -> None:
    """A get on an empty queue and a put on a full one wait out their timeout."""
    with Queue(1, name=shm_name()) as qq:
        t0 = time.monotonic()
        with pytest.raises(Empty):
            qq.get(timeout=0.2)
        assert time.monotonic() - t0 >= 0.19
        qq.put("x")
        t0 = time.monotonic()
        with pytest.raises(Full):
            qq.put("y", timeout=0.2)
        assert time.monotonic() - t0 >= 0.19
        assert qq.get(timeout=0) == "x"


def test_negative_timeout_is_a_value_error(q: Queue) -> None:
    """timeout < 0 raises ValueError, as in queue.Queue."""
    with pytest.raises(ValueError):
        q.get(timeout=-1)
    with pytest.raises(ValueError):
        q.put(1, timeout=-1)


def test_maxsize_counts_items(shm_name: NameFactory) -> None:
    """maxsize bounds the number of items; qsize, empty and full follow it."""
    with Queue(3, name=shm_name()) as qq:
        assert qq.maxsize == 3
        assert qq.empty() and not qq.full() and qq.qsize() == 0
        for i in range(3):
            qq.put_nowait(i)
        assert qq.qsize() == 3 and qq.full() and not qq.empty()
        with pytest.raises(Full):
            qq.put_nowait(3)
        assert qq.get_nowait() == 0
        assert not qq.full()
        qq.put_nowait(3)
        assert [qq.get_nowait() for _ in range(3)] == [1, 2, 3]


def test_maxsize_zero_or_negative_means_only_bytes_bound(shm_name: NameFactory) -> None:
    """maxsize <= 0 is unbounded in items; the ring's bytes still bound puts."""
    with Queue(-5, capacity=4096, name=shm_name()) as qq:
        assert qq.maxsize == 0
        n = 0
        with pytest.raises(Full):
            while True:
                qq.put_nowait(n)
                n += 1
        assert n > 10 and qq.qsize() == n and not qq.full()


def test_attached_handle_uses_creators_maxsize(shm_name: NameFactory) -> None:
    """The bound lives in the segment: an attached handle ignores its own."""
    with Queue(2, name=shm_name()) as qq:
        other = Queue(100, name=qq.name, create=False)
        try:
            assert other.maxsize == 2
            other.put_nowait("a")
            other.put_nowait("b")
            with pytest.raises(Full):
                other.put_nowait("c")
            assert qq.full()
            assert qq.get_nowait() == "a"
        finally:
            other.close()


def test_too_large_object_raises(shm_name: NameFactory) -> None:
    """An object whose pickle can never fit raises MessageTooLarge (a ValueError)."""
    with Queue(capacity=4096, name=shm_name()) as qq:
        with pytest.raises(MessageTooLarge):
            qq.put(b"x" * 10_000)
        with pytest.raises(ValueError):
            qq.put(b"x" * 10_000)
        assert qq.empty()


def test_unpicklable_object_raises_in_put(q: Queue) -> None:
    """Pickling happens in the caller: the error is raised by put itself."""
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        q.put(lambda: None)
    with pytest.raises(TypeError):
        q.put(threading.Lock())
    assert q.empty()
    q.put("fine")
    assert q.get_nowait() == "fine"


def test_put_many_and_get_many(q: Queue) -> None:
    """put_many queues objects in order; get_many returns up to max_messages."""
    assert q.put_many([(i, str(i)) for i in range(10)]) == 10
    assert q.get_many(4) == [(i, str(i)) for i in range(4)]
    assert q.get_many(100) == [(i, str(i)) for i in range(4, 10)]
    with pytest.raises(Empty):
        q.get_many(3, block=False)
    with pytest.raises(ValueError):
        q.get_many(0)


def test_put_many_stops_when_full(shm_name: NameFactory) -> None:
    """A non-blocking put_many stops at the first item without room."""
    with Queue(3, name=shm_name()) as qq:
        assert qq.put_many(range(5), block=False) == 3
        assert qq.get_many(10) == [0, 1, 2]


def test_put_many_pickles_everything_first(q: Queue) -> None:
    """An unpicklable item in put_many raises before anything is queued."""
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        q.put_many([1, 2, lambda: 3])
    assert q.empty()


def test_blocked_get_wakes_for_a_put_from_another_thread(q: Queue) -> None:
    """A get blocked without timeout returns the object put by another thread."""
    t = threading.Timer(0.1, q.put, args=("late",))
    t.start()
    try:
        assert q.get(timeout=10) == "late"
    finally:
        t.join()


@pytest.mark.timeout(60)
def test_threads_sharing_one_handle(q: Queue) -> None:
    """Threads putting and getting on one handle deliver every object once, whole."""
    n_producers, per_producer, n_consumers = 3, 3000, 3
    got: list[Any] = []
    lock = threading.Lock()

    def produce(p: int) -> None:
        for i in range(per_producer):
            # Mixed sizes, so that some need more than the first receive buffer.
            q.put((p, i, b"x" * (100_000 if i % 500 == 0 else i % 50)))

    def consume() -> None:
        while True:
            item = q.get(timeout=30)
            if item is None:
                return
            with lock:
                got.append(item)

    consumers = [threading.Thread(target=consume) for _ in range(n_consumers)]
    producers = [threading.Thread(target=produce, args=(p,)) for p in range(n_producers)]
    for t in consumers + producers:
        t.start()
    for t in producers:
        t.join()
    for _ in consumers:
        q.put(None)
    for t in consumers:
        t.join()
    assert len(got) == n_producers * per_producer
    assert sorted((p, i) for p, i, _ in got) == [
        (p, i) for p in range(n_producers) for i in range(per_producer)
    ]
    assert all(len(b) == (100_000 if i % 500 == 0 else i % 50) for _, i, b in got)


def test_shutdown_drains_then_raises(q: Queue) -> None:
    """After shutdown, puts raise ShutDown; gets drain what is queued first."""
    q.put(1)
    q.shutdown()
    with pytest.raises(ShutDown):
        q.put(2)
    assert q.get() == 1
    with pytest.raises(ShutDown):
        q.get(timeout=1)


def test_join_thread_and_cancel_join_thread_are_no_ops(q: Queue) -> None:
    """The multiprocessing.Queue methods exist and change nothing."""
    q.put(1)
    q.cancel_join_thread()
    q.join_thread()
    assert q.get_nowait() == 1


# -- closing and ownership --------------------------------------------------


def test_closed_queue_raises_value_error(shm_name: NameFactory) -> None:
    """Every operation on a closed queue raises ValueError; close is idempotent."""
    qq = Queue(name=shm_name())
    qq.close()
    qq.close()
    assert qq.closed
    for call in (
        lambda: qq.put(1),
        lambda: qq.put_nowait(1),
        lambda: qq.get(),
        lambda: qq.get_nowait(),
        lambda: qq.qsize(),
        lambda: qq.empty(),
        lambda: qq.put_many([1]),
        lambda: qq.get_many(1),
        lambda: pickle.dumps(qq),
    ):
        with pytest.raises(ValueError):
            call()


def test_creator_close_removes_the_segment(shm_name: NameFactory) -> None:
    """close() in the creating process removes /dev/shm/<name>."""
    qq = Queue(name=shm_name())
    assert shm_exists(qq.name)
    qq.close()
    assert not shm_exists(qq.name)


def test_default_name_is_removed_too() -> None:
    """A queue with a generated name leaves nothing behind after close()."""
    qq = Queue()
    name = qq.name
    try:
        assert shm_exists(name)
    finally:
        qq.close()
    assert not shm_exists(name)


def test_garbage_collection_removes_the_segment(shm_name: NameFactory) -> None:
    """Dropping the creator's last reference removes the segment."""
    qq = Queue(name=shm_name())
    name = qq.name
    del qq
    gc.collect()
    assert not shm_exists(name)


def test_attached_handle_never_removes(q: Queue) -> None:
    """Closing or collecting a handle that only attached leaves the segment."""
    other = Queue(name=q.name, create=False)
    other.put("from other")
    other.close()
    third = pickle.loads(pickle.dumps(q))
    del third
    gc.collect()
    assert shm_exists(q.name)
    assert q.get_nowait() == "from other"


def test_attach_to_missing_name_raises(shm_name: NameFactory) -> None:
    """create=False on a name that does not exist raises FileNotFoundError."""
    with pytest.raises(FileNotFoundError):
        Queue(name=shm_name(), create=False)
    with pytest.raises(ValueError):
        Queue(create=False)


def test_create_on_existing_name_raises(q: Queue) -> None:
    """create=True on a name in use raises FileExistsError."""
    with pytest.raises(FileExistsError):
        Queue(name=q.name)


def test_segment_removed_by_someone_else_is_not_an_error(shm_name: NameFactory) -> None:
    """close() copes with a name that was already removed (e.g. `pyipc rm`)."""
    qq = Queue(name=shm_name())
    os.unlink(f"/dev/shm/{qq.name}")
    qq.close()


# -- pickling and serializers -----------------------------------------------


def test_pickle_attaches_by_name(q: Queue) -> None:
    """An unpickled queue is attached to the same segment."""
    copy = pickle.loads(pickle.dumps(q))
    try:
        assert copy.name == q.name and copy.maxsize == q.maxsize
        copy.put((1, 2))
        assert q.get_nowait() == (1, 2)
    finally:
        copy.close()


def _tagged_dumps(obj: Any) -> bytes:
    return b"T" + pickle.dumps(obj)


def _tagged_loads(data: Any) -> Any:
    data = bytes(data)
    assert data[:1] == b"T"
    return ("loaded", pickle.loads(data[1:]))


def test_custom_dumps_and_loads(shm_name: NameFactory) -> None:
    """dumps/loads replace pickle, and travel with the queue when pickled."""
    with Queue(name=shm_name(), dumps=_tagged_dumps, loads=_tagged_loads) as qq:
        qq.put(7)
        assert qq.get() == ("loaded", 7)
        copy = pickle.loads(pickle.dumps(qq))
        try:
            copy.put(8)
            assert copy.get() == ("loaded", 8)
            qq.put_many([1, 2])
            assert copy.get_many(2) == [("loaded", 1), ("loaded", 2)]
            # Larger than the pooled receive buffers: a bytearray of its own.
            copy.put(b"q" * 200_000)
            assert qq.get() == ("loaded", b"q" * 200_000)
        finally:
            copy.close()


def test_exports() -> None:
    """Queue is exported from the package."""
    assert pyipc.Queue is Queue
    assert "Queue" in pyipc.__all__


# -- NumPy ------------------------------------------------------------------


def test_numpy_arrays_arrive_equal_and_writable(q: Queue) -> None:
    """NumPy arrays, large (out of band) or small, C or Fortran order, come
    back equal, writable and independent of the sender's."""
    np = pytest.importorskip("numpy")
    arrays = [
        np.arange(100_000, dtype=np.float64).reshape(100, 1000),
        np.asfortranarray(np.arange(40_000, dtype=np.int32).reshape(200, 200)),
        np.arange(10, dtype=np.int16),
        np.arange(100_000, dtype=np.float64)[::2],  # not contiguous: in-band
    ]
    for a in arrays:
        q.put(a)
        b = q.get()
        assert b.dtype == a.dtype and b.shape == a.shape
        assert (b == a).all()
        assert b.flags.writeable
        b.flat[0] = -1
        assert a.flat[0] != -1


def test_large_buffers_nested_in_containers(q: Queue) -> None:
    """Large arrays inside containers travel out of band and come back whole."""
    np = pytest.importorskip("numpy")
    obj = {"x": np.ones(50_000), "rest": [np.zeros(3), b"y" * 70_000, (1, np.arange(30_000))]}
    q.put(obj)
    got = q.get()
    assert (got["x"] == obj["x"]).all() and got["x"].flags.writeable
    assert (got["rest"][0] == 0).all()
    assert got["rest"][1] == obj["rest"][1]
    assert (got["rest"][2][1] == obj["rest"][2][1]).all()


@pytest.mark.parametrize("size", [0, 1, 65_535, 65_536, 65_537, 1_000_000])
def test_bytes_and_bytearray_of_any_size(q: Queue, size: int) -> None:
    """bytes and bytearray keep their type and content across the size at
    which they start to travel out of band."""
    data = bytes(i % 251 for i in range(size))
    q.put(data)
    got_bytes = q.get()
    q.put(bytearray(data))
    got_bytearray = q.get()
    assert type(got_bytes) is bytes and got_bytes == data
    assert type(got_bytearray) is bytearray and got_bytearray == data


def test_large_objects_through_get_many_and_async(shm_name: NameFactory) -> None:
    """Framed messages decode the same through get_many and get_async."""
    np = pytest.importorskip("numpy")
    a = np.arange(50_000, dtype=np.float64)
    with Queue(name=shm_name(), capacity=4 << 20) as qq:
        qq.put_many([a, b"z" * 100_000, bytearray(100_000)])
        got: list[Any] = []
        while len(got) < 3:  # get_many may return fewer than asked
            got += qq.get_many(3 - len(got), timeout=5)
        assert (got[0] == a).all() and got[0].flags.writeable
        assert got[1] == b"z" * 100_000 and type(got[2]) is bytearray

        async def main() -> Any:
            await qq.put_async(a)
            return await qq.get_async(timeout=5)

        b = asyncio.run(main())
        assert (b == a).all() and b.flags.writeable


@pytest.mark.timeout(60)
def test_large_array_is_copied_once_each_way(shm_name: NameFactory) -> None:
    """A 16 MiB array is written straight into the ring by put (no joined
    copy) and read out into one buffer the receiver owns by get: neither
    side allocates a second copy's worth of memory."""
    import tracemalloc

    np = pytest.importorskip("numpy")
    size = 16 << 20
    a = np.arange(size // 8, dtype=np.float64)
    with Queue(name=shm_name(), capacity=32 << 20) as qq:
        tracemalloc.start()
        try:
            qq.put(a)
            _, put_peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            b = qq.get()
            _, get_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert put_peak < size // 4, put_peak  # no copy on the producer's side
        assert size <= get_peak < size + size // 4, get_peak  # exactly the one it keeps
        assert (b == a).all() and b.flags.writeable


def test_large_object_over_max_message_size(shm_name: NameFactory) -> None:
    """A framed object larger than the ring can hold raises MessageTooLarge."""
    with Queue(name=shm_name(), capacity=64 * 1024) as qq:
        with pytest.raises(MessageTooLarge):
            qq.put(bytes(100_000))
        assert qq.empty()


# -- asyncio ----------------------------------------------------------------


@pytest.mark.timeout(20)
def test_async_get_and_put(shm_name: NameFactory) -> None:
    """get_async waits for a put from another thread; put_async waits for room."""

    async def main(qq: Queue) -> None:
        threading.Timer(0.1, qq.put, args=("hello",)).start()
        assert await qq.get_async() == "hello"
        await qq.put_async("a")
        # Full: the put waits until a thread makes room.
        threading.Timer(0.1, qq.get).start()
        await qq.put_async("b", timeout=10)
        assert qq.get_nowait() == "b"

    with Queue(1, name=shm_name()) as qq:
        asyncio.run(main(qq))


@pytest.mark.timeout(20)
def test_async_timeouts(shm_name: NameFactory) -> None:
    """get_async and put_async raise Empty and Full when their timeout expires."""

    async def main(qq: Queue) -> None:
        with pytest.raises(Empty):
            await qq.get_async(timeout=0.1)
        await qq.put_async(1)
        with pytest.raises(Full):
            await qq.put_async(2, timeout=0.1)

    with Queue(1, name=shm_name()) as qq:
        asyncio.run(main(qq))


@pytest.mark.timeout(20)
def test_async_wait_does_not_block_the_loop(q: Queue) -> None:
    """While get_async waits, other tasks on the loop keep running."""

    async def main() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        t = asyncio.ensure_future(ticker())
        with pytest.raises(Empty):
            await q.get_async(timeout=0.3)
        t.cancel()
        return ticks

    assert asyncio.run(main()) >= 3


@pytest.mark.timeout(20)
def test_async_get_cancellation_loses_nothing(q: Queue) -> None:
    """A cancelled get_async takes nothing: a later put is still queued."""

    async def main() -> None:
        task = asyncio.ensure_future(q.get_async())
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        q.put("kept")
        # Give a stale executor wait every chance to (wrongly) take it.
        await asyncio.sleep(0.3)
        assert q.get_nowait() == "kept"

    asyncio.run(main())


@pytest.mark.timeout(20)
def test_async_put_cancellation_queues_nothing(shm_name: NameFactory) -> None:
    """A cancelled put_async on a full queue leaves nothing behind."""

    async def main(qq: Queue) -> None:
        qq.put("first")
        task = asyncio.ensure_future(qq.put_async("second"))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert qq.get_nowait() == "first"
        await asyncio.sleep(0.3)
        assert qq.empty()

    with Queue(1, name=shm_name()) as qq:
        asyncio.run(main(qq))


@pytest.mark.timeout(20)
def test_async_wait_for_cancels_cleanly(q: Queue) -> None:
    """asyncio.wait_for around get_async raises TimeoutError and takes nothing."""

    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(q.get_async(), 0.1)
        q.put(5)
        assert await asyncio.wait_for(q.get_async(), 5) == 5

    asyncio.run(main())


def test_closed_queue_full_raises(shm_name: NameFactory) -> None:
    """full() on a closed Queue raises ValueError like every other method, bounded or not."""
    for maxsize in (0, 3):
        q = Queue(maxsize, name=shm_name())
        q.close()
        with pytest.raises(ValueError):
            q.full()


def test_huge_maxsize_is_a_value_error(shm_name: NameFactory) -> None:
    """A maxsize no ring can hold is a ValueError, not an OverflowError."""
    with pytest.raises(ValueError):
        Queue(2**64, name=shm_name())
