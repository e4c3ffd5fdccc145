"""The Channel protocol, proved on every transport: boundaries, sizes,
timeouts, closing, selectors, asyncio and random message sequences."""
from __future__ import annotations

import array
import asyncio
import os
import selectors
import threading
import time
from typing import Any, List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pyipc
from chan_helpers import ALL, PACKETS, STREAMS, Made, made, make_pair, max_size  # noqa: F401

SIZES = [0, 1, 7, 8, 9, 63, 64, 4095, 4096, 8192, 65535, 65536, 100_000, 1 << 20, 16 << 20]


def _pump(sender: Any, msgs: List[bytes]) -> threading.Thread:
    t = threading.Thread(target=lambda: [sender.send(m, timeout=30) for m in msgs])
    t.start()
    return t


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ALL)
def test_sizes_keep_boundaries(kind: str, made: Made) -> None:
    """Messages from 0 B to 16 MiB (as far as the transport takes) arrive
    whole, in order, one recv per send."""
    tx, rx = make_pair(kind, made)
    msgs = [os.urandom(s) for s in SIZES if s <= max_size(kind)]
    t = _pump(tx, msgs)
    got = [rx.recv(timeout=30) for _ in msgs]
    t.join()
    assert [len(g) for g in got] == [len(m) for m in msgs]
    assert got == msgs


@pytest.mark.parametrize("kind", ALL)
def test_bytes_like_inputs(kind: str, made: Made) -> None:
    """bytes, bytearray, memoryview and arrays are sent as their bytes."""
    tx, rx = make_pair(kind, made)
    arr = array.array("i", [1, 2, 3])
    for data in (b"ab", bytearray(b"cd"), memoryview(b"xyzef")[3:], arr):
        tx.send(data)
        assert rx.recv(timeout=5) == bytes(data)


@pytest.mark.parametrize("kind", ALL)
def test_not_bytes_like_is_type_error(kind: str, made: Made) -> None:
    """A str or an int is not a message."""
    tx, _ = make_pair(kind, made)
    with pytest.raises(TypeError):
        tx.send("text")
    with pytest.raises(TypeError):
        tx.send(5)


@pytest.mark.parametrize("kind", ALL)
def test_recv_into(kind: str, made: Made) -> None:
    """recv_into fills the buffer and returns the length; a buffer too small
    raises MessageTooLarge and keeps the message for the next receive."""
    tx, rx = make_pair(kind, made)
    tx.send(b"0123456789")
    small = bytearray(4)
    with pytest.raises(pyipc.MessageTooLarge):
        rx.recv_into(small, timeout=5)
    with pytest.raises(ValueError):  # MessageTooLarge is a ValueError
        rx.recv_into(small, timeout=5)
    buf = bytearray(16)
    assert rx.recv_into(buf, timeout=5) == 10
    assert buf[:10] == b"0123456789"
    tx.send(b"")
    assert rx.recv_into(bytearray(0), timeout=5) == 0
    with pytest.raises(TypeError):
        rx.recv_into(b"read-only", timeout=5)


@pytest.mark.parametrize("kind", ALL)
def test_timeouts(kind: str, made: Made) -> None:
    """recv with nothing to receive: timeout=0 and a short timeout raise
    TimeoutError; a negative timeout is a ValueError."""
    tx, rx = make_pair(kind, made)
    with pytest.raises(TimeoutError):
        rx.recv(timeout=0)
    with pytest.raises(TimeoutError):
        rx.recv(timeout=0.05)
    with pytest.raises(ValueError):
        rx.recv(timeout=-1)
    with pytest.raises(ValueError):
        tx.send(b"x", timeout=-1)
    # The channel is still usable after a timeout with nothing half-read.
    tx.send(b"after")
    assert rx.recv(timeout=5) == b"after"


@pytest.mark.parametrize("kind", ["pipe", "stream", "seqpacket", "dgram", "mq"])
def test_send_timeout_when_full(kind: str, made: Made) -> None:
    """A sender facing a full channel gets TimeoutError for timeout=0 and
    for a short timeout."""
    tx, rx = make_pair(kind, made)
    small = b"x" * 512
    with pytest.raises(TimeoutError):
        for _ in range(1_000_000):
            tx.send(small, timeout=0)
    with pytest.raises(TimeoutError):
        tx.send(small, timeout=0.05)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["pipe", "stream"])
def test_stream_timeout_mid_message_closes(kind: str, made: Made) -> None:
    """A timeout after part of a large message went into the stream closes
    the sender, and the receiver then sees EOFError, never garbage."""
    tx, rx = make_pair(kind, made)
    with pytest.raises(TimeoutError):
        tx.send(b"y" * (8 << 20), timeout=0.1)
    assert tx.closed
    with pytest.raises(EOFError):
        rx.recv(timeout=5)


@pytest.mark.parametrize("kind", ALL)
def test_closed_handle(kind: str, made: Made) -> None:
    """Every operation on a closed handle raises ValueError; close is
    idempotent; the context manager closes."""
    tx, rx = make_pair(kind, made)
    with rx:
        assert not rx.closed
    assert rx.closed
    rx.close()
    for call in (lambda: rx.recv(timeout=0), lambda: rx.recv_into(bytearray(4)),
                 rx.fileno, lambda: rx.send(b"x")):
        with pytest.raises(ValueError):
            call()
    tx.close()
    with pytest.raises(ValueError):
        tx.send(b"x")


@pytest.mark.parametrize("kind", ["pipe", "duplex", "stream", "seqpacket", "listener"])
def test_eof_after_everything_received(kind: str, made: Made) -> None:
    """After the peer closes, what it sent is still received, then EOFError
    (every time)."""
    tx, rx = make_pair(kind, made)
    tx.send(b"one")
    tx.send(b"")
    tx.close()
    assert rx.recv(timeout=5) == b"one"
    assert rx.recv(timeout=5) == b""
    with pytest.raises(EOFError):
        rx.recv(timeout=5)
    with pytest.raises(EOFError):
        rx.recv(timeout=0)


def test_dgram_never_eof(made: Made) -> None:
    """A datagram channel whose peer closed does not raise EOFError: it just
    has nothing more (TimeoutError); an empty datagram is a message."""
    tx, rx = make_pair("dgram", made)
    tx.send(b"")
    tx.close()
    assert rx.recv(timeout=5) == b""
    with pytest.raises(TimeoutError):
        rx.recv(timeout=0.05)


@pytest.mark.parametrize("kind", ["pipe", "duplex", "stream", "seqpacket", "dgram", "listener"])
def test_broken_pipe(kind: str, made: Made) -> None:
    """Sending to a channel whose receiver is gone raises BrokenPipeError
    (and the process is not killed by SIGPIPE)."""
    tx, rx = make_pair(kind, made)
    rx.close()
    with pytest.raises(BrokenPipeError):
        tx.send(b"x", timeout=5)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ALL)
def test_selectors(kind: str, made: Made) -> None:
    """fileno() works with selectors: readable exactly while a message
    waits, once per message even when several were sent at once."""
    tx, rx = make_pair(kind, made)
    with selectors.DefaultSelector() as sel:
        sel.register(rx, selectors.EVENT_READ)
        assert sel.select(timeout=0) == []
        for i in range(3):
            tx.send(b"m%d" % i)
        for i in range(3):
            assert sel.select(timeout=5), f"not readable before message {i}"
            assert rx.recv(timeout=0) == b"m%d" % i
        assert sel.select(timeout=0) == []


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ALL)
def test_asyncio_round_trip(kind: str, made: Made) -> None:
    """send_async/recv_async move messages through the event loop, and a
    plain loop.add_reader on fileno() fires when a message arrives."""
    tx, rx = make_pair(kind, made)
    msgs = [os.urandom(s) for s in (0, 10, 5000, 8192)]

    async def main() -> List[bytes]:
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        loop.add_reader(rx.fileno(), ready.set)
        try:
            send_task = asyncio.ensure_future(asyncio.gather(*[tx.send_async(m) for m in msgs[:1]]))
            await asyncio.wait_for(ready.wait(), 5)
            await send_task
        finally:
            loop.remove_reader(rx.fileno())
        got = [await asyncio.wait_for(rx.recv_async(), 5)]

        async def produce() -> None:
            for m in msgs[1:]:
                await tx.send_async(m)

        task = asyncio.ensure_future(produce())
        for _ in msgs[1:]:
            got.append(await asyncio.wait_for(rx.recv_async(), 5))
        await task
        return got

    assert asyncio.run(main()) == msgs


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["pipe", "stream"])
def test_asyncio_large_messages(kind: str, made: Made) -> None:
    """send_async of messages far larger than the kernel buffer completes
    while recv_async takes them, without blocking the loop."""
    tx, rx = make_pair(kind, made)
    msgs = [os.urandom(3 << 20), os.urandom(100_000)]

    async def main() -> List[bytes]:
        async def produce() -> None:
            for m in msgs:
                await tx.send_async(m)

        task = asyncio.ensure_future(produce())
        got = [await asyncio.wait_for(rx.recv_async(), 30) for _ in msgs]
        await task
        return got

    assert asyncio.run(main()) == msgs


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["pipe", "stream", "seqpacket", "mq"])
def test_close_while_blocked(kind: str, made: Made) -> None:
    """close() while another thread is blocked in recv on the same handle
    does not crash: that recv raises ValueError soon after."""
    tx, rx = make_pair(kind, made)
    errors: List[BaseException] = []

    def blocked() -> None:
        try:
            rx.recv(timeout=20)
        except BaseException as e:  # noqa: BLE001 - recorded for the assert
            errors.append(e)

    t = threading.Thread(target=blocked)
    t.start()
    time.sleep(0.2)
    rx.close()
    t.join(10)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ValueError)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["pipe", "stream", "seqpacket", "dgram", "mq"])
def test_threads_share_a_handle(kind: str, made: Made) -> None:
    """Several threads sending and several receiving on the same handles:
    every message arrives whole and exactly once."""
    tx, rx = make_pair(kind, made)
    per, senders = 300, 3
    sizes = [0, 5, 3000, 70_000] if kind in ("pipe", "stream") else [0, 5, 3000]
    got: List[bytes] = []
    lock = threading.Lock()

    def send(k: int) -> None:
        for i in range(per):
            tx.send(b"%d:%d:" % (k, i) + b"z" * sizes[i % len(sizes)], timeout=30)

    def recv() -> None:
        while True:
            try:
                m = rx.recv(timeout=2)
            except TimeoutError:
                return
            with lock:
                got.append(m)

    ts = [threading.Thread(target=send, args=(k,)) for k in range(senders)]
    ts += [threading.Thread(target=recv) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    heads = sorted(m.split(b":")[0] + b":" + m.split(b":")[1] for m in got)
    want = sorted(b"%d:%d" % (k, i) for k in range(senders) for i in range(per))
    assert heads == want
    for m in got:
        k, i, rest = m.split(b":", 2)
        assert rest == b"z" * sizes[int(i) % len(sizes)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["pipe", "stream", "seqpacket", "dgram", "mq"])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_random_sequences(kind: str, data: st.DataObject) -> None:
    """Random sequences of random-sized messages, sent and received in
    random interleavings, come out exactly as a FIFO model says."""
    made = Made()  # per example: each one removes its own queue
    tx, rx = make_pair(kind, made)
    limit = 2000 if kind == "mq" else 70_000
    model: List[bytes] = []
    try:
        for _ in range(data.draw(st.integers(1, 30))):
            if data.draw(st.booleans()) and len(model) < 8:
                m = data.draw(st.binary(max_size=64)) * data.draw(st.integers(0, limit // 64))
                tx.send(m, timeout=5)
                model.append(m)
            elif model:
                assert rx.recv(timeout=5) == model.pop(0)
            else:
                with pytest.raises(TimeoutError):
                    rx.recv(timeout=0)
        while model:
            assert rx.recv(timeout=5) == model.pop(0)
    finally:
        made.cleanup()


def test_channel_protocol() -> None:
    """Every channel class satisfies the Channel protocol."""
    r, w = pyipc.pipe()
    a, b = pyipc.socketpair()
    try:
        for ch in (r, w, a, b):
            assert isinstance(ch, pyipc.Channel)
    finally:
        for ch in (r, w, a, b):
            ch.close()


def test_wrong_direction() -> None:
    """The receive-only end of a pipe cannot send, and the reverse."""
    r, w = pyipc.pipe()
    with r, w:
        with pytest.raises(ValueError):
            r.send(b"x")
        with pytest.raises(ValueError):
            w.recv(timeout=0)
        with pytest.raises(ValueError):
            w.recv_into(bytearray(4))


def _wait_stopped(pid: int) -> bool:
    """Wait until every thread of process ``pid`` is stopped (kill() returns
    before they are)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        states = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
            except FileNotFoundError:
                pass
        if all(s in ("T", "t") for s in states):
            return True
        time.sleep(0.001)
    return False


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["pipe", "duplex", "stream", "seqpacket", "dgram"])
def test_fork_while_a_thread_is_blocked(kind: str, made: Made) -> None:
    """A child forked while a parent thread is blocked in recv on a channel
    receives on it with a timeout and without, and closes it; the parent's
    thread goes on."""
    import signal
    import warnings

    tx, rx = make_pair(kind, made)
    got: List[bytes] = []
    t = threading.Thread(target=lambda: got.append(rx.recv(timeout=30)))
    t.start()
    time.sleep(0.05)  # let it block (if not yet, fork comes first: also fine)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
        pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            # Stop the parent, whose thread shares the descriptor and would
            # take the child's messages.
            os.kill(os.getppid(), signal.SIGSTOP)
            if _wait_stopped(os.getppid()):
                tx.send(b"child", timeout=5)
                ok = rx.recv(timeout=5) == b"child"
                tx.send(b"again", timeout=5)
                ok = ok and rx.recv() == b"again"
                rx.close()
                code = 0 if ok and rx.closed else 2
        finally:
            os.kill(os.getppid(), signal.SIGCONT)
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    tx.send(b"parent")
    t.join(30)
    assert got == [b"parent"]
