"""pipe(), duplex pipes and named FIFOs: SIGPIPE, Ctrl-C, fork, unrelated
processes, torn frames."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from typing import Any

import pytest

import pyipc
from pyipc._core import lib


@pytest.fixture
def fifo_path(channels: Any) -> str:
    """A FIFO path in /tmp, removed after the test."""
    return channels.path(".fifo")  # type: ignore[no-any-return]


def _run(code: str, timeout: float = 30, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
        timeout=timeout, **kw,  # type: ignore[arg-type]
    )


def test_pipe_order_matches_os_pipe() -> None:
    """pipe() returns (reader, writer) like os.pipe()."""
    r, w = pyipc.pipe()
    with r, w:
        w.send(b"hi")
        assert r.recv(timeout=5) == b"hi"


def test_duplex_both_ways() -> None:
    """Both ends of a duplex pipe send and receive; fileno() is the
    descriptor each receives on."""
    a, b = pyipc.pipe(duplex=True)
    with a, b:
        a.send(b"to b")
        b.send(b"to a")
        assert b.recv(timeout=5) == b"to b"
        assert a.recv(timeout=5) == b"to a"
        assert a.fileno() != b.fileno()
        assert stat.S_ISFIFO(os.fstat(a.fileno()).st_mode)


@pytest.mark.timeout(30)
def test_sigpipe_default_disposition_does_not_kill() -> None:
    """With SIGPIPE at SIG_DFL (which would kill), writing to a pipe whose
    reader is gone raises BrokenPipeError; the disposition is unchanged."""
    out = _run("""
        import signal, pyipc
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        r, w = pyipc.pipe()
        r.close()
        try:
            w.send(b"x" * 100)
        except BrokenPipeError:
            print("broken")
        try:
            w.send(b"y" * 1000000)
        except BrokenPipeError:
            print("broken")
        assert signal.getsignal(signal.SIGPIPE) == signal.SIG_DFL
        print("alive")
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["broken", "broken", "alive"]


@pytest.mark.timeout(30)
def test_sigpipe_handler_not_called() -> None:
    """A Python SIGPIPE handler is not run by our writes."""
    out = _run("""
        import signal, pyipc
        hits = []
        signal.signal(signal.SIGPIPE, lambda *a: hits.append(1))
        r, w = pyipc.pipe()
        r.close()
        for _ in range(3):
            try:
                w.send(b"x")
            except BrokenPipeError:
                pass
        print(len(hits))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"


def _state(pid: int) -> str:
    """The state letter of process pid (R running, S sleeping, ...)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["pipe", "stream", "seqpacket", "dgram", "mq"])
def test_ctrl_c_interrupts_blocked_recv(kind: str, wait_until: Any) -> None:
    """SIGINT to a process blocked in recv(timeout=None) raises
    KeyboardInterrupt there (the process exits with it, not hung)."""
    code = f"""
        import os, sys, uuid, pyipc
        kind = {kind!r}
        if kind == "pipe":
            rx, tx = pyipc.pipe()
        elif kind == "mq":
            name = "pyipc-test-" + uuid.uuid4().hex[:10]
            rx = tx = pyipc.MessageQueue(name, create=True)
            rx.unlink()
        else:
            tx, rx = pyipc.socketpair(kind)
        print("ready", flush=True)
        try:
            rx.recv()
        except KeyboardInterrupt:
            print("interrupted", flush=True)
    """
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready"
        # The child has one thread, which after "ready" only sleeps in
        # recv's wait: once asleep ('S'), it is blocked there.
        wait_until(lambda: _state(p.pid) == "S")
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=10)
        assert out.strip() == "interrupted"
        assert p.returncode == 0
    finally:
        p.kill()
        p.wait()


@pytest.mark.timeout(60)
def test_across_fork() -> None:
    """A forked child sends large and small messages back through a pipe
    made before the fork, then exits; the parent sees them and EOFError."""
    r, w = pyipc.pipe()
    msgs = [os.urandom(n) for n in (0, 1, 65536, 3 << 20, 5)]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            r.close()
            for m in msgs:
                w.send(m)
        except BaseException:
            code = 1
        os._exit(code)
    w.close()
    try:
        assert [r.recv(timeout=30) for _ in msgs] == msgs
        with pytest.raises(EOFError):
            r.recv(timeout=30)
    finally:
        _, status = os.waitpid(pid, 0)
        r.close()
    assert status == 0


def _half_frame_writer(w: Any, then_sleep: bool) -> int:
    """Fork a child that writes a header announcing 1 MiB and only half the
    payload, then sleeps or dies."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        fd = w.fileno()
        os.set_blocking(fd, True)
        hdr = (1 << 20).to_bytes(7, "little") + b"\xa5"
        os.write(fd, hdr + b"q" * (32 << 10))
        if then_sleep:
            import time

            time.sleep(30)
        os._exit(0)
    return pid


@pytest.mark.timeout(60)
def test_torn_frame_is_eof() -> None:
    """A writer that dies in the middle of a message leaves the reader an
    EOFError, not a short message."""
    r, w = pyipc.pipe()
    pid = _half_frame_writer(w, then_sleep=False)
    w.close()
    try:
        with pytest.raises(EOFError):
            r.recv(timeout=30)
    finally:
        os.waitpid(pid, 0)
        r.close()


@pytest.mark.timeout(60)
def test_recv_timeout_inside_message_closes() -> None:
    """A receive that times out after taking part of a message closes the
    channel (it would be out of step) and raises TimeoutError."""
    r, w = pyipc.pipe()
    pid = _half_frame_writer(w, then_sleep=True)
    w.close()
    try:
        with pytest.raises(TimeoutError):
            r.recv(timeout=0.3)
        assert r.closed
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        r.close()


def test_garbage_stream_is_corrupted() -> None:
    """Bytes that are not pyipc framing raise CorruptedError, not garbage."""
    r, w = pyipc.pipe()
    with r, w:
        os.write(w.fileno(), b"\x01\x00\x00\x00\x00\x00\x00\x00x")
        with pytest.raises(pyipc.CorruptedError):
            r.recv(timeout=5)


@pytest.mark.timeout(60)
def test_fifo_between_unrelated_processes(fifo_path: str) -> None:
    """Two unrelated processes talk through a named FIFO: the writer waits
    for the reader, messages keep their boundaries, the reader sees EOF."""
    r = pyipc.open_fifo(fifo_path, "r", create=True)
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import pyipc
        w = pyipc.open_fifo({fifo_path!r}, "w", timeout=20)
        for m in (b"", b"one", b"x" * 1000000):
            w.send(m)
        w.close()
    """)])
    try:
        with r:
            assert r.recv(timeout=20) == b""
            assert r.recv(timeout=20) == b"one"
            assert r.recv(timeout=20) == b"x" * 1000000
            with pytest.raises(EOFError):
                r.recv(timeout=20)
        assert writer.wait(20) == 0
    finally:
        writer.kill()
        writer.wait()


def test_fifo_reader_before_writer_waits(fifo_path: str) -> None:
    """A FIFO reader opened before any writer is not at EOF: recv times out,
    and selectors do not report it readable."""
    import selectors

    r = pyipc.open_fifo(fifo_path, "r", create=True)
    with r:
        with pytest.raises(TimeoutError):
            r.recv(timeout=0.05)
        with selectors.DefaultSelector() as sel:
            sel.register(r, selectors.EVENT_READ)
            assert sel.select(timeout=0) == []
        w = pyipc.open_fifo(fifo_path, "w", timeout=5)
        with w:
            w.send(b"late")
            assert r.recv(timeout=5) == b"late"


def test_fifo_writer_timeout_and_mode(fifo_path: str) -> None:
    """A writer with no reader times out; create=True makes the FIFO with
    exactly the requested permission bits whatever the umask."""
    old = os.umask(0o077)
    try:
        with pytest.raises(TimeoutError):
            pyipc.open_fifo(fifo_path, "w", create=True, mode=0o640, timeout=0.05)
    finally:
        os.umask(old)
    st = os.stat(fifo_path)
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    with pytest.raises(TimeoutError):
        pyipc.open_fifo(fifo_path, "w", timeout=0)


def test_fifo_validation(fifo_path: str, tmp_path: object) -> None:
    """Bad directions and paths raise ValueError before any system call; a
    missing FIFO FileNotFoundError; a regular file is refused."""
    with pytest.raises(ValueError):
        pyipc.open_fifo(fifo_path, "rw")
    with pytest.raises(ValueError):
        pyipc.open_fifo("", "r")
    with pytest.raises(ValueError):
        pyipc.open_fifo("/tmp/a\0b", "r")
    with pytest.raises(FileNotFoundError):
        pyipc.open_fifo(fifo_path, "r")
    with open(fifo_path, "w"):
        pass
    with pytest.raises(OSError):
        pyipc.open_fifo(fifo_path, "r")


def test_fifo_mode_is_exact_or_refused(fifo_path: str) -> None:
    """A FIFO gets exactly mode, 0 to 0o7777; more, negative or not an int
    is refused before anything is made."""
    for bad in (0o10000, -1, 2**64):
        with pytest.raises(ValueError):
            pyipc.open_fifo(fifo_path, "r", create=True, mode=bad)
    with pytest.raises(TypeError):
        pyipc.open_fifo(fifo_path, "r", create=True, mode=0.5)  # type: ignore[arg-type]
    assert not os.path.exists(fifo_path)
    with pyipc.open_fifo(fifo_path, "r", create=True, mode=0o7777):
        assert stat.S_IMODE(os.lstat(fifo_path).st_mode) == 0o7777
        with pyipc.open_fifo(fifo_path, "w", timeout=float("inf")) as w:
            w.send(b"exact")


@pytest.mark.timeout(30)
def test_recv_timeout_inside_small_message_keeps_it() -> None:
    """A receive that times out with part of a small message in hand keeps
    it: the channel stays open and the next receive returns it whole."""
    r, w = pyipc.pipe()
    with r, w:
        frame = (10).to_bytes(7, "little") + b"\xa5" + b"0123456789"
        os.write(w.fileno(), frame[:12])
        with pytest.raises(TimeoutError):
            r.recv(timeout=0.05)
        assert not r.closed
        os.write(w.fileno(), frame[12:])
        assert r.recv(timeout=5) == b"0123456789"


@pytest.mark.timeout(60)
def test_fork_in_the_middle_of_a_send_is_out_of_step_in_the_child() -> None:
    """A child forked while a parent thread is half-way through sending a
    large message on a pipe cannot send on it (IPCError: its frames would
    interleave with the parent's), and can still close it; the parent's
    message arrives whole."""
    import threading
    import warnings

    r, w = pyipc.pipe()
    big = b"L" * (1 << 20)
    t = threading.Thread(target=w.send, args=(big, 30))
    t.start()
    h = w._h
    # Inside send, with part of the message in the pipe (it holds 64 KiB).
    while not (lib.pyipc_chan_calls(h) and lib.pyipc_chan_midframe(h, 1)):
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
        pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            w.send(b"child", timeout=1)
        except pyipc.IPCError:
            w.close()
            code = 0 if w.closed else 2
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    with r:
        assert r.recv(timeout=30) == big
    t.join(30)
    w.close()
