"""UNIX domain socket channels: ``socketpair``, ``UnixListener``,
``unix_connect``, peer credentials and descriptor passing.

``"stream"`` sockets carry the same framing as pipes; ``"seqpacket"`` and
``"dgram"`` sockets carry one message per packet (the kernel keeps the
boundaries).  Sends use ``MSG_NOSIGNAL``: a gone peer is ``BrokenPipeError``,
never SIGPIPE.  A path starting with ``"\\0"`` is in the abstract namespace
(no file).
"""
from __future__ import annotations

import os
from typing import Any, List, Optional, Sequence, Tuple, Union

from ._core import ffi, lib
from ._util import channel_deadline, check_int, check_mode
from .channel import ChannelBase, _closed_error, new_handle, readable, wait_fd
from .errors import error_from
from .errors import RC_EINTR as _EINTR, RC_EAGAIN as _EAGAIN, RC_ETIMEDOUT as _ETIMEDOUT
from .errors import RC_EBADF as _EBADF

__all__ = ["SocketChannel", "UnixListener", "socketpair", "unix_connect", "MAX_FDS"]

MAX_FDS = int(lib.PYIPC_CHAN_MAX_FDS)  # descriptors one message may carry
_SUN_PATH_MAX = int(lib.PYIPC_UNIX_PATH_MAX)
_INT_MAX = (1 << 31) - 1

_KINDS = {
    "stream": int(lib.PYIPC_SOCK_STREAM),
    "seqpacket": int(lib.PYIPC_SOCK_SEQPACKET),
    "dgram": int(lib.PYIPC_SOCK_DGRAM),
}

PathLike = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]


def _kind(kind: str, allowed: Sequence[str]) -> int:
    if kind not in allowed:
        raise ValueError(f"kind must be one of {', '.join(map(repr, allowed))}, not {kind!r}")
    return _KINDS[kind]


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


class SocketChannel(ChannelBase):
    """A connected UNIX socket channel (any kind)."""

    __slots__ = ("kind",)

    def __init__(self, handle: Any, kind: str, name: Optional[str] = None) -> None:
        super().__init__(handle, name)
        self.kind = kind

    def peer_credentials(self) -> Tuple[int, int, int]:
        """Return the peer's ``(pid, uid, gid)`` (``SO_PEERCRED``): as of
        when it connected, or made the pair.  Raises ``ValueError`` if
        closed, ``OSError`` from the kernel."""
        h = self._check(True, "")
        out = ffi.new("int32_t[1]"), ffi.new("uint32_t[1]"), ffi.new("uint32_t[1]")
        rc = lib.pyipc_usock_peercred(h, *out)
        if rc < 0:
            self._fail(rc, 0)
        return int(out[0][0]), int(out[1][0]), int(out[2][0])

    def send_fds(self, data: Any, fds: Sequence[int], timeout: Optional[float] = None) -> None:
        """Send one message with descriptors attached (``SCM_RIGHTS``); the
        receiver gets duplicates, the caller keeps its own.

        Raises ``TypeError`` for a descriptor that is not an int,
        ``ValueError`` for more than ``MAX_FDS`` descriptors or one out of
        range, and whatever ``send`` raises (``OSError(EBADF)`` for a
        descriptor that is not open).
        """
        h = self._check(self._wfd >= 0, "send")
        fdl = [check_int(f, "a descriptor", 0, _INT_MAX) for f in fds]
        if len(fdl) > MAX_FDS:
            raise ValueError(f"at most {MAX_FDS} descriptors per message")
        p = readable(data)
        arr = ffi.new("int[]", fdl or [0])
        dl = channel_deadline(timeout)
        send = lib.pyipc_chan_send_fds
        rc = send(h, p, len(p), arr, len(fdl), dl)
        if rc:
            self._retry(rc, lambda: int(send(h, p, len(p), arr, len(fdl), dl)), dl, 1)

    def recv_fds(self, maxfds: int = MAX_FDS, timeout: Optional[float] = None) -> Tuple[bytes, List[int]]:
        """Receive one message and the descriptors that came with it (the
        caller owns them and must close them; beyond ``maxfds`` they are
        closed).  Raises what ``recv`` raises, and ``ValueError`` for
        ``maxfds`` outside 0 .. ``MAX_FDS``."""
        h = self._check(self._rfd >= 0, "receive")
        k = check_int(maxfds, "maxfds", 0, MAX_FDS)
        arr = ffi.new("int[]", max(k, 1))
        nfds = ffi.new("size_t *")
        dl = channel_deadline(timeout)
        slot = self._slot
        if slot is None:
            slot = self._new_slot()
        else:
            self._slot = None
        box: List[Any] = [slot, self._bufsize]
        recv = lib.pyipc_chan_recv_fds

        def again() -> int:
            return int(recv(h, box[0][0], box[1], arr, k, nfds, dl))

        def grow() -> None:
            need = int(lib.pyipc_chan_need(h))
            box[0], box[1] = self._new_slot(need), need

        n = self._retry(again(), again, dl, 0, grow)
        data: bytes = box[0][1][:n]
        self._slot = slot
        return data, [int(arr[i]) for i in range(nfds[0])]


def socketpair(kind: str = "stream") -> Tuple[SocketChannel, SocketChannel]:
    """Return two connected UNIX socket channels of ``kind`` (``"stream"``,
    ``"seqpacket"`` or ``"dgram"``).  Raises ``ValueError`` for another
    kind, ``OSError`` from the kernel."""
    k = _kind(kind, ("stream", "seqpacket", "dgram"))
    other = ffi.new("pyipc_chan **")
    first = new_handle(lambda out: lib.pyipc_usock_pair(k, out, other))
    second = ffi.gc(other[0], lib.pyipc_chan_free)
    return SocketChannel(first, kind), SocketChannel(second, kind)


def unix_connect(path: PathLike, kind: str = "stream", timeout: Optional[float] = None) -> SocketChannel:
    """Connect to a ``UnixListener`` at ``path`` and return the channel.

    Waits up to ``timeout`` while the listener's backlog is full
    (``TimeoutError``).  Raises ``ValueError`` for a bad path or kind,
    ``FileNotFoundError`` if nothing is there, ``ConnectionRefusedError`` if
    nobody listens.
    """
    k = _kind(kind, ("stream", "seqpacket"))
    p = _sock_path(path)
    dl = channel_deadline(timeout)
    name = os.fsdecode(p)
    h = new_handle(lambda out: lib.pyipc_usock_connect(p, len(p), k, dl, out), name)
    return SocketChannel(h, kind, name)


class UnixListener:
    """A listening UNIX socket at ``path`` (``"stream"`` or ``"seqpacket"``).

    The socket file is created with permission bits exactly ``mode`` (0 to
    0o7777) and is never more open than that, even for an instant;
    ``close()`` removes the file it created (if it is still that file).  An
    abstract name (leading ``"\\0"``) has no file.  Raises ``ValueError``
    for a bad path, kind, mode or backlog (0 to 2**31 - 1),
    ``OSError(EADDRINUSE)`` if the path is taken.
    """

    def __init__(self, path: PathLike, kind: str = "stream", mode: int = 0o600, backlog: int = 128) -> None:
        self._h: Any = None
        k = _kind(kind, ("stream", "seqpacket"))
        p = _sock_path(path)
        bits = check_mode(mode)
        n = check_int(backlog, "backlog", 0, _INT_MAX)
        ino = ffi.new("uint64_t *")
        dev = ffi.new("uint64_t *")
        h = new_handle(lambda out: lib.pyipc_usock_listen(p, len(p), k, bits, n, out, ino, dev),
                       os.fsdecode(p))
        self._path = p
        self._pid = os.getpid()
        self._ino = int(ino[0])
        self._dev = int(dev[0])
        self.kind = kind
        self.path: Union[str, bytes] = path if isinstance(path, (str, bytes)) else os.fsdecode(p)
        self._fd = int(lib.pyipc_chan_fileno(h, 0))
        self._h = h

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
        h = self._h
        if h is None:
            raise _closed_error()
        dl = channel_deadline(timeout)
        out = ffi.new("pyipc_chan **")
        rc = lib.pyipc_usock_accept(h, dl, out)
        while rc == _EINTR:  # a slice ended: Python runs signal handlers
            rc = lib.pyipc_usock_accept(h, dl, out)
        if rc == _EBADF:
            raise _closed_error()
        if rc < 0:
            raise error_from(_ETIMEDOUT if rc == _EAGAIN else rc, os.fsdecode(self._path))
        return SocketChannel(ffi.gc(out[0], lib.pyipc_chan_free), self.kind,
                             os.fsdecode(self._path))

    async def accept_async(self) -> SocketChannel:
        """Accept a connection, awaiting it with the event loop.  Raises
        ``ValueError`` if the listener is closed."""
        while True:
            try:
                return self.accept(timeout=0)
            except TimeoutError:
                pass
            await wait_fd(self.fileno(), False)

    def _unlink(self) -> None:
        # Only the process that made the file removes it: a forked child
        # closing (or garbage-collecting) its inherited copy must not.
        if self._path[0] != 0 and os.getpid() == self._pid:
            lib.pyipc_usock_unlink(self._path, self._ino, self._dev)

    def close(self) -> None:
        """Stop listening and remove the socket file (if this process made
        it and it is still that file); idempotent."""
        h = self._h
        if h is not None:
            self._h = None
            lib.pyipc_chan_close(h)
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
