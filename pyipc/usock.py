"""UNIX domain socket channels: ``socketpair``, ``UnixListener``,
``unix_connect``, peer credentials and descriptor passing.

``"stream"`` sockets carry the same framing as pipes; ``"seqpacket"`` and
``"dgram"`` sockets carry one message per packet (the kernel keeps the
boundaries).  Sends use ``MSG_NOSIGNAL``: a gone peer is ``BrokenPipeError``,
never SIGPIPE.  A path starting with ``"\\0"`` is in the abstract namespace
(no file).
"""
from __future__ import annotations

import errno
import os
from typing import Any, List, Optional, Sequence, Tuple, Union

from ._core import ffi, lib
from ._util import FOREVER, channel_deadline
from .channel import DGRAM, LISTENER, SEQPACKET, STREAM, ChannelBase, _close_fds, _closed_error
from .errors import error_from
from .errors import RC_EINTR as _EINTR, RC_EAGAIN as _EAGAIN, RC_ETIMEDOUT as _ETIMEDOUT

__all__ = ["SocketChannel", "UnixListener", "socketpair", "unix_connect", "MAX_FDS"]

MAX_FDS = 64  # descriptors one message may carry (CHAN_MAXFDS in C)
_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) less the final NUL

_KINDS = {"stream": STREAM, "seqpacket": SEQPACKET, "dgram": DGRAM}

PathLike = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]


def _kind(kind: str, allowed: Sequence[str]) -> int:
    if kind not in allowed:
        raise ValueError(f"kind must be one of {', '.join(map(repr, allowed))}, not {kind!r}")
    return int(_KINDS[kind])


def _sock_path(path: PathLike) -> bytes:
    """Validate a socket path before any system call; return its bytes."""
    p = os.fsencode(path)
    if not p:
        raise ValueError("socket path must not be empty")
    if p[0] == 0:
        if len(p) < 2:
            raise ValueError("an abstract socket name needs at least one character after '\\0'")
    elif b"\0" in p:
        raise ValueError(f"socket path must not contain NUL characters: {path!r}")
    if len(p) > _SUN_PATH_MAX:
        raise ValueError(f"socket path is longer than {_SUN_PATH_MAX} bytes: {path!r}")
    return p


def _retry(rc: int, again: Any) -> int:
    while rc == _EINTR:  # a slice ended: Python runs signal handlers
        rc = again()
    if rc == _EAGAIN:
        rc = _ETIMEDOUT
    return int(rc)


class SocketChannel(ChannelBase):
    """A connected UNIX socket channel (any kind)."""

    __slots__ = ("kind",)

    def __init__(self, fd: int, kind: int, name: Optional[str] = None) -> None:
        super().__init__(fd, fd, kind, name)
        self.kind = {STREAM: "stream", SEQPACKET: "seqpacket", DGRAM: "dgram"}[kind]

    def peer_credentials(self) -> Tuple[int, int, int]:
        """Return the peer's ``(pid, uid, gid)`` (``SO_PEERCRED``): as of
        when it connected, or made the pair.  Raises ``ValueError`` if
        closed, ``OSError`` from the kernel."""
        h = self._check(True, "")
        out = ffi.new("int32_t[1]"), ffi.new("uint32_t[1]"), ffi.new("uint32_t[1]")
        rc = lib.pyipc_chan_peercred(h, *out)
        if rc < 0:
            raise self._error(rc, h, 0)
        return int(out[0][0]), int(out[1][0]), int(out[2][0])

    def send_fds(self, data: Any, fds: Sequence[int], timeout: Optional[float] = None) -> None:
        """Send one message with descriptors attached (``SCM_RIGHTS``); the
        receiver gets duplicates, the caller keeps its own.

        Raises ``ValueError`` for more than ``MAX_FDS`` descriptors, and
        whatever ``send`` raises (``OSError(EBADF)`` for a bad descriptor).
        """
        h = self._check(True, "send")
        fdl = [int(f) for f in fds]
        if len(fdl) > MAX_FDS:
            raise ValueError(f"at most {MAX_FDS} descriptors per message")
        p = ffi.from_buffer("char[]", data)
        arr = ffi.new("int[]", fdl or [0])
        dl = FOREVER if timeout is None else channel_deadline(timeout)
        send = lib.pyipc_chan_send_fds
        try:
            rc = send(h, p, len(p), arr, len(fdl), dl)
            while rc == _EINTR or rc == -errno.EBUSY:
                if rc != _EINTR and self._busy(dl):
                    rc = _ETIMEDOUT
                    break
                rc = send(h, p, len(p), arr, len(fdl), dl)
        except BaseException:
            self._abort(h, 1)
            raise
        if rc:
            raise self._error(rc, h, 1)

    def recv_fds(self, maxfds: int = MAX_FDS, timeout: Optional[float] = None) -> Tuple[bytes, List[int]]:
        """Receive one message and the descriptors that came with it (the
        caller owns them and must close them; beyond ``maxfds`` they are
        closed).  Raises what ``recv`` raises."""
        h = self._check(True, "receive")
        if not 0 <= maxfds <= MAX_FDS:
            raise ValueError(f"maxfds must be between 0 and {MAX_FDS}")
        arr = ffi.new("int[]", max(maxfds, 1))
        nfds = ffi.new("size_t *")
        dl = FOREVER if timeout is None else channel_deadline(timeout)
        buf = self._pool.pop() if self._pool else self._new_buf(0)
        recv = lib.pyipc_chan_recv_fds
        try:
            n = recv(h, buf, len(buf), arr, maxfds, nfds, dl)
            while n < 0:
                if n == -errno.EMSGSIZE:
                    buf = self._new_buf(int(lib.pyipc_chan_need(h)))
                elif n == -errno.EBUSY:
                    if self._busy(dl):
                        n = _ETIMEDOUT
                        break
                elif n != _EINTR:
                    break
                n = recv(h, buf, len(buf), arr, maxfds, nfds, dl)
        except BaseException:
            self._abort(h, 0)
            raise
        if n < 0:
            raise self._error(n, h, 0)
        data: bytes = ffi.unpack(buf, n)
        self._pool.append(buf)
        return data, [int(arr[i]) for i in range(nfds[0])]


def socketpair(kind: str = "stream") -> Tuple[SocketChannel, SocketChannel]:
    """Return two connected UNIX socket channels of ``kind`` (``"stream"``,
    ``"seqpacket"`` or ``"dgram"``).  Raises ``ValueError`` for another
    kind, ``OSError`` from the kernel."""
    k = _kind(kind, ("stream", "seqpacket", "dgram"))
    fds = ffi.new("int[2]")
    rc = lib.pyipc_usock_pair(k, fds)
    if rc < 0:
        raise error_from(rc)
    a, b = fds[0], fds[1]
    try:
        first = SocketChannel(a, k)
    except BaseException:
        _close_fds(b)
        raise
    return first, SocketChannel(b, k)


def unix_connect(path: PathLike, kind: str = "stream", timeout: Optional[float] = None) -> SocketChannel:
    """Connect to a ``UnixListener`` at ``path`` and return the channel.

    Waits up to ``timeout`` while the listener's backlog is full
    (``TimeoutError``).  Raises ``ValueError`` for a bad path or kind,
    ``FileNotFoundError`` if nothing is there, ``ConnectionRefusedError`` if
    nobody listens.
    """
    k = _kind(kind, ("stream", "seqpacket"))
    p = _sock_path(path)
    dl = FOREVER if timeout is None else channel_deadline(timeout)
    fd = ffi.new("int *")
    rc = _retry(
        lib.pyipc_usock_connect(p, len(p), k, dl, fd),
        lambda: lib.pyipc_usock_connect(p, len(p), k, dl, fd),
    )
    if rc < 0:
        raise error_from(rc, os.fsdecode(p))
    return SocketChannel(fd[0], k, os.fsdecode(p))


class UnixListener:
    """A listening UNIX socket at ``path`` (``"stream"`` or ``"seqpacket"``).

    The socket file is created with permission bits exactly ``mode`` and is
    never more open than that, even for an instant; ``close()`` removes the
    file it created (if it is still that file).  An abstract name (leading
    ``"\\0"``) has no file.  Raises ``ValueError`` for a bad path or kind,
    ``OSError(EADDRINUSE)`` if the path is taken.
    """

    def __init__(self, path: PathLike, kind: str = "stream", mode: int = 0o600, backlog: int = 128) -> None:
        self._h: Any = None
        k = _kind(kind, ("stream", "seqpacket"))
        p = _sock_path(path)
        fd = ffi.new("int *")
        ino = ffi.new("uint64_t *")
        dev = ffi.new("uint64_t *")
        rc = lib.pyipc_usock_listen(p, len(p), k, mode, backlog, fd, ino, dev)
        if rc < 0:
            raise error_from(rc, os.fsdecode(p))
        self._path = p
        self._pid = os.getpid()
        self._ino = int(ino[0])
        self._dev = int(dev[0])
        self._kind = k
        self.kind = kind
        self.path: Union[str, bytes] = path if isinstance(path, (str, bytes)) else os.fsdecode(p)
        self._fd = int(fd[0])
        try:
            self._h = ChannelBase(fd[0], -1, LISTENER, os.fsdecode(p))
        except BaseException:
            self._unlink()
            raise

    def fileno(self) -> int:
        """The listening descriptor (readable when a connection waits)."""
        if self._h is None:
            raise _closed_error()
        return self._fd

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._h is None

    def accept(self, timeout: Optional[float] = None) -> SocketChannel:
        """Wait for a connection and return its channel.  Raises
        ``TimeoutError`` if none came in time (``timeout=0`` never waits),
        ``ValueError`` if the listener is closed or ``timeout`` negative."""
        ch = self._h
        if ch is None:
            raise _closed_error()
        h = ch._h
        if h is None:
            raise _closed_error()
        dl = FOREVER if timeout is None else channel_deadline(timeout)
        fd = ffi.new("int *")
        rc = _retry(lib.pyipc_usock_accept(h, dl, fd), lambda: lib.pyipc_usock_accept(h, dl, fd))
        if rc == -errno.EBADF:
            raise _closed_error()
        if rc < 0:
            raise error_from(rc, os.fsdecode(self._path))
        return SocketChannel(fd[0], self._kind, os.fsdecode(self._path))

    async def accept_async(self) -> SocketChannel:
        """Accept a connection, awaiting it with the event loop.  Raises
        ``ValueError`` if the listener is closed."""
        while True:
            try:
                return self.accept(timeout=0)
            except TimeoutError:
                pass
            ch = self._h
            if ch is None:
                raise _closed_error()
            await ch._wait_fd(self._fd, False)

    def _unlink(self) -> None:
        # Only the process that made the file removes it: a forked child
        # closing (or garbage-collecting) its inherited copy must not.
        if self._path[0] != 0 and os.getpid() == self._pid:
            lib.pyipc_usock_unlink(self._path, self._ino, self._dev)

    def close(self) -> None:
        """Stop listening and remove the socket file (if this process made
        it and it is still that file); idempotent."""
        ch = self._h
        if ch is not None:
            self._h = None
            ch.close()
            self._unlink()

    def __enter__(self) -> "UnixListener":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A listener dropped without close() still removes its file.
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<UnixListener {self.path!r} {'closed' if self._h is None else 'listening'}>"
