"""MessageQueue: priorities, attributes, unlink, names, limits, permission
bits, descriptors, and traffic between processes."""
from __future__ import annotations

import os
import selectors
import stat
import subprocess
import sys
import textwrap
from typing import Any, Callable, List

import pytest

import pyipc
from pyipc._core import lib


@pytest.fixture
def qname(channels: Any) -> Callable[[], str]:
    """Make unique queue names; every one is unlinked after the test."""
    return channels.queue_name  # type: ignore[no-any-return]


def test_create_attach_attributes(qname: Callable[[], str]) -> None:
    """A created queue reports its geometry and current count; a second
    handle attached by name (leading '/' optional) shares the messages."""
    name = qname()
    with pyipc.MessageQueue(name, create=True, max_messages=5, max_message_size=100) as q:
        assert q.name == "/" + name
        assert (q.max_messages, q.max_message_size, q.qsize()) == (5, 100, 0)
        q.send(b"a")
        q.send(b"b")
        assert q.qsize() == 2 and q.current_messages == 2 and len(q) == 2
        with pyipc.MessageQueue("/" + name) as q2:
            assert q2.max_message_size == 100
            assert q2.recv(timeout=5) == b"a"
        assert q.qsize() == 1


def test_priorities(qname: Callable[[], str]) -> None:
    """recv returns the oldest message of the highest priority;
    recv_with_priority tells the priority."""
    with pyipc.MessageQueue(qname(), create=True) as q:
        q.send(b"low1", priority=1)
        q.send(b"high", priority=9)
        q.send(b"low2", priority=1)
        q.send(b"zero")
        assert q.recv_with_priority(timeout=5) == (b"high", 9)
        assert q.recv(timeout=5) == b"low1"
        assert q.recv_with_priority(timeout=5) == (b"low2", 1)
        assert q.recv_with_priority(timeout=5) == (b"zero", 0)
        with pytest.raises(ValueError):
            q.send(b"x", priority=1 << 20)


def test_too_large_and_full(qname: Callable[[], str]) -> None:
    """A message over max_message_size raises MessageTooLarge; a full queue
    makes send time out (timeout=0 and a short timeout)."""
    with pyipc.MessageQueue(qname(), create=True, max_messages=2, max_message_size=16) as q:
        with pytest.raises(pyipc.MessageTooLarge):
            q.send(b"x" * 17)
        q.send(b"x" * 16)
        q.send(b"")
        with pytest.raises(TimeoutError):
            q.send(b"y", timeout=0)
        with pytest.raises(TimeoutError):
            q.send(b"y", timeout=0.05)
        assert q.recv(timeout=0) == b"x" * 16
        assert q.recv(timeout=0) == b""


def test_recv_into_small_buffer_keeps_message(qname: Callable[[], str]) -> None:
    """recv_into with a buffer smaller than max_message_size works for a
    message that fits; one too small keeps the message (and its priority)
    for the next receive on this handle."""
    with pyipc.MessageQueue(qname(), create=True) as q:
        q.send(b"short")
        buf = bytearray(8)
        assert q.recv_into(buf, timeout=5) == 5 and buf[:5] == b"short"
        q.send(b"a longer message", priority=3)
        with pytest.raises(pyipc.MessageTooLarge):
            q.recv_into(buf, timeout=5)
        assert q.pending()
        assert q.qsize() == 1
        assert q.recv_with_priority(timeout=0) == (b"a longer message", 3)
        assert not q.pending()


def test_unlink(qname: Callable[[], str]) -> None:
    """unlink removes the name (attaching then fails), open handles keep
    working, and a second unlink raises FileNotFoundError."""
    name = qname()
    q = pyipc.MessageQueue(name, create=True)
    with q:
        q.unlink()
        with pytest.raises(FileNotFoundError):
            pyipc.MessageQueue(name)
        q.send(b"still")
        assert q.recv(timeout=5) == b"still"
        with pytest.raises(FileNotFoundError):
            q.unlink()


def test_exists_and_missing(qname: Callable[[], str]) -> None:
    """Creating an existing name is FileExistsError; attaching to a missing
    one FileNotFoundError."""
    name = qname()
    with pyipc.MessageQueue(name, create=True):
        with pytest.raises(FileExistsError):
            pyipc.MessageQueue(name, create=True)
    with pytest.raises(FileNotFoundError):
        pyipc.MessageQueue(qname())


@pytest.mark.parametrize("bad", ["", "/", "a/b", "x" * 255, "a\0b", ".."])
def test_name_validation(bad: str) -> None:
    """Bad names raise ValueError before any system call."""
    with pytest.raises(ValueError):
        pyipc.MessageQueue(bad, create=True)


def test_bad_geometry() -> None:
    """Non-positive sizes raise ValueError before any system call."""
    with pytest.raises(ValueError):
        pyipc.MessageQueue("pyipc-never", create=True, max_messages=0)
    with pytest.raises(ValueError):
        pyipc.MessageQueue("pyipc-never", create=True, max_message_size=0)


def test_system_limit_named(qname: Callable[[], str]) -> None:
    """Going over the system's queue limits raises an error that names the
    /proc/sys/fs/mqueue file to change."""
    with pytest.raises((ValueError, OSError)) as e:
        pyipc.MessageQueue(qname(), create=True, max_messages=1 << 20)
    assert "/proc/sys/fs/mqueue/msg_max" in str(e.value)
    with pytest.raises((ValueError, OSError)) as e:
        pyipc.MessageQueue(qname(), create=True, max_message_size=1 << 30)
    assert "/proc/sys/fs/mqueue/" in str(e.value)


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o666])
def test_mode_exact_whatever_umask(qname: Callable[[], str], mode: int) -> None:
    """The queue's permission bits are exactly `mode` (checked through the
    queue descriptor) under a umask that would remove some."""
    old = os.umask(0o077)
    try:
        with pyipc.MessageQueue(qname(), create=True, mode=mode) as q:
            assert stat.S_IMODE(os.fstat(q.fileno()).st_mode) == mode
    finally:
        os.umask(old)


@pytest.mark.timeout(60)
def test_between_unrelated_processes(qname: Callable[[], str]) -> None:
    """Another Python process attaches by name and answers each message
    with its priority plus one."""
    name = qname()
    with pyipc.MessageQueue(name, create=True) as q:
        reply_name = qname()
        with pyipc.MessageQueue(reply_name, create=True) as replies:
            child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
                import pyipc
                q = pyipc.MessageQueue({name!r})
                out = pyipc.MessageQueue({reply_name!r})
                for _ in range(20):
                    m, p = q.recv_with_priority(timeout=20)
                    out.send(m, priority=p + 1, timeout=20)
            """)])
            try:
                for i in range(20):
                    q.send(b"m%d" % i, priority=i % 3, timeout=20)
                    assert replies.recv_with_priority(timeout=20) == (b"m%d" % i, i % 3 + 1)
                assert child.wait(20) == 0
            finally:
                child.kill()
                child.wait()


@pytest.mark.timeout(60)
def test_across_fork(qname: Callable[[], str]) -> None:
    """A forked child keeps using the parent's handle."""
    with pyipc.MessageQueue(qname(), create=True, max_message_size=8192) as q:
        msgs = [os.urandom(n) for n in (0, 1, 8192, 100)] * 10
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 0
            try:
                for m in msgs:
                    q.send(m, timeout=20)
            except BaseException:
                code = 1
            os._exit(code)
        try:
            assert [q.recv(timeout=20) for _ in msgs] == msgs
        finally:
            _, status = os.waitpid(pid, 0)
        assert status == 0


# ---- what fuzzing found: every bad input is a clear exception ----


def test_mode_is_exact_or_refused(qname: Callable[[], str]) -> None:
    """mode is 0 to 0o7777 (applied exactly); more, negative or not an int
    is refused before the queue is made."""
    for bad in (0o10000, -1, 2**64):
        name = qname()
        with pytest.raises(ValueError):
            pyipc.MessageQueue(name, create=True, mode=bad)
        with pytest.raises(FileNotFoundError):
            pyipc.MessageQueue(name)
    with pytest.raises(TypeError):
        pyipc.MessageQueue(qname(), create=True, mode="600")  # type: ignore[arg-type]
    with pyipc.MessageQueue(qname(), create=True, mode=0o7777) as q:
        assert stat.S_IMODE(os.fstat(q.fileno()).st_mode) == 0o7777


@pytest.mark.parametrize("bad", [-1, 32768, 2**32, 2**64])
def test_priority_out_of_range_is_a_value_error(qname: Callable[[], str], bad: int) -> None:
    """A priority outside 0..32767 is ValueError (never OverflowError), and
    nothing is sent."""
    with pyipc.MessageQueue(qname(), create=True) as q:
        with pytest.raises(ValueError):
            q.send(b"x", priority=bad)
        with pytest.raises(TypeError):
            q.send(b"x", priority=1.0)  # type: ignore[arg-type]
        assert q.qsize() == 0
        q.send(b"top", priority=32767)
        assert q.recv_with_priority(timeout=5) == (b"top", 32767)


def test_geometry_out_of_range_is_a_value_error(qname: Callable[[], str]) -> None:
    """max_messages and max_message_size of 2**64 (or more) are ValueError."""
    with pytest.raises(ValueError):
        pyipc.MessageQueue(qname(), create=True, max_messages=2**64)
    with pytest.raises(ValueError):
        pyipc.MessageQueue(qname(), create=True, max_message_size=10**100)


def test_kept_message_goes_first_everywhere(qname: Callable[[], str]) -> None:
    """The message a too small recv_into refused is the next one whatever
    receives it (recv_many too), qsize counts it, and pending() tells what
    the descriptor cannot."""
    with pyipc.MessageQueue(qname(), create=True) as q:
        q.send(b"long message", priority=2)
        q.send(b"next")
        with pytest.raises(pyipc.MessageTooLarge):
            q.recv_into(bytearray(4), timeout=5)
        assert q.pending() and q.qsize() == 2
        assert q.recv_many(5, timeout=5) == [b"long message", b"next"]
        assert not q.pending()
        q.send(b"long message")
        with pytest.raises(pyipc.MessageTooLarge):
            q.recv_into(bytearray(4), timeout=5)
        # The descriptor does not show a kept message: pending() does.
        with selectors.DefaultSelector() as sel:
            sel.register(q, selectors.EVENT_READ)
            assert sel.select(timeout=0) == []
        assert q.pending()
        assert q.recv(timeout=0) == b"long message"
        assert not q.pending()
