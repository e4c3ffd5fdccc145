"""RingBuffer: every API member and error path, in one process."""
from __future__ import annotations

import array
import os
import pickle
import queue
import stat
import threading
import time

import pytest

import pyipc
from pyipc import CorruptedError, Empty, Full, MessageTooLarge, RingBuffer, ShutDown

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def ring(shm_name):
    r = RingBuffer(shm_name(), create=True, capacity=4096)
    yield r
    r.close()


def test_exception_hierarchy():
    """pyipc's exceptions mix in the builtins that queue users already catch."""
    assert issubclass(pyipc.Empty, queue.Empty) and issubclass(pyipc.Empty, pyipc.IPCError)
    assert issubclass(pyipc.Full, queue.Full) and issubclass(pyipc.Full, pyipc.IPCError)
    assert issubclass(pyipc.MessageTooLarge, ValueError)
    assert issubclass(pyipc.ShutDown, pyipc.IPCError)
    assert issubclass(pyipc.CorruptedError, pyipc.IPCError)
    if hasattr(queue, "ShutDown"):
        assert issubclass(pyipc.ShutDown, queue.ShutDown)


def test_create_attach_roundtrip(shm_name):
    """A message put through one handle is got through another attached by name."""
    name = shm_name()
    with RingBuffer(name, create=True) as a, RingBuffer("/" + name) as b:
        assert a.name == b.name == name
        assert a.capacity == b.capacity == 1 << 20
        a.put(b"hello")
        assert b.get() == b"hello"


def test_capacity_rounds_up_and_max_message_size(shm_name):
    """Capacity is rounded up to a power of two of at least a page, and max_message_size always fits."""
    page = os.sysconf("SC_PAGESIZE")
    with RingBuffer(shm_name(), create=True, capacity=1000) as r:
        assert r.capacity == page
    with RingBuffer(shm_name(), create=True, capacity=page + 1) as r:
        assert r.capacity == 2 * page
        assert r.max_message_size == 2 * page - 8
        # Whatever the cursors' positions, a max-size message fits an empty ring.
        for shift in range(0, 2 * page, 136):
            r.put(b"x" * shift)
            r.get()
            r.put(b"y" * r.max_message_size, block=False)
            assert r.get() == b"y" * r.max_message_size


def test_unique_name_when_none():
    """name=None picks a fresh unique name."""
    a = RingBuffer(create=True, capacity=64)
    b = RingBuffer(create=True, capacity=64)
    try:
        assert a.name != b.name
        assert os.path.exists(f"/dev/shm/{a.name}")
    finally:
        for r in (a, b):
            r.unlink()
            r.close()


def test_create_existing_raises(ring):
    """Creating a name that exists raises FileExistsError."""
    with pytest.raises(FileExistsError):
        RingBuffer(ring.name, create=True)


def test_attach_missing_raises(shm_name):
    """Attaching to a missing name raises FileNotFoundError."""
    with pytest.raises(FileNotFoundError):
        RingBuffer(shm_name())


@pytest.mark.parametrize("bad", ["", "/", "a/b", "x" * 201, "a\0b", ".."])
def test_bad_names(bad):
    """Invalid names raise ValueError before any system call."""
    with pytest.raises(ValueError):
        RingBuffer(bad, create=True)


def test_name_of_200_chars_ok(shm_name):
    """A 200-character name is accepted."""
    name = shm_name()
    long = name + "x" * (200 - len(name))
    try:
        with RingBuffer(long, create=True, capacity=64) as r:
            assert r.name == long
    finally:
        if os.path.exists(f"/dev/shm/{long}"):
            os.unlink(f"/dev/shm/{long}")


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o666, 0o400])
def test_mode_exact_despite_umask(shm_name, mode):
    """The segment's permission bits are exactly mode, whatever the umask."""
    old = os.umask(0o077)
    try:
        with RingBuffer(shm_name(), create=True, capacity=64, mode=mode) as r:
            bits = stat.S_IMODE(os.stat(f"/dev/shm/{r.name}").st_mode)
            assert bits == mode
    finally:
        os.umask(old)


def test_bad_capacity(shm_name):
    """Nonsense capacities raise ValueError or TypeError."""
    with pytest.raises(ValueError):
        RingBuffer(shm_name(), create=True, capacity=0)
    with pytest.raises(ValueError):
        RingBuffer(shm_name(), create=True, capacity=1 << 40)
    with pytest.raises(TypeError):
        RingBuffer(shm_name(), create=True, capacity=1.5)  # type: ignore[arg-type]


def test_attach_needs_name():
    """Attaching without a name is a ValueError."""
    with pytest.raises(ValueError):
        RingBuffer()


def test_bytes_like_inputs(ring):
    """Any contiguous bytes-like object can be put; empty messages are valid."""
    arr = array.array("i", [1, 2, 3])
    for item in (b"", b"abc", bytearray(b"def"), memoryview(b"ghi"), arr):
        ring.put(item)
    assert [ring.get() for _ in range(5)] == [b"", b"abc", b"def", b"ghi", arr.tobytes()]


@pytest.mark.parametrize("bad", ["text", 12, None, [1, 2]])
def test_put_not_bytes_like(ring, bad):
    """Data that is not bytes-like raises TypeError."""
    with pytest.raises(TypeError):
        ring.put(bad)
    with pytest.raises(TypeError):
        ring.put_many([b"ok", bad])


def test_nowait_and_timeouts(ring):
    """Empty/Full come from non-blocking calls and expired timeouts."""
    with pytest.raises(Empty):
        ring.get_nowait()
    with pytest.raises(Empty):
        ring.get(timeout=0)
    t = time.monotonic()
    with pytest.raises(Empty):
        ring.get(timeout=0.2)
    assert time.monotonic() - t >= 0.2
    while True:
        try:
            ring.put_nowait(b"z" * 100)
        except Full:
            break
    with pytest.raises(Full):
        ring.put(b"z" * 100, timeout=0.1)
    with pytest.raises(Full):
        ring.put(b"z" * 100, block=False)


def test_negative_timeout(ring):
    """A negative timeout raises ValueError."""
    with pytest.raises(ValueError):
        ring.get(timeout=-1)
    with pytest.raises(ValueError):
        ring.put(b"", timeout=-0.5)


def test_message_too_large(ring):
    """A message longer than max_message_size raises MessageTooLarge."""
    with pytest.raises(MessageTooLarge):
        ring.put(b"x" * (ring.max_message_size + 1))
    ring.put(b"x" * ring.max_message_size)
    assert len(ring.get()) == ring.max_message_size


def test_get_into(ring):
    """get_into fills a writable buffer; too small keeps the message queued."""
    ring.put(b"0123456789")
    small = bytearray(4)
    with pytest.raises(MessageTooLarge):
        ring.get_into(small)
    assert ring.qsize() == 1
    buf = bytearray(32)
    assert ring.get_into(buf) == 10
    assert bytes(buf[:10]) == b"0123456789"
    with pytest.raises(TypeError):
        ring.get_into(b"read-only")
    with pytest.raises(Empty):
        ring.get_into(buf, block=False)


def test_large_messages_grow_receive_buffer(shm_name):
    """get returns messages larger than the initial receive buffer whole."""
    with RingBuffer(shm_name(), create=True, capacity=1 << 20) as r:
        payload = os.urandom(300_000)
        r.put(payload)
        r.put(b"small")
        assert r.get() == payload
        assert r.get() == b"small"


def test_put_many_get_many(ring):
    """put_many enqueues in order; get_many returns up to max without waiting."""
    items = [bytes([i]) * i for i in range(20)]
    assert ring.put_many(items) == 20
    assert ring.put_many([]) == 0
    assert ring.put_many(iter([b"gen1", b"gen2"])) == 2
    got = ring.get_many(7)
    assert got == items[:7]
    rest = ring.get_many(100)
    assert rest == items[7:] + [b"gen1", b"gen2"]
    with pytest.raises(ValueError):
        ring.get_many(0)
    with pytest.raises(Empty):
        ring.get_many(5, block=False)


def test_put_many_partial_when_full(ring):
    """Non-blocking put_many stops at the first item that does not fit."""
    item = b"p" * 1000  # records of 1008 bytes: four fit in 4096
    assert ring.put_many([item] * 10, block=False) == 4
    assert ring.put_many([item] * 3, timeout=0.05) == 0
    assert ring.qsize() == 4


def test_put_many_too_large_keeps_earlier(ring):
    """An item that can never fit raises MessageTooLarge; earlier ones stay."""
    with pytest.raises(MessageTooLarge):
        ring.put_many([b"a", b"b", b"x" * 5000, b"c"])
    assert ring.get_many(10) == [b"a", b"b"]


def test_get_many_large_first_message(shm_name):
    """get_many grows its buffer for a message larger than it."""
    with RingBuffer(shm_name(), create=True, capacity=1 << 20) as r:
        big = os.urandom(200_000)
        r.put_many([big, b"tail"])
        got = r.get_many(10)
        assert got[0] == big
        assert got[1:] + (r.get_many(10) if len(got) == 1 else []) == [b"tail"]


def test_qsize_len_empty(ring):
    """qsize, len and empty count queued messages."""
    assert ring.empty() and len(ring) == 0
    ring.put_many([b"1", b"2", b"3"])
    assert ring.qsize() == len(ring) == 3 and not ring.empty()
    ring.get()
    assert len(ring) == 2


def test_max_messages_bound(shm_name):
    """max_messages bounds queued messages; it is read back on attach."""
    name = shm_name()
    with RingBuffer(name, create=True, capacity=4096, max_messages=3) as r, RingBuffer(name) as other:
        assert other.max_messages == 3
        assert r.put_many([b"a"] * 5, block=False) == 3
        with pytest.raises(Full):
            r.put_nowait(b"b")
        other.get()
        r.put_nowait(b"b")


def test_stats_counters(ring):
    """stats() counts puts, gets, bytes and waits in the segment."""
    ring.put(b"abc")
    ring.put(b"de")
    ring.get()
    s = ring.stats()
    assert s["puts"] == 2 and s["gets"] == 1
    assert s["bytes_put"] == 5 and s["bytes_got"] == 3
    assert {"put_waits", "get_waits"} <= s.keys()
    ring.get()
    with pytest.raises(Empty):
        ring.get(timeout=0.3)
    assert ring.stats()["get_waits"] >= 1


def test_info(ring):
    """info() reports geometry, state and the creator's pid."""
    info = ring.info()
    assert info["capacity"] == ring.capacity
    assert info["creator_pid"] == os.getpid()
    assert info["shutdown"] == 0
    assert info["version"] >= 1


def test_shutdown_drains_then_raises(shm_name):
    """After shutdown puts raise and gets drain then raise, through any handle."""
    name = shm_name()
    with RingBuffer(name, create=True, capacity=4096) as r:
        r.put_many([b"1", b"2"])
        r.shutdown()
        with pytest.raises(ShutDown):
            r.put(b"3")
        late = RingBuffer(name)
        assert late.get() == b"1"
        assert r.get_nowait() == b"2"
        with pytest.raises(ShutDown):
            r.get_nowait()
        with pytest.raises(ShutDown):
            late.get()
        late.close()


def test_shutdown_immediate_discards(ring):
    """shutdown(immediate=True) discards queued messages."""
    ring.put_many([b"1", b"2"])
    ring.shutdown(immediate=True)
    assert ring.qsize() == 0
    with pytest.raises(ShutDown):
        ring.get()
    with pytest.raises(ShutDown):
        ring.put_many([b"x"])


def wait_until(pred, timeout=10.0):
    """Poll pred() until it holds (the synchronisation, not a delay)."""
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "gave up waiting"
        time.sleep(0.001)


def test_shutdown_wakes_blocked_get(ring):
    """A blocked get wakes with ShutDown when the ring is shut down."""
    errors = []

    def consumer():
        try:
            ring.get(timeout=10)
        except BaseException as e:  # noqa: BLE001 - recorded for the assertion
            errors.append(e)

    t = threading.Thread(target=consumer)
    t.start()
    wait_until(lambda: ring.stats()["get_waits"] >= 1)  # asleep in get
    ring.shutdown()
    t.join(5)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ShutDown)


def test_wait_consumed(ring):
    """put(wait_consumed=True) returns once a consumer took the message."""
    got = []

    def consumer():
        # Take it only once the producer waits for that (its sleep counts).
        wait_until(lambda: ring.stats()["put_waits"] >= 1)
        got.append(ring.get(timeout=5))

    t = threading.Thread(target=consumer)
    t.start()
    ring.put(b"sync", wait_consumed=True, timeout=5)
    assert ring.stats()["gets"] == 1
    t.join(5)
    assert got == [b"sync"]


def test_wait_consumed_timeout_leaves_it_queued(ring):
    """A wait_consumed put that times out raises TimeoutError; the message stays."""
    with pytest.raises(TimeoutError):
        ring.put(b"m", timeout=0.1, wait_consumed=True)
    assert ring.get_nowait() == b"m"


def test_wait_consumed_shutdown(ring):
    """A wait_consumed put blocked on its consumer raises ShutDown at shutdown."""

    def shut_once_waiting():
        wait_until(lambda: ring.stats()["put_waits"] >= 1)
        ring.shutdown()

    threading.Thread(target=shut_once_waiting).start()
    with pytest.raises(ShutDown):
        ring.put(b"m", wait_consumed=True, timeout=5)


def test_closed_handle_raises_value_error(shm_name):
    """Any operation on a closed handle raises ValueError; close is idempotent."""
    r = RingBuffer(shm_name(), create=True, capacity=64)
    r.close()
    r.close()
    assert r.closed
    for call in (
        lambda: r.put(b"x"),
        lambda: r.get(),
        lambda: r.get_into(bytearray(4)),
        lambda: r.put_many([b"x"]),
        lambda: r.get_many(1),
        r.qsize,
        r.stats,
        r.shutdown,
    ):
        with pytest.raises(ValueError):
            call()


def test_close_wakes_blocked_thread(ring):
    """Closing a handle makes a get blocked on it in another thread return."""
    errors = []

    def consumer():
        try:
            ring.get(timeout=10)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=consumer)
    t.start()
    wait_until(lambda: ring.stats()["get_waits"] >= 1)  # asleep in get
    ring.close()
    t.join(5)
    assert not t.is_alive()
    assert isinstance(errors[0], ValueError)


def test_unlink_semantics(shm_name):
    """unlink removes the name; attached handles keep working; twice raises."""
    name = shm_name()
    r = RingBuffer(name, create=True, capacity=64)
    other = RingBuffer(name)
    r.unlink()
    assert not os.path.exists(f"/dev/shm/{name}")
    r.put(b"still")
    assert other.get() == b"still"
    with pytest.raises(FileNotFoundError):
        r.unlink()
    r.close()
    other.close()
    with pytest.raises(FileNotFoundError):
        r.unlink()  # allowed after close, still reports the missing name


def test_pickle_attaches_by_name(ring):
    """A RingBuffer pickles by name and the copy attaches to the same segment."""
    copy = pickle.loads(pickle.dumps(ring))
    try:
        ring.put(b"via pickle")
        assert copy.get() == b"via pickle"
        assert copy.name == ring.name
    finally:
        copy.close()


def test_threads_share_one_handle(shm_name):
    """Several threads putting and getting through one handle lose nothing."""
    with RingBuffer(shm_name(), create=True, capacity=8192) as r:
        n, producers = 2000, 3
        got: list[bytes] = []
        lock = threading.Lock()

        def produce(pid):
            for i in range(n):
                r.put(b"%d:%d:" % (pid, i) + b"x" * (i % 300))

        def consume():
            while True:
                try:
                    m = r.get(timeout=2)
                except Empty:
                    return
                with lock:
                    got.append(m)

        threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
        threads += [threading.Thread(target=consume) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(got) == n * producers
        seen = {(int(m.split(b":")[0]), int(m.split(b":")[1])) for m in got}
        assert len(seen) == n * producers


def test_blocked_get_does_not_stop_other_threads(ring):
    """A get blocked in one thread releases the GIL: other threads run."""
    t = threading.Thread(target=lambda: pytest.raises(Empty, ring.get, timeout=1.0))
    t.start()
    count = 0
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        count += 1
    t.join(5)
    # Pure-Python work progressed by many iterations while the get waited.
    assert count > 10_000


def test_check_counts_records(ring):
    """check() walks and validates every queued record."""
    ring.put_many([b"a", b"bb", b""])
    assert ring.check() == 3


def test_corrupted_segment_rejected(shm_name):
    """A file that is not a ring raises CorruptedError on attach."""
    name = shm_name()
    with open(f"/dev/shm/{name}", "wb") as f:
        f.write(os.urandom(8192))
    with pytest.raises(CorruptedError):
        RingBuffer(name)


def test_put_many_large_items_one_by_one(shm_name):
    """put_many of messages too large to join keeps order, counts and partial stops."""
    with RingBuffer(shm_name(), create=True, capacity=1 << 20) as r:
        big = [bytes([i]) * 200_000 for i in range(8)]
        assert r.put_many(big, block=False) == 5  # five 200 kB records fit 1 MiB
        assert [r.get_nowait() for _ in range(5)] == big[:5]
        with pytest.raises(TypeError):
            r.put_many([b"x" * 300_000, "not bytes"])
        assert r.empty()  # nothing was queued before the TypeError


@pytest.mark.timeout(30)
def test_repair_refuses_a_lock_that_may_be_held(shm_name):
    """repair() never takes a lock from a holder that may live: OSError(EBUSY), nothing changed."""
    import errno
    import mmap
    import struct

    from pyipc._core import lib

    with RingBuffer(shm_name(), create=True) as ring:
        ring.put(b"kept")
        with open(f"/dev/shm/{ring.name}", "r+b") as f:
            seg = mmap.mmap(f.fileno(), 4096)
        try:
            struct.pack_into("<I", seg, lib.PYIPC_OFF_PROD_LOCK, lib.PYIPC_OWNER_UNKNOWN)
            with pytest.raises(OSError) as info:
                ring.repair()
            assert info.value.errno == errno.EBUSY
            struct.pack_into("<I", seg, lib.PYIPC_OFF_PROD_LOCK, 0)
        finally:
            seg.close()
        assert ring.get_nowait() == b"kept"


def test_get_many_sizes_its_work_by_the_ring(ring):
    """get_many with an absurd max_messages neither reserves memory for it nor fails: a ring holds at most capacity/8 messages."""
    ring.put_many([b"a", b"b"])
    assert ring.get_many(2**31, block=False) == [b"a", b"b"]
    ring.put(b"c")
    assert ring.get_many(2**32 + 1, block=False) == [b"c"]
    with pytest.raises(ValueError):
        ring.get_many(0)


def test_out_of_range_integers_are_value_errors(shm_name):
    """Integers out of range are ValueError, as the rest of the API, never OverflowError."""
    for kw in ({"max_messages": 10**100}, {"capacity": 2**64}, {"mode": 2**40}, {"mode": -1}, {"capacity": 0}):
        with pytest.raises(ValueError):
            RingBuffer(shm_name(), create=True, **kw)
    with RingBuffer(shm_name(), create=True) as r:
        with pytest.raises(ValueError):
            with r.reserve(2**64):
                pass
