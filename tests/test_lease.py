"""Zero-copy leases: ``reserve()`` writes a message in place, ``view()`` reads one.

The safety rules under test are the contract's: a lease's memoryview is
released when its block exits; if the memory is still exported then (a
NumPy array made over it), the exit raises BufferError, a reservation is not
published, and the space stays held, never reused, until the export is gone.
"""
from __future__ import annotations

import contextlib
import gc
import multiprocessing as mp
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from typing import Callable, Iterator, List, Tuple

import pytest

from pyipc import Empty, Full, IPCError, MessageTooLarge, RingBuffer, ShutDown

np = pytest.importorskip("numpy")


def fill_ring(ring: RingBuffer, size: int) -> int:
    """Put messages of `size` bytes until the ring is full; return how many."""
    n = 0
    while True:
        try:
            ring.put_nowait(bytes(size))
        except Full:
            return n
        n += 1


# ---- reserve --------------------------------------------------------------


@pytest.mark.timeout(30)
def test_reserve_publishes_on_normal_exit(shm_name: Callable[[], str]) -> None:
    """A reservation is a writable view of exactly `size` bytes, published at the end of the block."""
    with RingBuffer(shm_name(), create=True) as ring:
        with ring.reserve(11) as buf:
            assert isinstance(buf, memoryview) and not buf.readonly
            assert buf.nbytes == 11 and buf.format == "B"
            assert ring.qsize() == 0  # not visible while being written
            buf[:] = b"hello world"
        assert ring.get_nowait() == b"hello world"
        with pytest.raises(ValueError):
            buf[0]  # released at exit


@pytest.mark.timeout(30)
def test_reserve_aborts_on_exception(shm_name: Callable[[], str]) -> None:
    """A block that raises publishes nothing, returns the space, and the exception propagates."""
    with RingBuffer(shm_name(), create=True, capacity=4096) as ring:
        with pytest.raises(KeyError):
            with ring.reserve(3000) as buf:
                buf[:5] = b"never"
                raise KeyError("boom")
        ring.put_nowait(b"after")
        assert ring.get_nowait() == b"after"
        with pytest.raises(Empty):
            ring.get_nowait()
        # The aborted space is back: a record that needs nearly all of it fits.
        ring.put_nowait(bytes(ring.max_message_size))
        assert ring.info()["reserves"] == 0


@pytest.mark.timeout(30)
def test_reserve_holds_back_later_puts(shm_name: Callable[[], str]) -> None:
    """Messages put after an open reservation are delivered after it: one order for everyone."""
    with RingBuffer(shm_name(), create=True) as ring:
        with ring.reserve(5) as buf:
            ring.put_nowait(b"second")
            with pytest.raises(Empty):
                ring.get_nowait()
            buf[:] = b"first"
        assert ring.get_many(5, block=False) == [b"first", b"second"]


@pytest.mark.timeout(30)
def test_reserve_limits_and_waits(shm_name: Callable[[], str]) -> None:
    """reserve waits for room like put: MessageTooLarge, Full on timeout, ShutDown; size 0 is a message."""
    with RingBuffer(shm_name(), create=True, capacity=4096) as ring:
        with pytest.raises(MessageTooLarge):
            with ring.reserve(ring.max_message_size + 1):
                pass
        with pytest.raises(ValueError):
            ring.reserve(-1)
        with ring.reserve(0):
            pass
        assert ring.get_nowait() == b""
        fill_ring(ring, 1000)
        with pytest.raises(Full):
            with ring.reserve(1000, timeout=0.05):
                pass
        with pytest.raises(Full):
            with ring.reserve(1000, block=False):
                pass
        ring.shutdown()
        with pytest.raises(ShutDown):
            with ring.reserve(1):
                pass


@pytest.mark.timeout(30)
def test_reserve_exported_at_exit_is_not_published(shm_name: Callable[[], str]) -> None:
    """A reservation whose memory is exported at exit raises BufferError, is never published, and its space stays held until the export is gone."""
    with RingBuffer(shm_name(), create=True, capacity=1 << 16) as ring:
        with pytest.raises(BufferError):
            with ring.reserve(40000) as buf:
                arr = np.frombuffer(buf, dtype=np.uint8)
                arr[:] = 7
        assert ring.info()["reserves"] == 1
        with pytest.raises(Full):
            ring.put_nowait(bytes(40000))  # the held space is not reused
        del arr
        gc.collect()
        assert ring.info()["reserves"] == 0
        ring.put_nowait(bytes(40000))
        assert len(ring.get_nowait()) == 40000
        with pytest.raises(Empty):
            ring.get_nowait()  # the exported reservation never appeared


# ---- view -----------------------------------------------------------------


@pytest.mark.timeout(30)
def test_view_takes_the_message_on_entry(shm_name: Callable[[], str]) -> None:
    """A view is read-only, takes its message on entry (others get the next), and is released at exit."""
    with RingBuffer(shm_name(), create=True) as ring, RingBuffer(ring.name) as other:
        ring.put_nowait(b"one")
        ring.put_nowait(b"two")
        with ring.view() as msg:
            assert msg.readonly and bytes(msg) == b"one"
            with pytest.raises(TypeError):
                msg[0] = 0
            assert other.get_nowait() == b"two"
            assert ring.qsize() == 0
        with pytest.raises(ValueError):
            msg[0]
        with pytest.raises(Empty):
            with ring.view(block=False):
                pass
        with pytest.raises(Empty):
            with ring.view(timeout=0.02):
                pass


@pytest.mark.timeout(30)
def test_view_holds_only_its_space(shm_name: Callable[[], str]) -> None:
    """A long-held view stops producers only from reusing space from it onward; consumers go on."""
    with RingBuffer(shm_name(), create=True, capacity=1 << 16) as ring:
        size = 10000
        for i in range(4):
            ring.put_nowait(bytes([i]) * size)
        with ring.view() as first:
            # Consumers keep taking later messages.
            assert [m[0] for m in ring.get_many(3, block=False)] == [1, 2, 3]
            # Producers fill only what lies before the view, ring-wise.
            n = fill_ring(ring, size)
            # The view holds `free` at its record: the three records taken after
            # it stay unusable too, until it is released.
            assert n == (ring.capacity - 4 * 10008) // 10008
            assert first[0] == 0 and bytes(first) == bytes(size)
        ring.put_nowait(bytes(size))  # its space is back


@pytest.mark.timeout(60)
def test_view_exported_array_is_never_overwritten(shm_name: Callable[[], str]) -> None:
    """A NumPy array over a view outlives the block: BufferError at exit, and its bytes never change while it lives."""
    with RingBuffer(shm_name(), create=True, capacity=1 << 16) as ring:
        ring.put_nowait(bytes(range(256)) * 100)
        with pytest.raises(BufferError):
            with ring.view() as msg:
                arr = np.frombuffer(msg, dtype=np.uint8)
        want = bytes(arr)
        # Producers and consumers hammer the ring meanwhile.
        for i in range(200):
            try:
                ring.put_nowait(bytes([i & 0xFF]) * 3000)
            except Full:
                pass
            try:
                ring.get_nowait()
            except Empty:
                pass
            assert bytes(arr) == want
        assert ring.info()["views"] == 1
        del arr
        gc.collect()
        assert ring.info()["views"] == 0


@pytest.mark.timeout(30)
def test_view_slice_kept_after_exit_holds_the_space(shm_name: Callable[[], str]) -> None:
    """A slice of a view kept past the block still reaches the memory: BufferError, and the space stays held."""
    with RingBuffer(shm_name(), create=True) as ring:
        ring.put_nowait(b"abcdef")
        with pytest.raises(BufferError):
            with ring.view() as msg:
                part = msg[2:4]
        assert bytes(part) == b"cd"
        assert ring.info()["views"] == 1
        del part
        assert ring.info()["views"] == 0


@pytest.mark.timeout(30)
def test_lease_outlives_close(shm_name: Callable[[], str]) -> None:
    """Closing the ring inside a lease block leaves the lease's memory valid until the block ends."""
    name = shm_name()
    with RingBuffer(name, create=True) as reader:
        ring = RingBuffer(name)
        with ring.reserve(4) as buf:
            ring.close()
            buf[:] = b"late"
        assert reader.get_nowait() == b"late"
        reader.put_nowait(b"look")
        ring = RingBuffer(name)
        with ring.view() as msg:
            ring.close()
            assert bytes(msg) == b"look"


def _child_exits_inherited_lease(conn: "mp.connection.Connection") -> None:
    conn.send("ok")


@pytest.mark.timeout(30)
def test_forked_child_does_not_end_the_parents_lease(shm_name: Callable[[], str]) -> None:
    """A child forked inside a lease block leaves the block without touching the parent's lease."""
    with RingBuffer(shm_name(), create=True) as ring:
        ring.put_nowait(b"mine")
        with ring.view() as msg:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                code = 0
                try:
                    pass  # leaving the with block below ends the child's copy
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert status == 0
            assert ring.info()["views"] == 1
            assert bytes(msg) == b"mine"
        assert ring.info()["views"] == 0


# ---- across processes -----------------------------------------------------

HDR = struct.Struct("<IIII")  # producer, sequence, length, crc


def _producer(name: str, ident: int, count: int) -> None:
    ring = RingBuffer(name)
    for seq in range(count):
        n = (seq * 37 + ident * 11) % 3000
        payload = bytes([(seq + ident) & 0xFF]) * n
        head = HDR.pack(ident, seq, n, zlib.crc32(payload))
        if seq % 2:
            with ring.reserve(HDR.size + n) as buf:
                buf[: HDR.size] = head
                buf[HDR.size :] = payload
        else:
            ring.put(head + payload)
    ring.close()


def _consumer(name: str, out: "mp.Queue[List[Tuple[int, int]]]") -> None:
    ring = RingBuffer(name)
    got: List[Tuple[int, int]] = []
    k = 0
    while True:
        try:
            if k % 2:
                with ring.view(timeout=2) as msg:
                    m = bytes(msg)
            else:
                m = ring.get(timeout=2)
        except (Empty, ShutDown):
            break
        k += 1
        ident, seq, n, crc = HDR.unpack_from(m)
        assert len(m) == HDR.size + n and zlib.crc32(m[HDR.size :]) == crc, "torn message"
        got.append((ident, seq))
    out.put(got)
    ring.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_leases_and_copies_mixed_across_processes(shm_name: Callable[[], str], method: str) -> None:
    """Three producers (reserve and put) and three consumers (view and get): every message once, whole, in per-producer order."""
    ctx = mp.get_context(method)
    count = 400
    with RingBuffer(shm_name(), create=True, capacity=1 << 14) as ring:
        out: "mp.Queue[List[Tuple[int, int]]]" = ctx.Queue()
        cons = [ctx.Process(target=_consumer, args=(ring.name, out)) for _ in range(3)]
        prods = [ctx.Process(target=_producer, args=(ring.name, i, count)) for i in range(3)]
        for p in cons + prods:
            p.start()
        for p in prods:
            p.join(60)
            assert p.exitcode == 0
        ring.shutdown()
        streams = [out.get(timeout=60) for _ in cons]
        for p in cons:
            p.join(30)
            assert p.exitcode == 0
    seen = set()
    for stream in streams:
        last = {}
        for ident, seq in stream:
            assert seq > last.get(ident, -1)
            last[ident] = seq
            assert (ident, seq) not in seen
            seen.add((ident, seq))
    assert seen == {(i, s) for i in range(3) for s in range(count)}


LEASE_WORKER = r"""
import os, signal, sys
from pyipc import RingBuffer
ring = RingBuffer(sys.argv[1])
if sys.argv[2] == "reserve":
    with ring.reserve(5000) as buf:
        buf[:4] = b"torn"
        os.write(1, b"in\n")
        signal.pause()
else:
    with ring.view() as msg:
        os.write(1, b"in\n")
        signal.pause()
"""


@contextlib.contextmanager
def _lease_holder_then_sigkill(ring: RingBuffer, kind: str) -> Iterator[None]:
    """A process inside a ``kind`` ("reserve" or "view") block on ``ring``
    while the body runs, SIGKILLed (and reaped) when it ends."""
    proc = subprocess.Popen([sys.executable, "-c", LEASE_WORKER, ring.name, kind], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"in\n"
        yield
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["reserve", "view"])
def test_killed_inside_a_lease(shm_name: Callable[[], str], kind: str) -> None:
    """A process SIGKILLed inside a reserve or view block: nothing torn appears, the others go on, the space comes back."""
    with RingBuffer(shm_name(), create=True, capacity=1 << 14) as ring:
        if kind == "view":
            ring.put_nowait(b"lost" * 2000)
        with _lease_holder_then_sigkill(ring, kind):
            assert ring.info()["reserves" if kind == "reserve" else "views"] == 1
        ring.put(b"after", timeout=5)
        assert ring.get(timeout=5) == b"after"
        with pytest.raises(Empty):
            ring.get_nowait()
        # All the space is back: the largest message fits.
        ring.put(bytes(ring.max_message_size), timeout=5)
        info = ring.info()
        assert info["reserves"] == 0 and info["views"] == 0
        assert ring.check() == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["reserve", "view"])
def test_non_blocking_calls_end_a_dead_holders_lease(shm_name: Callable[[], str], kind: str) -> None:
    """A lease whose holder was SIGKILLed ends at the first non-blocking call it is in the way
    of, as a dead holder's lock is taken over: get_nowait gets the messages put after a dead
    reservation, put_nowait gets the space a dead view held.  Else a caller that only polls
    would wait behind it for good."""
    with RingBuffer(shm_name(), create=True, capacity=1 << 14) as ring:
        if kind == "view":
            ring.put_nowait(b"lost" * 2000)
        with _lease_holder_then_sigkill(ring, kind):
            if kind == "reserve":
                ring.put_nowait(b"after")  # committed, but behind the reservation
                assert ring.check() == 0  # not yet takeable
        if kind == "reserve":
            assert ring.get_nowait() == b"after"
        else:
            ring.put_nowait(bytes(ring.max_message_size))  # needs the space the view held
        info = ring.info()
        assert info["reserves"] == 0 and info["views"] == 0


@pytest.mark.timeout(30)
def test_too_many_open_leases_is_an_error(shm_name: Callable[[], str]) -> None:
    """More leases open at once than the table holds raises IPCError, and the ring stays sound."""
    from pyipc._core import lib

    with RingBuffer(shm_name(), create=True) as ring:
        blocks = [ring.reserve(8) for _ in range(lib.PYIPC_MAX_LEASES)]
        views = [b.__enter__() for b in blocks]
        with pytest.raises(IPCError, match="leases open"):
            with ring.reserve(8):
                pass
        for b, v in zip(blocks, views):
            v[:] = b"12345678"
            b.__exit__(None, None, None)
        assert ring.check() == lib.PYIPC_MAX_LEASES
