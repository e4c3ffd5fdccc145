"""Messages larger than a ring, in pieces (pyipc/rpc/fragments.py): the
receiver's reassembly from pieces taken by several threads in any order, its
handling of pieces that do not add up, and a sender stopped half-way."""
from __future__ import annotations

import asyncio
import os
import random
import threading
from typing import Callable, List, Optional

import pytest

from pyipc import Empty, RingBuffer
from pyipc.rpc.fragments import ABORT, FRAGMENT, HEADER, Reassembler, abort_message, chunk_size, fragments
from pyipc.rpc.local import put_fragments, put_fragments_async


def _joined(msg_id: int, data: bytes, limit: int) -> List[bytes]:
    return [b"".join((head, bytes(piece))) for head, piece in fragments(msg_id, data, limit)]


def test_pieces_fit_the_ring_two_at_a_time_with_an_abort_behind(shm_name: Callable[[], str]) -> None:
    """Every piece is at most the ring's largest message; two pieces and an ABORT fit at once."""
    with RingBuffer(shm_name(), create=True, capacity=1 << 16) as ring:
        pieces = _joined(1, os.urandom(5 * ring.max_message_size), ring.max_message_size)
        assert all(len(p) <= ring.max_message_size for p in pieces)
        ring.put_nowait(pieces[0])
        ring.put_nowait(pieces[1])
        ring.put_nowait(abort_message(1))
        assert chunk_size(ring.max_message_size) * len(pieces) >= 5 * ring.max_message_size


def test_reassembled_from_threads_in_any_order(rng: random.Random) -> None:
    """Pieces of several messages, interleaved, fed by four threads in shuffled order, give
    each message back whole, exactly once, to the thread that placed its last piece."""
    msgs = {i: os.urandom(rng.randrange(1, 300_000)) for i in range(1, 9)}
    pieces = [p for i, m in msgs.items() for p in _joined(i, m, 20_000)]
    rng.shuffle(pieces)
    r = Reassembler(20_000)
    out: List[bytes] = []
    lock = threading.Lock()

    def feed(part: List[bytes]) -> None:
        for p in part:
            whole = r.feed(p, len(p))
            if whole is not None:
                with lock:
                    out.append(bytes(whole))

    threads = [threading.Thread(target=feed, args=(pieces[k::4],)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(out) == sorted(msgs.values())
    assert len(r) == 0


LIMIT = 1000  # a ring's largest message, for the tests below
CHUNK = chunk_size(LIMIT)


def _piece(msg_id: int, total: int, off: int, size: int, kind: int = FRAGMENT) -> bytes:
    return HEADER.pack(kind, 0, msg_id, total, off) + b"p" * size


@pytest.mark.parametrize(
    "bad",
    [
        _piece(7, 3 * CHUNK, 3 * CHUNK, CHUNK),  # past the end
        _piece(7, 3 * CHUNK, CHUNK // 2, CHUNK),  # not where a piece starts
        _piece(7, 3 * CHUNK, CHUNK, CHUNK - 1),  # too short
        _piece(7, 5 * CHUNK, CHUNK, CHUNK),  # the total changed
        _piece(7, 3 * CHUNK, 0, CHUNK),  # the first piece again
        abort_message(7),
        _piece(7, 3 * CHUNK, CHUNK, CHUNK, kind=0xF9),  # an unknown kind
    ],
)
def test_pieces_that_do_not_add_up_drop_the_message(bad: bytes) -> None:
    """A piece outside its message, not where a piece starts, of the wrong length, with
    another total or twice, an abort or an unknown kind drops what was gathered for that id,
    without an exception; later pieces of it are ignored; other messages are untouched."""
    r = Reassembler(LIMIT)
    first = _piece(7, 3 * CHUNK, 0, CHUNK)
    other = _piece(8, CHUNK + 10, 0, CHUNK)
    assert r.feed(first, len(first)) is None and r.feed(other, len(other)) is None
    assert len(r) == 2
    assert r.feed(bad, len(bad)) is None
    assert len(r) == 1
    for off in (CHUNK, 2 * CHUNK):  # the rest of message 7 comes late: ignored
        late = _piece(7, 3 * CHUNK, off, CHUNK)
        assert r.feed(late, len(late)) is None
    assert len(r) == 1
    rest = _piece(8, CHUNK + 10, CHUNK, 10)
    assert r.feed(rest, len(rest)) == b"p" * (CHUNK + 10)
    assert len(r) == 0
    again = _piece(8, CHUNK + 10, CHUNK, 10)  # a piece of an ended message
    assert r.feed(again, len(again)) is None and len(r) == 0


def test_short_and_unallocatable_pieces_are_ignored() -> None:
    """A message shorter than a header, or a total too large to allocate, is ignored."""
    r = Reassembler(LIMIT)
    assert r.feed(b"\xf0" * 10, 10) is None
    huge = _piece(1, 1 << 62, 0, CHUNK)
    assert r.feed(huge, len(huge)) is None
    assert len(r) == 0


@pytest.mark.timeout(60)
def test_put_fragments_through_a_ring_to_a_reader(shm_name: Callable[[], str]) -> None:
    """put_fragments waits for room while a reader drains, and the reader rebuilds the message."""
    data = os.urandom(1 << 20)
    with RingBuffer(shm_name(), create=True, capacity=1 << 16) as ring:
        got: List[Optional[bytearray]] = []

        def reader() -> None:
            r = Reassembler(ring.max_message_size)
            while True:
                m = ring.get(timeout=20)
                whole = r.feed(m, len(m))
                if whole is not None:
                    got.append(whole)
                    return

        t = threading.Thread(target=reader)
        t.start()
        put_fragments(ring, 3, data)
        t.join(30)
        assert got == [data]


@pytest.mark.timeout(60)
def test_cancelled_async_sender_aborts_the_message(shm_name: Callable[[], str]) -> None:
    """A put_fragments_async cancelled while it waits for room sends ABORT: the receiver drops
    the pieces it had."""
    with RingBuffer(shm_name(), create=True, capacity=1 << 16) as ring:

        async def main() -> None:
            task = asyncio.ensure_future(put_fragments_async(ring, 5, os.urandom(4 * ring.max_message_size)))
            while ring.qsize() < 2:
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.05)
            assert not task.done()  # waiting for room for the third piece
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        r = Reassembler(ring.max_message_size)
        kinds = []
        while True:
            try:
                m = ring.get_nowait()
            except Empty:
                break
            kinds.append(m[0])
            assert r.feed(m, len(m)) is None
        assert kinds == [FRAGMENT, FRAGMENT, ABORT]
        assert len(r) == 0


@pytest.mark.timeout(60)
def test_interrupted_sender_aborts_the_message(shm_name: Callable[[], str]) -> None:
    """put_fragments interrupted (KeyboardInterrupt) while it waits for room sends ABORT."""
    import _thread
    import time

    with RingBuffer(shm_name(), create=True, capacity=1 << 16) as ring:

        def interrupt() -> None:
            while ring.qsize() < 2:
                time.sleep(0.001)
            time.sleep(0.05)
            _thread.interrupt_main()

        t = threading.Thread(target=interrupt)
        t.start()
        with pytest.raises(KeyboardInterrupt):
            put_fragments(ring, 9, os.urandom(4 * ring.max_message_size))
        t.join(10)
        kinds = [m[0] for m in ring.get_many(10, block=False)]
        assert kinds == [FRAGMENT, FRAGMENT, ABORT]
