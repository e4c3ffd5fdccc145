"""Publisher and Subscriber: every member of the Topic contract, mostly in one process."""
from __future__ import annotations

import asyncio
import mmap
import multiprocessing as mp
import os
import pickle
import stat
import struct
import threading
import time

import pytest

import pyipc
from pyipc import CorruptedError, Empty, Full, IPCError, MessageTooLarge, Publisher, RingBuffer, ShutDown, Subscriber
from pyipc._core import lib

pytestmark = pytest.mark.timeout(60)

METHODS = [m for m in ("fork", "spawn") if m in mp.get_all_start_methods()]


def record(n: int) -> int:
    return 16 + (n + 7) // 8 * 8


@pytest.fixture
def topic(shm_name):
    """A small "block" topic (one page of records), unlinked afterwards."""
    name = shm_name()
    with Publisher(name, create=True, capacity=4096) as p:
        yield p


def test_create_attach_and_attributes(shm_name):
    """A topic made by one publisher is found by name by others, with the same geometry."""
    name = shm_name()
    with Publisher(name, create=True, capacity=5000, max_subscribers=3, overflow="overwrite") as p, \
            Publisher("/" + name) as q, Subscriber(name) as s:
        assert p.name == q.name == s.name == name and p.path is None
        assert p.capacity == q.capacity == s.capacity == 8192
        assert p.max_message_size == 8192 - 16
        assert q.max_subscribers == 3 and q.overflow == "overwrite"
        assert p.subscribers == 1
        q.publish(b"from q")
        assert s.recv() == b"from q"
        with pytest.raises(FileExistsError):
            Publisher(name, create=True)


def test_unique_name_mode_and_unlink(shm_name):
    """name=None picks a name; the permission bits are exactly mode; unlink twice raises."""
    old = os.umask(0o077)
    try:
        p = Publisher(create=True, mode=0o640)
    finally:
        os.umask(old)
    try:
        assert p.name.startswith("pyipc-")
        assert stat.S_IMODE(os.stat(f"/dev/shm/{p.name}").st_mode) == 0o640
    finally:
        p.unlink()
        p.close()
    with pytest.raises(FileNotFoundError):
        p.unlink()


def test_bad_arguments(shm_name):
    """Bad settings raise ValueError before anything is made; a missing topic FileNotFoundError."""
    with pytest.raises(ValueError):
        Publisher(shm_name(), create=True, overflow="drop")
    with pytest.raises(ValueError):
        Publisher(shm_name(), create=True, max_subscribers=0)
    with pytest.raises(ValueError):
        Subscriber(shm_name(), start="latest")
    with pytest.raises(FileNotFoundError):
        Subscriber(shm_name())
    with pytest.raises(ValueError):
        Subscriber()


def test_every_subscriber_gets_every_message_in_order(topic):
    """Each of three subscribers receives every message published after it attached, in order."""
    subs = [Subscriber(topic.name) for _ in range(3)]
    msgs = [bytes([i]) * (i % 50) for i in range(200)]
    for m in msgs:
        topic.publish(m)
        for s in subs:
            assert s.recv() == m
    for s in subs:
        s.close()


def test_start_next_and_oldest(topic):
    """start="next" sees only later messages; start="oldest" also those still in the ring."""
    topic.publish(b"before")
    nxt, old = Subscriber(topic.name), Subscriber(topic.name, start="oldest")
    topic.publish(b"after")
    assert nxt.recv() == b"after"
    assert old.recv() == b"before" and old.recv() == b"after"
    assert nxt.pending == old.pending == 0
    nxt.close()
    old.close()


def test_oldest_after_wrap_is_whole(topic):
    """After the ring wrapped, start="oldest" begins with the oldest message still whole."""
    for i in range(100):
        topic.publish(b"%03d" % i + b"x" * 100)
    with Subscriber(topic.name, start="oldest") as s:
        first = s.recv()
        rest = s.recv_many(1000, block=False)
        got = [int(m[:3]) for m in [first, *rest]]
        assert got == list(range(got[0], 100))
        assert len(got) * record(103) <= topic.capacity


def test_back_pressure_block(topic):
    """On a "block" topic the slowest subscriber holds publishers back: Full on timeout, room after it reads."""
    fast, slow = Subscriber(topic.name), Subscriber(topic.name)
    n = 0
    while True:
        try:
            topic.publish(b"x" * 100, block=False)
        except Full:
            break
        n += 1
        fast.recv()
    assert n == topic.capacity // record(100)
    with pytest.raises(Full):
        topic.publish(b"x", timeout=0.05)
    assert slow.pending == n and fast.pending == 0
    slow.recv()
    topic.publish(b"x" * 100, timeout=1)
    fast.close()
    slow.close()


def test_no_subscribers_never_blocks(topic):
    """With nobody subscribed a "block" topic keeps only the newest messages and never waits."""
    for _ in range(1000):
        topic.publish(b"y" * 200, block=False)
    assert topic.info()["published"] == 1000


def test_overwrite_never_blocks_and_counts_missed(shm_name):
    """On an "overwrite" topic a subscriber a ring behind skips ahead; received + missed == published."""
    with Publisher(shm_name(), create=True, capacity=4096, overflow="overwrite") as p, Subscriber(p.name) as s:
        for i in range(1000):
            p.publish(b"%d" % i, block=False)
        assert s.pending < 1000
        got = [int(m) for m in s.recv_many(1000, block=False)]
        assert got == list(range(got[0], 1000))
        assert s.missed == got[0] and len(got) + s.missed == 1000
        assert s.pending == 0


def test_recv_into_and_too_small(topic):
    """recv_into fills a buffer; one too small raises MessageTooLarge and the message stays next."""
    with Subscriber(topic.name) as s:
        topic.publish(b"abcdef")
        small, big = bytearray(3), bytearray(10)
        with pytest.raises(MessageTooLarge):
            s.recv_into(small)
        assert s.recv_into(big) == 6 and big[:6] == b"abcdef"
        with pytest.raises(TypeError):
            s.recv_into(b"read-only")


def test_recv_many_publish_many(topic):
    """publish_many publishes in order; recv_many returns what is there, up to its bound, without waiting."""
    with Subscriber(topic.name) as s:
        assert topic.publish_many([b"a", bytearray(b"bb"), memoryview(b"ccc")]) == 3
        assert s.recv_many(2) == [b"a", b"bb"]
        assert s.recv_many(10) == [b"ccc"]
        with pytest.raises(Empty):
            s.recv_many(10, block=False)
        with pytest.raises(ValueError):
            s.recv_many(0)
        # A partial publish_many stops at the first that does not fit.
        n = topic.publish_many([b"z" * 1000] * 10, block=False)
        assert 0 < n < 10
        with pytest.raises(MessageTooLarge):
            topic.publish_many([b"", b"q" * (topic.max_message_size + 1)], block=False)


def test_large_and_empty_messages(topic):
    """The largest message and the empty one go through whole."""
    with Subscriber(topic.name) as s:
        big = os.urandom(topic.max_message_size)
        topic.publish(big)
        assert s.recv() == big
        topic.publish(b"")
        assert s.recv() == b""
        with pytest.raises(MessageTooLarge):
            topic.publish(b"x" * (topic.max_message_size + 1))
        with pytest.raises(TypeError):
            topic.publish("text")  # type: ignore[arg-type]


def test_max_subscribers(shm_name):
    """More than max_subscribers at once raises IPCError; a close gives the slot back at once."""
    with Publisher(shm_name(), create=True, max_subscribers=2) as p:
        a, b = Subscriber(p.name), Subscriber(p.name)
        with pytest.raises(IPCError, match="max_subscribers"):
            Subscriber(p.name)
        a.close()
        assert p.subscribers == 1
        c = Subscriber(p.name)
        assert p.subscribers == 2
        b.close()
        c.close()
        assert p.subscribers == 0


def test_shutdown_drains_then_raises(topic):
    """After shutdown publishes raise ShutDown; subscribers receive what was published, then ShutDown."""
    with Subscriber(topic.name) as s:
        topic.publish(b"1")
        topic.publish(b"2")
        topic.shutdown()
        with pytest.raises(ShutDown):
            topic.publish(b"3")
        assert s.recv() == b"1" and s.recv_many(5) == [b"2"]
        with pytest.raises(ShutDown):
            s.recv()
        with pytest.raises(ShutDown):
            s.recv(block=False)
        assert topic.info()["shutdown"] == 1


def test_shutdown_wakes_blocked_subscriber(topic):
    """A subscriber blocked in recv wakes with ShutDown when the topic is shut down."""
    with Subscriber(topic.name) as s:
        out: list[BaseException] = []

        def wait() -> None:
            try:
                s.recv(timeout=10)
            except BaseException as e:  # noqa: BLE001 - handed to the test thread
                out.append(e)

        t = threading.Thread(target=wait)
        t.start()
        time.sleep(0.05)
        topic.shutdown()
        t.join(5)
        assert not t.is_alive() and isinstance(out[0], ShutDown)


def test_closed_handles_raise_value_error(topic):
    """Every operation on a closed handle raises ValueError; close is idempotent."""
    s = Subscriber(topic.name)
    s.close()
    s.close()
    assert s.closed
    for call in (s.recv, lambda: s.recv_many(1), lambda: s.pending, lambda: s.missed, s.view):
        with pytest.raises(ValueError):
            call()
    p = Publisher(topic.name)
    p.close()
    with pytest.raises(ValueError):
        p.publish(b"x")
    with pytest.raises(ValueError):
        p.subscribers


def test_ring_and_topic_are_told_apart(shm_name, topic):
    """Attaching a Subscriber to a ring, or a RingBuffer to a topic, says what the segment is."""
    with RingBuffer(shm_name(), create=True) as r:
        with pytest.raises(CorruptedError, match="is a pyipc ring, not a topic"):
            Subscriber(r.name)
        with pytest.raises(CorruptedError, match="is a pyipc ring, not a topic"):
            Publisher(r.name)
    with pytest.raises(CorruptedError, match="is a pyipc topic, not a ring"):
        RingBuffer(topic.name)


def test_reserve_publishes_or_drops(topic):
    """A reservation publishes on a normal exit and publishes nothing when its block raises."""
    with Subscriber(topic.name) as s:
        with topic.reserve(5) as buf:
            buf[:] = b"hello"
        with pytest.raises(RuntimeError):
            with topic.reserve(3) as buf:
                buf[:] = b"bad"
                raise RuntimeError
        topic.publish(b"after")
        assert s.recv() == b"hello" and s.recv() == b"after"
        assert s.pending == 0


def test_reservation_orders_later_publishes(topic):
    """Messages published while a reservation is open become visible after it, in ring order."""
    with Subscriber(topic.name) as s:
        lease = topic.reserve(4)
        buf = lease.__enter__()
        topic.publish(b"second")
        with pytest.raises(Empty):
            s.recv(block=False)
        buf[:] = b"1st!"
        lease.__exit__(None, None, None)
        assert s.recv_many(5) == [b"1st!", b"second"]


def test_view_reads_in_place_and_holds_back_publishers(topic):
    """A view is read-only, its record is not reused while it is open, and its space returns at exit."""
    with Subscriber(topic.name) as s:
        topic.publish(b"v" * 1000)
        with s.view() as v:
            assert bytes(v) == b"v" * 1000 and v.readonly
            # Room for what is not held: then publishers wait for the view.
            with pytest.raises(Full):
                for _ in range(10):
                    topic.publish(b"w" * 1000, block=False)
                    s.recv()
        with pytest.raises(ValueError):
            v[0]
        topic.publish(b"w" * 1000, timeout=1)


def test_view_with_numpy_array_alive(shm_name):
    """Exiting a view while a NumPy array over it lives raises BufferError; the space stays held until it dies."""
    np = pytest.importorskip("numpy")
    for overflow in ("block", "overwrite"):
        with Publisher(shm_name(), create=True, capacity=4096, overflow=overflow) as p, Subscriber(p.name) as s:
            payload = np.arange(250, dtype=np.int32)
            p.publish(payload)
            with pytest.raises(BufferError):
                with s.view() as v:
                    arr = np.frombuffer(v, dtype=np.int32)
            # The array still reads the message: nothing may overwrite it.
            for _ in range(20):
                try:
                    p.publish(b"z" * 1000, block=False)
                except Full:
                    break
                s.recv(block=False)
            else:
                raise AssertionError("publishers overwrote a record a live array reads")
            assert (arr == payload).all()
            del arr
            p.publish(b"z" * 1000, timeout=1)


def test_view_on_overwrite_topic_holds_its_message(shm_name):
    """On an "overwrite" topic a publisher that comes round to an open view waits for it."""
    with Publisher(shm_name(), create=True, capacity=4096, overflow="overwrite") as p, Subscriber(p.name) as s:
        p.publish(b"keep" * 100)
        with s.view() as v:
            with pytest.raises(Full):
                for _ in range(100):
                    p.publish(b"n" * 400, block=False)
            assert bytes(v) == b"keep" * 100
        for _ in range(100):
            p.publish(b"n" * 400, block=False)


def test_publish_without_sleepers_makes_no_wake(topic):
    """With no subscriber asleep, publishing never touches the wake-up word (no futex call)."""
    with Subscriber(topic.name) as s:
        fd = os.open(f"/dev/shm/{topic.name}", os.O_RDONLY)
        try:
            m = mmap.mmap(fd, 4096, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        word = lambda: struct.unpack_from("<I", m, lib.PYIPC_OFF_TOPIC_DATA_EVT)[0]  # noqa: E731
        before = word()
        for _ in range(100):
            topic.publish(b"m")
            s.recv()
        assert word() == before
        # A subscriber that sleeps sets the waiter bit, and the next publish wakes it.
        t = threading.Thread(target=lambda: s.recv(timeout=5))
        t.start()
        while not word() & 1:
            time.sleep(0.001)
        topic.publish(b"wake")
        t.join(5)
        assert not t.is_alive() and word() != before
        m.close()


def test_idle_subscriber_sleeps(topic):
    """A subscriber waiting on an empty topic sleeps: its slot counts the sleeps, the call uses little CPU."""
    with Subscriber(topic.name) as s:
        t0 = time.process_time()
        with pytest.raises(Empty):
            s.recv(timeout=0.3)
        used = time.process_time() - t0
        assert topic.subscriber_info()[0]["waits"] >= 1
        assert used < 0.3  # it slept most of the time rather than spinning
    

def test_pickle_is_by_name(topic):
    """A pickled subscriber attaches as a new subscriber; a pickled publisher attaches by name."""
    with Subscriber(topic.name) as s:
        s2 = pickle.loads(pickle.dumps(s))
        p2 = pickle.loads(pickle.dumps(topic))
        assert topic.subscribers == 2
        p2.publish(b"both")
        assert s.recv() == b"both" and s2.recv() == b"both"
        s2.close()
        p2.close()


def _child_receives(sub: Subscriber, n: int, out: "mp.Queue[list[bytes]]") -> None:
    out.put([sub.recv(timeout=10) for _ in range(n)])


@pytest.mark.parametrize("method", METHODS)
def test_subscriber_passed_to_child(method, topic):
    """A subscriber handed to a child (fork or spawn) becomes a new subscriber there; both receive everything."""
    ctx = mp.get_context(method)
    with Subscriber(topic.name) as s:
        out = ctx.Queue()
        child = ctx.Process(target=_child_receives, args=(s, 20, out))
        child.start()
        deadline = time.monotonic() + 20
        while topic.subscribers < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert topic.subscribers == 2 or method == "fork"  # a forked copy subscribes at its first call
        msgs = [b"m%d" % i for i in range(20)]
        for m in msgs:
            topic.publish(m, timeout=10)
        assert out.get(timeout=20) == msgs
        child.join(10)
        assert child.exitcode == 0
        assert [s.recv() for _ in range(20)] == msgs
        assert topic.subscribers == 1


def test_recv_async_and_timeout(topic):
    """recv_async receives without blocking the loop and raises Empty on timeout."""
    async def main() -> None:
        with Subscriber(topic.name) as s:
            with pytest.raises(Empty):
                await s.recv_async(timeout=0.05)
            loop = asyncio.get_running_loop()
            loop.call_later(0.05, topic.publish, b"later")
            assert await s.recv_async(timeout=5) == b"later"

    asyncio.run(main())


def test_recv_async_cancelled_loses_nothing(topic):
    """recv_async cancelled at random moments neither loses nor repeats a message."""
    import random

    rng = random.Random(1234)
    total = 300

    async def main() -> list[int]:
        got: list[int] = []
        with Subscriber(topic.name) as s:
            def feed() -> None:
                for i in range(total):
                    topic.publish(b"%d" % i, timeout=10)
                    if rng.random() < 0.3:
                        time.sleep(rng.random() * 0.002)

            t = threading.Thread(target=feed)
            t.start()
            while len(got) < total:
                try:
                    m = await asyncio.wait_for(s.recv_async(), timeout=rng.random() * 0.003)
                except asyncio.TimeoutError:
                    continue
                got.append(int(m))
            t.join(10)
        return got

    assert asyncio.run(main()) == list(range(total))


def test_check_and_repair_clean_topic(topic):
    """check() counts what the ring retains; repair() of an undamaged topic drops nothing."""
    with Subscriber(topic.name) as s:
        for i in range(5):
            topic.publish(b"%d" % i)
        assert topic.check() == 5
        assert topic.repair() == 0
        assert [s.recv() for _ in range(5)] == [b"%d" % i for i in range(5)]
        assert topic.check() == 5


def test_topic_in_a_file(tmp_path):
    """path= puts the topic in a regular file; it pickles by path."""
    f = tmp_path / "t.topic"
    with Publisher(path=f, create=True) as p, Subscriber(path=str(f)) as s:
        assert p.path == str(f) and p.name is None
        p.publish(b"file")
        assert s.recv() == b"file"
        s2 = pickle.loads(pickle.dumps(s))
        p.publish(b"again")
        assert s2.recv() == b"again"
        s2.close()


def test_read_ahead_keeps_order_and_counts(topic):
    """Messages recv() read ahead stay this subscriber's, in order, for every kind of receive, and count as pending."""
    with Subscriber(topic.name) as s:
        for i in range(6):
            topic.publish(b"%d" % i)
        assert s.recv() == b"0"
        assert s.pending == 5 and topic.subscriber_info()[0]["lag"] == 0  # the rest read ahead
        with pytest.raises(MessageTooLarge):
            s.recv_into(bytearray(0))
        buf = bytearray(8)
        assert s.recv_into(buf) == 1 and buf[:1] == b"1"
        with s.view() as v:
            assert bytes(v) == b"2" and v.readonly
        topic.publish(b"6")
        assert s.recv_many(10) == [b"3", b"4", b"5", b"6"]
        topic.publish(b"7")
        assert s.recv() == b"7" and s.pending == 0
        topic.publish(b"8")
        s.close()
        with pytest.raises(ValueError):
            s.recv()


def test_read_ahead_view_export_may_outlive_it(topic):
    """A view of a message recv() read ahead is of a private copy: an array over it may outlive the block."""
    np = pytest.importorskip("numpy")
    with Subscriber(topic.name) as s:
        topic.publish(b"a")
        topic.publish(b"b")
        assert s.recv() == b"a"
        with s.view() as v:
            held = np.frombuffer(v, dtype=np.uint8)
        topic.publish(b"c" * 4000)  # the ring moves on; the copy does not
        assert bytes(held) == b"b"


def test_recv_async_waits_without_the_executor(topic):
    """recv_async waits through the loop's waitset: it never submits to the loop's default executor."""
    import concurrent.futures

    class NoExecutor(concurrent.futures.ThreadPoolExecutor):
        def submit(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            raise AssertionError("recv_async used the default executor")

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(NoExecutor())
        with Subscriber(topic.name) as s:
            loop.call_later(0.05, topic.publish, b"woken")
            return await s.recv_async(timeout=5)

    assert asyncio.run(main()) == b"woken"


def test_close_wakes_recv_async(topic):
    """Closing a subscriber wakes a coroutine waiting in recv_async, which raises ValueError."""
    async def main() -> None:
        s = Subscriber(topic.name)
        task = asyncio.ensure_future(s.recv_async())
        await asyncio.sleep(0.05)
        s.close()
        with pytest.raises(ValueError):
            await asyncio.wait_for(task, 5)

    asyncio.run(main())
