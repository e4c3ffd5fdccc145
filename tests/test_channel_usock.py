"""UNIX socket channels: listeners, connect, the abstract namespace,
permission bits, peer credentials, descriptor passing, path validation."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import threading
import uuid
from typing import Any, List

import pytest

import pyipc


@pytest.fixture
def path(channels: Any) -> str:
    """A socket path, removed after the test if anything is left there."""
    return channels.path()  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", ["stream", "seqpacket"])
def test_listener_round_trip_and_cleanup(kind: str, path: str) -> None:
    """connect/accept of each kind, both directions, and close() removes
    the socket file."""
    lst = pyipc.UnixListener(path, kind)
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    with pyipc.unix_connect(path, kind, timeout=5) as c, lst.accept(timeout=5) as s:
        c.send(b"ping")
        assert s.recv(timeout=5) == b"ping"
        s.send(b"")
        assert c.recv(timeout=5) == b""
    lst.close()
    assert not os.path.exists(path)
    lst.close()  # idempotent
    with pytest.raises(ValueError):
        lst.accept(timeout=0)


@pytest.mark.parametrize("mode", [0o600, 0o660, 0o777])
def test_listener_mode_exact_whatever_umask(mode: int, path: str) -> None:
    """The socket file has exactly `mode`, with a umask that would remove
    bits and with one that removes none."""
    for umask in (0o077, 0o000):
        old = os.umask(umask)
        try:
            with pyipc.UnixListener(path, mode=mode):
                assert stat.S_IMODE(os.stat(path).st_mode) == mode
        finally:
            os.umask(old)


def test_listener_file_never_more_open(path: str) -> None:
    """While a listener is being made with mode 0o600, another thread
    watching the path never sees group or other bits."""
    seen: List[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                seen.append(stat.S_IMODE(os.stat(path).st_mode))
            except FileNotFoundError:
                pass

    old = os.umask(0)
    t = threading.Thread(target=watch)
    t.start()
    try:
        for _ in range(50):
            pyipc.UnixListener(path, mode=0o600).close()
    finally:
        stop.set()
        t.join()
        os.umask(old)
    assert all(m & 0o077 == 0 for m in seen)


def test_listener_path_taken(path: str) -> None:
    """A second listener on a live path fails with EADDRINUSE; the first
    one's file is not removed by the failure."""
    with pyipc.UnixListener(path):
        with pytest.raises(OSError) as e:
            pyipc.UnixListener(path)
        assert e.value.errno == 98  # EADDRINUSE
        assert os.path.exists(path)


def test_listener_close_leaves_foreign_file(path: str) -> None:
    """If the socket file was replaced by someone else, close() leaves the
    new file alone."""
    lst = pyipc.UnixListener(path)
    os.unlink(path)
    with open(path, "w"):
        pass
    lst.close()
    assert os.path.isfile(path)


def test_abstract_namespace() -> None:
    """A path starting with NUL is abstract: no file, still connectable."""
    name = "\0pyipc-test-" + uuid.uuid4().hex
    with pyipc.UnixListener(name) as lst:
        with pyipc.unix_connect(name, timeout=5) as c, lst.accept(timeout=5) as s:
            c.send(b"abstract")
            assert s.recv(timeout=5) == b"abstract"


def test_accept_and_connect_errors(path: str) -> None:
    """accept times out with nobody connecting; connecting to nothing is
    FileNotFoundError, to a dead socket file ConnectionRefusedError."""
    with pyipc.UnixListener(path) as lst:
        with pytest.raises(TimeoutError):
            lst.accept(timeout=0)
        with pytest.raises(TimeoutError):
            lst.accept(timeout=0.05)
        with pytest.raises(ValueError):
            lst.accept(timeout=-1)
    with pytest.raises(FileNotFoundError):
        pyipc.unix_connect(path, timeout=1)
    import socket

    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()  # leaves a socket file nobody listens on
    with pytest.raises(ConnectionRefusedError):
        pyipc.unix_connect(path, timeout=1)


@pytest.mark.parametrize(
    "bad", ["", "x" * 108, "/tmp/a\0b", "\0", b"/tmp/\0"],
)
def test_path_validation(bad: object) -> None:
    """Empty, too long and NUL-containing paths raise ValueError before any
    system call."""
    with pytest.raises(ValueError):
        pyipc.UnixListener(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        pyipc.unix_connect(bad)  # type: ignore[arg-type]


def test_kind_validation(path: str) -> None:
    """Unknown kinds, and dgram for listeners, raise ValueError."""
    with pytest.raises(ValueError):
        pyipc.socketpair("raw")
    with pytest.raises(ValueError):
        pyipc.UnixListener(path, "dgram")
    with pytest.raises(ValueError):
        pyipc.unix_connect(path, "dgram")
    assert not os.path.exists(path)


@pytest.mark.parametrize("kind", ["stream", "seqpacket", "dgram"])
def test_peer_credentials_pair(kind: str) -> None:
    """A socketpair's peer is this process."""
    a, b = pyipc.socketpair(kind)
    with a, b:
        assert a.peer_credentials() == (os.getpid(), os.getuid(), os.getgid())


@pytest.mark.timeout(30)
def test_peer_credentials_other_process(path: str) -> None:
    """Across processes, peer_credentials names the connecting process."""
    with pyipc.UnixListener(path) as lst:
        child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
            import os, pyipc
            c = pyipc.unix_connect({path!r}, timeout=10)
            c.send(str(os.getpid()).encode())
            c.recv(timeout=10)
        """)])
        try:
            with lst.accept(timeout=20) as s:
                pid = int(s.recv(timeout=20))
                assert pid == child.pid
                assert s.peer_credentials() == (child.pid, os.getuid(), os.getgid())
                s.send(b"bye")
            assert child.wait(20) == 0
        finally:
            child.kill()
            child.wait()


@pytest.mark.parametrize("kind", ["stream", "seqpacket", "dgram", "listener"])
def test_fd_passing(kind: str, channels: Any) -> None:
    """send_fds/recv_fds pass open descriptors: the receiver reads what the
    sender's pipe holds; messages without descriptors give an empty list."""
    tx, rx = channels.pair(kind)
    r, w = os.pipe()
    try:
        os.write(w, b"through the fd")
        tx.send(b"plain")
        tx.send_fds(b"with fds", [r, w], timeout=5)
        tx.send(b"after")
        assert rx.recv_fds(timeout=5) == (b"plain", [])
        data, fds = rx.recv_fds(timeout=5)
        assert data == b"with fds" and len(fds) == 2
        try:
            assert os.read(fds[0], 100) == b"through the fd"
            assert os.fstat(fds[1]).st_ino == os.fstat(w).st_ino
        finally:
            for fd in fds:
                os.close(fd)
        assert rx.recv(timeout=5) == b"after"
    finally:
        os.close(r)
        os.close(w)


def test_fd_passing_back_to_back(channels: Any) -> None:
    """Several messages with descriptors sent before any is received each
    get their own descriptors (the stream reader reads ahead)."""
    tx, rx = channels.pair("stream")
    pipes = [os.pipe() for _ in range(4)]
    try:
        for i, (r, w) in enumerate(pipes):
            os.write(w, b"%d" % i)
            tx.send_fds(b"m%d" % i, [r])
        for i in range(4):
            data, fds = rx.recv_fds(timeout=5)
            assert data == b"m%d" % i and len(fds) == 1
            assert os.read(fds[0], 10) == b"%d" % i
            os.close(fds[0])
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)


def test_fds_dropped_by_plain_recv_are_closed(channels: Any) -> None:
    """A plain recv of a message that carried descriptors closes them (they
    do not leak), and recv_fds(maxfds) closes the extra ones."""
    tx, rx = channels.pair("stream")
    r, w = os.pipe()
    try:
        before = len(os.listdir("/proc/self/fd"))
        tx.send_fds(b"a", [r, w])
        assert rx.recv(timeout=5) == b"a"
        tx.send_fds(b"b", [r, w])
        data, fds = rx.recv_fds(maxfds=1, timeout=5)
        assert data == b"b" and len(fds) == 1
        os.close(fds[0])
        assert len(os.listdir("/proc/self/fd")) == before
    finally:
        os.close(r)
        os.close(w)


def test_fd_passing_errors(channels: Any) -> None:
    """Too many descriptors is a ValueError, a bad one OSError(EBADF) (the
    channel stays open); pipes have no send_fds."""
    tx, _ = channels.pair("stream")
    with pytest.raises(ValueError):
        tx.send_fds(b"x", [0] * 65)
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError) as e:
        tx.send_fds(b"x", [r])
    assert e.value.errno == 9 and not tx.closed
    r, w = pyipc.pipe()
    with r, w:
        assert not hasattr(w, "send_fds")


def test_packet_too_large(channels: Any) -> None:
    """A datagram larger than the socket can ever carry raises
    MessageTooLarge."""
    tx, _ = channels.pair("dgram")
    with pytest.raises(pyipc.MessageTooLarge):
        tx.send(b"x" * (64 << 20))
    tx2, _ = channels.pair("seqpacket")
    with pytest.raises(pyipc.MessageTooLarge):
        tx2.send(b"x" * (64 << 20))


@pytest.mark.timeout(60)
def test_unrelated_processes_stream(path: str) -> None:
    """A separate Python process connects by path and exchanges messages of
    many sizes both ways."""
    with pyipc.UnixListener(path) as lst:
        child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
            import pyipc
            with pyipc.unix_connect({path!r}, timeout=10) as c:
                while True:
                    try:
                        m = c.recv(timeout=20)
                    except EOFError:
                        break
                    c.send(m[::-1])
        """)])
        try:
            with lst.accept(timeout=20) as s:
                for n in (0, 1, 100, 70_000, 2 << 20):
                    m = os.urandom(n)
                    s.send(m, timeout=20)
                    assert s.recv(timeout=20) == m[::-1]
            assert child.wait(20) == 0
        finally:
            child.kill()
            child.wait()


def test_stream_torn_frame_and_garbage() -> None:
    """On a stream socket, a peer that closes inside a frame gives EOFError,
    and bytes that are not pyipc framing give CorruptedError."""
    import socket

    for payload, exc in (
        ((1 << 20).to_bytes(7, "little") + b"\xa5" + b"q" * 1000, EOFError),
        (b"\x01\x00\x00\x00\x00\x00\x00\x00x", pyipc.CorruptedError),
    ):
        a, b = pyipc.socketpair("stream")
        with a, b:
            raw = socket.socket(fileno=os.dup(a.fileno()))
            raw.setblocking(True)
            raw.sendall(payload)
            raw.close()
            a.close()
            with pytest.raises(exc):
                b.recv(timeout=5)


def test_stream_batches_keep_order_and_sizes(channels: Any) -> None:
    """Many small messages queued at once, with large ones and empty ones
    between them, come out in order (the batched receive path)."""
    tx, rx = channels.pair("stream")
    msgs = [os.urandom(n % 200) for n in range(300)] + [os.urandom(200_000), b""]
    t = threading.Thread(target=lambda: [tx.send(m, timeout=30) for m in msgs])
    t.start()
    got = [rx.recv(timeout=30) for _ in msgs]
    t.join()
    assert got == msgs


@pytest.mark.timeout(30)
def test_listener_selectors_and_accept_async(path: str) -> None:
    """A listener's fileno() is readable when a connection waits, and
    accept_async accepts through the event loop."""
    import asyncio
    import selectors

    with pyipc.UnixListener(path) as lst:
        with selectors.DefaultSelector() as sel:
            sel.register(lst, selectors.EVENT_READ)
            assert sel.select(timeout=0) == []
            c1 = pyipc.unix_connect(path, timeout=5)
            assert sel.select(timeout=5)
            lst.accept(timeout=0).close()
            c1.close()

        async def main() -> bytes:
            task = asyncio.ensure_future(lst.accept_async())
            await asyncio.sleep(0)  # the task runs up to its wait
            c = pyipc.unix_connect(path, timeout=5)
            s = await asyncio.wait_for(task, 5)
            with c, s:
                await c.send_async(b"via loop")
                return await asyncio.wait_for(s.recv_async(), 5)

        assert asyncio.run(main()) == b"via loop"


def test_forked_child_close_keeps_file(path: str) -> None:
    """A forked child closing its inherited listener does not remove the
    parent's socket file."""
    with pyipc.UnixListener(path) as lst:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            lst.close()
            os._exit(0)
        os.waitpid(pid, 0)
        assert os.path.exists(path)
        with pyipc.unix_connect(path, timeout=5):
            lst.accept(timeout=5).close()
    assert not os.path.exists(path)


# ---- what fuzzing found: every bad input is a clear exception ----


def test_listener_mode_is_exact_or_refused(path: str) -> None:
    """mode is permission bits, 0 to 0o7777, given to the file exactly
    (0o7777 included); more, negative or not an int is refused before
    anything is made."""
    with pyipc.UnixListener(path, mode=0o7777):
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o7777
    for bad in (0o10000, -1, 2**64):
        with pytest.raises(ValueError):
            pyipc.UnixListener(path, mode=bad)
    with pytest.raises(TypeError):
        pyipc.UnixListener(path, mode=0.5)  # type: ignore[arg-type]
    assert not os.path.exists(path)


def test_listener_backlog_range(path: str) -> None:
    """backlog is 0 to 2**31 - 1 (ValueError beyond, never OverflowError)."""
    pyipc.UnixListener(path, backlog=0).close()
    pyipc.UnixListener(path, backlog=2**31 - 1).close()
    for bad in (2**31, -1, 2**64):
        with pytest.raises(ValueError):
            pyipc.UnixListener(path, backlog=bad)


def test_descriptors_must_be_ints_in_range(channels: Any) -> None:
    """send_fds takes ints only (a float is TypeError, not fd 1) in range
    (ValueError); recv_fds's maxfds is 0 to MAX_FDS."""
    tx, rx = channels.pair("stream")
    with pytest.raises(TypeError):
        tx.send_fds(b"m", [1.5])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        tx.send_fds(b"m", ["1"])  # type: ignore[list-item]
    for bad in (2**31, -1, 2**64):
        with pytest.raises(ValueError):
            tx.send_fds(b"m", [bad])
    with pytest.raises(TypeError):
        tx.send_fds(memoryview(b"abcd")[::2], [0])
    for bad in (-1, 65, 2**40):
        with pytest.raises(ValueError):
            rx.recv_fds(maxfds=bad, timeout=0)
    with pytest.raises(TimeoutError):
        rx.recv(timeout=0)  # nothing was sent by the refused calls
    assert pyipc.usock.MAX_FDS == 64


def test_infinite_timeouts_connect_and_accept(path: str) -> None:
    """unix_connect and accept take timeout=inf as "wait for ever"."""
    with pyipc.UnixListener(path) as lst:
        with pyipc.unix_connect(path, timeout=float("inf")) as c, \
                lst.accept(timeout=float("inf")) as s:
            c.send(b"inf")
            assert s.recv(timeout=float("inf")) == b"inf"
