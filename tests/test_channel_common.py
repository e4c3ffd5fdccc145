"""The Channel protocol, proved on every transport: boundaries, sizes,
timeouts, closing, selectors, asyncio and random message sequences."""
from __future__ import annotations

import array
import asyncio
import os
import random
import selectors
import threading
import time
from typing import Any, List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyipc
from pyipc._core import lib

# The kinds of (sender, receiver) pairs the `channels` fixture makes.
STREAMS = ["pipe", "duplex", "stream"]
PACKETS = ["seqpacket", "dgram"]
ALL = STREAMS + PACKETS + ["mq", "listener"]

SIZES = [0, 1, 7, 8, 9, 63, 64, 4095, 4096, 8192, 65535, 65536, 100_000, 1 << 20, 16 << 20]


def _pump(sender: Any, msgs: List[bytes]) -> threading.Thread:
    t = threading.Thread(target=lambda: [sender.send(m, timeout=30) for m in msgs])
    t.start()
    return t


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ALL)
def test_sizes_keep_boundaries(kind: str, channels: Any, rng: random.Random) -> None:
    """Messages from 0 B to 16 MiB (as far as the transport takes) arrive
    whole, in order, one recv per send."""
    tx, rx = channels.pair(kind)
    msgs = [rng.randbytes(s) for s in SIZES if s <= channels.max_size(kind)]
    t = _pump(tx, msgs)
    got = [rx.recv(timeout=30) for _ in msgs]
    t.join()
    assert [len(g) for g in got] == [len(m) for m in msgs]
    assert got == msgs


@pytest.mark.parametrize("kind", ALL)
def test_bytes_like_inputs(kind: str, channels: Any) -> None:
    """bytes, bytearray, memoryview and arrays are sent as their bytes."""
    tx, rx = channels.pair(kind)
    arr = array.array("i", [1, 2, 3])
    for data in (b"ab", bytearray(b"cd"), memoryview(b"xyzef")[3:], arr):
        tx.send(data)
        assert rx.recv(timeout=5) == bytes(data)


@pytest.mark.parametrize("kind", ALL)
def test_not_bytes_like_is_type_error(kind: str, channels: Any) -> None:
    """A str or an int is not a message."""
    tx, _ = channels.pair(kind)
    with pytest.raises(TypeError):
        tx.send("text")
    with pytest.raises(TypeError):
        tx.send(5)


@pytest.mark.parametrize("kind", ALL)
def test_recv_into(kind: str, channels: Any) -> None:
    """recv_into fills the buffer and returns the length; a buffer too small
    raises MessageTooLarge and keeps the message for the next receive."""
    tx, rx = channels.pair(kind)
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
def test_timeouts(kind: str, channels: Any) -> None:
    """recv with nothing to receive: timeout=0 and a short timeout raise
    TimeoutError; a negative timeout is a ValueError."""
    tx, rx = channels.pair(kind)
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
def test_send_timeout_when_full(kind: str, channels: Any) -> None:
    """A sender facing a full channel gets TimeoutError for timeout=0 and
    for a short timeout."""
    tx, rx = channels.pair(kind)
    small = b"x" * 512
    with pytest.raises(TimeoutError):
        for _ in range(1_000_000):
            tx.send(small, timeout=0)
    with pytest.raises(TimeoutError):
        tx.send(small, timeout=0.05)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["pipe", "stream"])
def test_stream_timeout_mid_message_closes(kind: str, channels: Any) -> None:
    """A timeout after part of a large message went into the stream closes
    the sender, and the receiver then sees EOFError, never garbage."""
    tx, rx = channels.pair(kind)
    with pytest.raises(TimeoutError):
        tx.send(b"y" * (8 << 20), timeout=0.1)
    assert tx.closed
    with pytest.raises(EOFError):
        rx.recv(timeout=5)


@pytest.mark.parametrize("kind", ALL)
def test_closed_handle(kind: str, channels: Any) -> None:
    """Every operation on a closed handle raises ValueError; close is
    idempotent; the context manager closes."""
    tx, rx = channels.pair(kind)
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
def test_eof_after_everything_received(kind: str, channels: Any) -> None:
    """After the peer closes, what it sent is still received, then EOFError
    (every time)."""
    tx, rx = channels.pair(kind)
    tx.send(b"one")
    tx.send(b"")
    tx.close()
    assert rx.recv(timeout=5) == b"one"
    assert rx.recv(timeout=5) == b""
    with pytest.raises(EOFError):
        rx.recv(timeout=5)
    with pytest.raises(EOFError):
        rx.recv(timeout=0)


def test_dgram_never_eof(channels: Any) -> None:
    """A datagram channel whose peer closed does not raise EOFError: it just
    has nothing more (TimeoutError); an empty datagram is a message."""
    tx, rx = channels.pair("dgram")
    tx.send(b"")
    tx.close()
    assert rx.recv(timeout=5) == b""
    with pytest.raises(TimeoutError):
        rx.recv(timeout=0.05)


@pytest.mark.parametrize("kind", ["pipe", "duplex", "stream", "seqpacket", "dgram", "listener"])
def test_broken_pipe(kind: str, channels: Any) -> None:
    """Sending to a channel whose receiver is gone raises BrokenPipeError
    (and the process is not killed by SIGPIPE)."""
    tx, rx = channels.pair(kind)
    rx.close()
    with pytest.raises(BrokenPipeError):
        tx.send(b"x", timeout=5)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ALL)
def test_selectors(kind: str, channels: Any) -> None:
    """fileno() works with selectors: readable exactly while a message
    waits, once per message even when several were sent at once."""
    tx, rx = channels.pair(kind)
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
def test_asyncio_round_trip(kind: str, channels: Any, rng: random.Random) -> None:
    """send_async/recv_async move messages through the event loop, and a
    plain loop.add_reader on fileno() fires when a message arrives."""
    tx, rx = channels.pair(kind)
    msgs = [rng.randbytes(s) for s in (0, 10, 5000, 8192)]

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
def test_asyncio_large_messages(kind: str, channels: Any, rng: random.Random) -> None:
    """send_async of messages far larger than the kernel buffer completes
    while recv_async takes them, without blocking the loop."""
    tx, rx = channels.pair(kind)
    msgs = [rng.randbytes(3 << 20), rng.randbytes(100_000)]

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
def test_close_while_blocked(kind: str, channels: Any, wait_until: Any) -> None:
    """close() while another thread is blocked in recv on the same handle
    does not crash: that recv raises ValueError soon after."""
    tx, rx = channels.pair(kind)
    errors: List[BaseException] = []

    def blocked() -> None:
        try:
            rx.recv(timeout=20)
        except BaseException as e:  # noqa: BLE001 - recorded for the assert
            errors.append(e)

    t = threading.Thread(target=blocked)
    t.start()
    h = rx._h
    wait_until(lambda: lib.pyipc_chan_calls(h) > 0)  # it is inside recv
    rx.close()
    t.join(10)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ValueError)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["pipe", "stream", "seqpacket", "dgram", "mq"])
def test_threads_share_a_handle(kind: str, channels: Any) -> None:
    """Several threads sending and several receiving on the same handles:
    every message arrives whole and exactly once."""
    tx, rx = channels.pair(kind)
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
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # a factory
@given(data=st.data())
def test_random_sequences(kind: str, new_channels: Any, data: st.DataObject) -> None:
    """Random sequences of random-sized messages, sent and received in
    random interleavings, come out exactly as a FIFO model says."""
    with new_channels() as channels:  # per example: each removes its own queue
        tx, rx = channels.pair(kind)
        limit = 2000 if kind == "mq" else 70_000
        model: List[bytes] = []
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
def test_fork_while_a_thread_is_blocked(kind: str, channels: Any, wait_until: Any) -> None:
    """A child forked while a parent thread is blocked in recv on a channel
    receives on it with a timeout and without, and closes it; the parent's
    thread goes on."""
    import signal
    import warnings

    tx, rx = channels.pair(kind)
    got: List[bytes] = []
    t = threading.Thread(target=lambda: got.append(rx.recv(timeout=30)))
    t.start()
    h = rx._h
    wait_until(lambda: lib.pyipc_chan_calls(h) > 0)  # it is inside recv
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


# ---- what fuzzing found: every bad input is a clear exception ----


@pytest.mark.parametrize("kind", ALL)
def test_non_contiguous_data_is_a_type_error(kind: str, channels: Any) -> None:
    """A non-contiguous view is not a message (TypeError), in send,
    send_many and recv_into, on every transport; the channel still works."""
    tx, rx = channels.pair(kind)
    strided = memoryview(b"abcdef")[::2]
    with pytest.raises(TypeError):
        tx.send(strided)
    with pytest.raises(TypeError):
        tx.send_many([b"ok", strided])
    with pytest.raises(TypeError):
        tx.send_many(["text"])
    with pytest.raises(TypeError):
        tx.send([b"a", b"b"])  # a list is not bytes-like either
    tx.send(b"ok")
    with pytest.raises(TypeError):
        rx.recv_into(memoryview(bytearray(16))[::2], timeout=5)
    assert rx.recv(timeout=5) == b"ok"


@pytest.mark.parametrize("kind", ALL)
@pytest.mark.parametrize("forever", [float("inf"), 1e300])
def test_infinite_timeouts_wait_for_ever(kind: str, forever: float, channels: Any) -> None:
    """timeout=inf (or one too long to be a deadline) is "wait for ever":
    send, recv and recv_many work with it, never OverflowError."""
    tx, rx = channels.pair(kind)
    tx.send(b"one", timeout=forever)
    tx.send_many([b"two", b"three"], timeout=forever)
    assert rx.recv(timeout=forever) == b"one"
    got = rx.recv_many(5, timeout=forever)
    while len(got) < 2:
        got += rx.recv_many(5, timeout=forever)
    assert got == [b"two", b"three"]


@pytest.mark.parametrize("kind", ["pipe", "seqpacket", "mq"])
def test_bad_timeouts_and_counts_are_value_errors(kind: str, channels: Any) -> None:
    """NaN and negative timeouts, and recv_many of fewer than one message,
    raise ValueError; a count that is not an int raises TypeError."""
    tx, rx = channels.pair(kind)
    for bad in (float("nan"), -1):
        with pytest.raises(ValueError):
            rx.recv(timeout=bad)
        with pytest.raises(ValueError):
            tx.send(b"x", timeout=bad)
    for count in (0, -1, -(2**70)):
        with pytest.raises(ValueError):
            rx.recv_many(count, timeout=0)
    with pytest.raises(TypeError):
        rx.recv_many(1.5, timeout=0)
    tx.send(b"x")
    assert rx.recv_many(10**100, timeout=5) == [b"x"]  # "up to", however many


# ---- send_many / recv_many ----


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ALL)
def test_batches_keep_order_and_boundaries(kind: str, channels: Any, rng: random.Random) -> None:
    """Batches of random sizes (empty ones too) sent with send_many come out
    whole and in order through recv_many and recv, mixed."""
    tx, rx = channels.pair(kind)
    limit = 8192 if kind == "mq" else 5000
    sent: List[bytes] = []
    got: List[bytes] = []
    for _ in range(40):
        batch = [rng.randbytes(rng.choice([0, 1, 64, rng.randrange(limit + 1)]))
                 for _ in range(rng.randrange(1, 9))]
        tx.send_many(batch, timeout=10)
        sent += batch
        while len(got) < len(sent):
            if rng.random() < 0.5:
                got.append(rx.recv(timeout=10))
            else:
                more = rx.recv_many(rng.randrange(1, 10), timeout=10)
                assert 1 <= len(more)
                got += more
    assert got == sent
    with pytest.raises(TimeoutError):
        rx.recv_many(4, timeout=0)


@pytest.mark.parametrize("kind", ALL)
def test_recv_many_returns_what_is_there_up_to_max(kind: str, channels: Any) -> None:
    """recv_many takes every message already there in one call, up to
    max_messages, and never waits for more."""
    tx, rx = channels.pair(kind)
    n = 9 if kind == "mq" else 40
    msgs = [b"m%d" % i for i in range(n)]
    tx.send_many(msgs)
    first = rx.recv_many(5, timeout=5)
    assert first == msgs[:5]
    rest = rx.recv_many(1000, timeout=5)
    assert rest == msgs[5:]
    with pytest.raises(TimeoutError):
        rx.recv_many(1000, timeout=0.05)


@pytest.mark.parametrize("kind", ALL)
def test_send_many_edge_cases(kind: str, channels: Any) -> None:
    """An empty batch sends nothing; any iterable of bytes-like objects (a
    generator, arrays) is a batch; a message larger than the receive buffer
    comes out of recv_many whole."""
    tx, rx = channels.pair(kind)
    tx.send_many([])
    with pytest.raises(TimeoutError):
        rx.recv(timeout=0)
    tx.send_many(m for m in (b"g1", bytearray(b"g2"), array.array("i", [7])))
    assert [rx.recv(timeout=5) for _ in range(3)] == [b"g1", b"g2", array.array("i", [7]).tobytes()]
    big = b"B" * (8192 if kind == "mq" else 100_000)
    t = threading.Thread(target=tx.send_many, args=([big, b"after"], 10))
    t.start()  # more than a pipe holds: it goes as it is read
    got = rx.recv_many(2, timeout=10)
    while len(got) < 2:
        got += rx.recv_many(2, timeout=10)
    t.join()
    assert got == [big, b"after"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["pipe", "stream", "seqpacket", "dgram", "mq"])
def test_send_many_timeout_says_how_many_went(kind: str, channels: Any) -> None:
    """A send_many stopped by its timeout raises TimeoutError whose `sent`
    counts the messages that went out whole; those are received, in order,
    and a stream stopped inside a message closes."""
    tx, rx = channels.pair(kind)
    msg = b"s" * 4000
    with pytest.raises(TimeoutError) as e:
        tx.send_many([msg] * 10_000, timeout=0.2)
    sent = e.value.sent  # type: ignore[attr-defined]
    assert 0 < sent < 10_000
    if tx.closed:  # a stream, stopped inside message number `sent`
        assert kind in ("pipe", "stream")
    for _ in range(sent):
        assert rx.recv(timeout=5) == msg
    if kind in ("pipe", "stream") and tx.closed:
        with pytest.raises(EOFError):
            rx.recv(timeout=5)
    else:
        with pytest.raises(TimeoutError):
            rx.recv(timeout=0.05)


@pytest.mark.parametrize("kind", ["pipe", "stream"])
def test_readiness_exact_after_batches(kind: str, channels: Any) -> None:
    """On streams, whatever mix of recv and recv_many took the messages, the
    descriptor is readable exactly while a message remains."""
    tx, rx = channels.pair(kind)
    with selectors.DefaultSelector() as sel:
        sel.register(rx, selectors.EVENT_READ)
        for round_ in range(30):
            n = 1 + round_ % 7
            tx.send_many([b"r" * (round_ * 37 % 300)] * n)
            left = n
            while left:
                assert sel.select(timeout=5), f"not readable with {left} left"
                left -= 1 if round_ % 2 else len(rx.recv_many(1 + round_ % 3, timeout=0))
                if round_ % 2:
                    rx.recv(timeout=0)
            assert sel.select(timeout=0) == []
            assert not rx.pending()
