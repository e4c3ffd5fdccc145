"""The ``Channel`` protocol and the machinery every channel shares.

A channel is a handle on kernel descriptors (a pipe, a UNIX socket, a POSIX
message queue) that sends and receives whole messages.  All I/O is in the C
core (``csrc/chan.c``): one C call per message, which writes a length header
and the payload together; a pipe reads a message together with the length of
the next one, a stream socket hands out every message already queued from
one peek.  This module turns timeouts into C deadlines and return codes into
exceptions.

Threads: any number of threads may send and receive on one handle; frames
never interleave.  ``close()`` while another thread is blocked on the same
handle is safe: that call returns within ~100 ms raising ``ValueError``
(closed), and the descriptors are closed when it has left (so the peer sees
end of file then, not a moment before).
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, List, Optional, Protocol, Tuple, TypeVar, runtime_checkable

from ._core import ffi, lib
from ._util import FOREVER, NOWAIT, channel_deadline
from .errors import MessageTooLarge, error_from
from .errors import (
    RC_EINTR as _EINTR,
    RC_EAGAIN as _EAGAIN,
    RC_ETIMEDOUT as _ETIMEDOUT,
    RC_EMSGSIZE as _EMSGSIZE,
    RC_EBADF as _EBADF,
    RC_EBUSY as _EBUSY,
    RC_EPIPE as _EPIPE,
    RC_ECONNRESET as _ECONNRESET,
    RC_EBADMSG as _EBADMSG,
)

__all__ = ["Channel", "ChannelBase"]


# Kinds, as in enum pyipc_chan_kind (csrc/channel_api.h).
PIPE = lib.PYIPC_CHAN_PIPE
STREAM = lib.PYIPC_CHAN_STREAM
SEQPACKET = lib.PYIPC_CHAN_SEQPACKET
DGRAM = lib.PYIPC_CHAN_DGRAM
MQ = lib.PYIPC_CHAN_MQ
LISTENER = lib.PYIPC_CHAN_LISTENER

# Bound once: the hot paths then do no attribute lookups on lib and ffi.
_send = lib.pyipc_chan_send
_recv = lib.pyipc_chan_recv
_unpack = ffi.unpack
_NULL = ffi.NULL

# Receive buffers do not need zeroing: C writes before Python reads.
_new_raw = ffi.new_allocator(should_clear_after_alloc=False)

_T = TypeVar("_T", bound="ChannelBase")


@runtime_checkable
class Channel(Protocol):
    """What every pyipc channel offers: whole messages through the kernel."""

    def send(self, data: Any, timeout: Optional[float] = None) -> None:
        """Send one message (bytes-like).  Raises ``TimeoutError``,
        ``BrokenPipeError``, ``MessageTooLarge`` (packet channels),
        ``TypeError``, ``ValueError`` (closed, or a receive-only end)."""
        ...

    def recv(self, timeout: Optional[float] = None) -> bytes:
        """Receive one whole message.  Raises ``TimeoutError``, ``EOFError``
        (the peer closed and everything it sent was received),
        ``ValueError`` (closed, or a send-only end)."""
        ...

    def recv_into(self, buffer: Any, timeout: Optional[float] = None) -> int:
        """Receive one message into a writable buffer and return its length;
        too small a buffer raises ``MessageTooLarge`` and keeps the message."""
        ...

    def fileno(self) -> int:
        """The descriptor to wait on with ``select``, ``selectors`` or asyncio."""
        ...

    def close(self) -> None:
        """Close the channel; idempotent, also the context manager's exit."""
        ...

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        ...

    async def send_async(self, data: Any) -> None:
        """``send`` as a coroutine that waits on the event loop."""
        ...

    async def recv_async(self) -> bytes:
        """``recv`` as a coroutine that waits on the event loop."""
        ...


def _closed_error() -> ValueError:
    return ValueError("operation on a closed channel")


def _close_fds(*fds: int) -> None:
    import os

    for fd in fds:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


def _wrap(rfd: int, wfd: int, kind: int) -> Any:
    """Return a C handle that owns rfd/wfd (closed here if wrapping fails)."""
    out = ffi.new("pyipc_chan **")
    rc = lib.pyipc_chan_open(rfd, wfd, kind, out)
    if rc < 0:
        _close_fds(rfd, wfd if wfd != rfd else -1)
        raise error_from(rc)
    # ffi.gc is the safety net for handles never closed; it runs only when
    # no Python frame (so no thread in a C call) holds the handle any more.
    return ffi.gc(out[0], lib.pyipc_chan_free)


def _writable(buffer: Any) -> Any:
    try:
        return ffi.from_buffer("char[]", buffer, require_writable=True)
    except BufferError:
        # What socket.recv_into raises for a read-only buffer.
        raise TypeError("recv_into needs a writable bytes-like object") from None


class ChannelBase:
    """Shared implementation of the ``Channel`` protocol over a C handle.

    Not constructed directly: use ``pipe()``, ``socketpair()``,
    ``unix_connect()``, ``UnixListener.accept()`` or ``MessageQueue``.
    """

    __slots__ = ("_h", "_tx", "_rx", "_kind", "_rfd", "_wfd", "_pool", "_bufsize", "_name",
                 "__weakref__")

    def __init__(self, rfd: int, wfd: int, kind: int, name: Optional[str] = None) -> None:
        self._h: Any = None
        self._tx: Any = None
        self._rx: Any = None
        self._h = _wrap(rfd, wfd, kind)
        # The handle again, or None where this end cannot send / receive or
        # is closed: the hot paths test one attribute.
        self._tx = self._h if wfd >= 0 else None
        self._rx = self._h if rfd >= 0 and kind != LISTENER else None
        self._kind = kind
        self._rfd = rfd
        self._wfd = wfd
        self._name = name
        # Receive buffers, popped and pushed back whole (atomic under the
        # GIL), so two threads never share one.
        self._pool: List[Any] = []
        self._bufsize = int(lib.pyipc_chan_bufsize(self._h))

    # ---- lifecycle ----

    def fileno(self) -> int:
        """Return the descriptor that becomes readable when a message comes.

        Raises ``ValueError`` if the channel is closed.
        """
        if self._h is None:
            raise _closed_error()
        return self._rfd if self._rfd >= 0 else self._wfd

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called (or the channel closed itself)."""
        return self._h is None

    def close(self) -> None:
        """Close the channel; idempotent.  A call blocked in another thread
        returns within ~100 ms with ``ValueError``."""
        h = self._h
        if h is not None:
            self._h = self._tx = self._rx = None
            lib.pyipc_chan_close(h)

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._h is None else f"fd={self.fileno()}"
        return f"<{type(self).__name__} {state}>"

    def pending(self) -> bool:
        """True if a whole message is held by the handle itself, so that the
        descriptor would not show it as readable.

        The C core never keeps a whole message back on pipes and sockets, so
        this is False there; a ``MessageQueue`` keeps the message that a too
        small ``recv_into`` buffer refused.  Raises ``ValueError`` if closed.
        """
        h = self._h
        if h is None:
            raise _closed_error()
        return bool(lib.pyipc_chan_pending(h))

    # ---- error paths (kept out of the hot paths) ----

    def _abort(self, h: Any, direction: int) -> None:
        # A stream stopped inside a message is out of step for good: close
        # so the peer sees EOFError rather than garbage.
        if lib.pyipc_chan_midframe(h, direction):
            self.close()

    def _error(self, rc: int, h: Any, direction: int) -> BaseException:
        if rc == _EBADF and self._h is None:
            return _closed_error()  # else a bad descriptor given to send_fds
        if rc == _EAGAIN:
            rc = _ETIMEDOUT
        if direction == 0 and rc in (_EPIPE, _ECONNRESET):
            if rc == _ECONNRESET:
                self.close()
                return EOFError("the peer closed the channel in the middle of a message")
            return EOFError("the peer closed the channel")
        if rc in (_ETIMEDOUT, _EBADMSG):
            self._abort(h, direction)
            if rc == _EBADMSG:
                self.close()
        return error_from(rc, self._name)

    def _check(self, can: bool, what: str) -> Any:
        h = self._h
        if h is None:
            raise _closed_error()
        if not can:
            raise ValueError(f"this end of the channel cannot {what}")
        return h

    # ---- send ----

    def send(self, data: Any, timeout: Optional[float] = None) -> None:
        """Send one message (any bytes-like object; empty is valid).

        Raises ``TimeoutError`` if it could not be sent in time (``timeout=0``
        never waits), ``BrokenPipeError`` if the peer is gone,
        ``MessageTooLarge`` if it can never fit (packets, queues),
        ``TypeError`` for data that is not bytes-like, ``ValueError`` if the
        channel is closed, receive-only, or ``timeout`` is negative.
        """
        h = self._tx
        if h is None:
            h = self._check(self._wfd >= 0, "send")
        dl = FOREVER if timeout is None else channel_deadline(timeout)
        # bytes pass straight to a const char * parameter; anything else
        # goes through the buffer protocol (TypeError if it has none).
        p = data if type(data) is bytes else ffi.from_buffer("char[]", data)
        rc = _send(h, p, len(p), 0, dl)
        if rc:
            self._send_slow(rc, h, p, len(p), 0, dl)

    def _send_slow(self, rc: int, h: Any, p: Any, n: int, prio: int, dl: int) -> None:
        send = lib.pyipc_chan_send
        try:
            while rc == _EINTR or rc == _EBUSY:
                # Between calls Python runs signal handlers (Ctrl-C).
                if rc == _EBUSY:
                    rc = self._busy(dl)
                    if rc:
                        break
                rc = send(h, p, n, prio, dl)
        except BaseException:
            self._abort(h, 1)
            raise
        if rc:
            raise self._error(rc, h, 1)

    @staticmethod
    def _busy(dl: int) -> int:
        # Another thread's message is half sent/received on this handle;
        # it will finish it, so wait a little without holding anything.
        if dl == NOWAIT or (dl != FOREVER and time.monotonic_ns() >= dl):
            return _ETIMEDOUT
        time.sleep(0.001)
        return 0

    # ---- receive ----

    def _new_buf(self, size: int) -> Any:
        return _new_raw("char[]", max(size, self._bufsize))

    def recv(self, timeout: Optional[float] = None) -> bytes:
        """Receive one message and return it.

        Raises ``EOFError`` once the peer has closed and everything it sent
        was received, ``TimeoutError`` if nothing came in time
        (``timeout=0`` never waits), ``ValueError`` if the channel is
        closed, send-only, or ``timeout`` is negative.
        """
        h = self._rx
        if h is None:
            h = self._check(self._rfd >= 0, "receive")
        pool = self._pool
        buf = pool.pop() if pool else self._new_buf(0)
        dl = FOREVER if timeout is None else channel_deadline(timeout)
        n = _recv(h, buf, len(buf), _NULL, dl)
        if n >= 0:
            data: bytes = _unpack(buf, n)
            pool.append(buf)  # after the copy: then another thread may take it
            return data
        return self._recv_slow(n, h, buf, dl, _NULL)

    def _recv_slow(self, n: int, h: Any, buf: Any, dl: int, prio: Any) -> bytes:
        recv = lib.pyipc_chan_recv
        try:
            while n < 0:
                if n == _EMSGSIZE:
                    # recv() always takes the message: grow and go again.
                    buf = self._new_buf(int(lib.pyipc_chan_need(h)))
                elif n == _EBUSY:
                    if self._busy(dl):
                        n = _ETIMEDOUT
                        break
                elif n != _EINTR:
                    break
                n = recv(h, buf, len(buf), prio, dl)
        except BaseException:
            self._abort(h, 0)
            raise
        if n < 0:
            raise self._error(n, h, 0)
        data: bytes = _unpack(buf, n)
        self._pool.append(buf)
        return data

    def recv_into(self, buffer: Any, timeout: Optional[float] = None) -> int:
        """Receive one message into a writable buffer; return its length.

        A buffer too small raises ``MessageTooLarge`` and the message is kept
        for the next receive on this handle.  Also raises what ``recv``
        raises, and ``TypeError`` if ``buffer`` is not a writable buffer.
        """
        h = self._rx
        if h is None:
            h = self._check(self._rfd >= 0, "receive")
        p = _writable(buffer)
        dl = FOREVER if timeout is None else channel_deadline(timeout)
        recv = lib.pyipc_chan_recv
        n = recv(h, p, len(p), ffi.NULL, dl)
        try:
            while n == _EINTR or n == _EBUSY:
                if n == _EBUSY and self._busy(dl):
                    n = _ETIMEDOUT
                    break
                n = recv(h, p, len(p), ffi.NULL, dl)
        except BaseException:
            self._abort(h, 0)
            raise
        if n == _EMSGSIZE:
            raise MessageTooLarge(
                f"message of {int(lib.pyipc_chan_need(h))} bytes does not fit"
                f" in a buffer of {len(p)}; it is kept for the next receive"
            )
        if n < 0:
            raise self._error(n, h, 0)
        return int(n)

    # ---- asyncio ----

    async def _wait_fd(self, fd: int, for_send: bool) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        if for_send:
            loop.add_writer(fd, ready)
        else:
            loop.add_reader(fd, ready)
        try:
            await fut
        finally:
            if for_send:
                loop.remove_writer(fd)
            else:
                loop.remove_reader(fd)

    async def send_async(self, data: Any) -> None:
        """Send one message, awaiting room with the event loop (never
        blocking it).  Raises what ``send`` raises, except ``TimeoutError``;
        cancelled half-way through a stream message, the channel closes."""
        await self._send_async(data, 0)

    async def _send_async(self, data: Any, prio: int) -> None:
        h = self._check(self._wfd >= 0, "send")
        p = data if type(data) is bytes else ffi.from_buffer("char[]", data)
        n = len(p)
        send = lib.pyipc_chan_send
        try:
            while True:
                rc = send(h, p, n, prio, NOWAIT)
                if rc == 0:
                    return
                if rc == _EAGAIN:
                    await self._wait_fd(self._wfd, True)
                elif rc == _EBUSY:
                    await asyncio.sleep(0.001)
                elif rc != _EINTR:
                    raise self._error(rc, h, 1)
        except BaseException:
            self._abort(h, 1)
            raise

    async def recv_async(self) -> bytes:
        """Receive one message, awaiting it with the event loop (never
        blocking it).  Raises what ``recv`` raises, except ``TimeoutError``."""
        data, _ = await self._recv_async(ffi.NULL)
        return data

    async def _recv_async(self, prio: Any) -> Tuple[bytes, Any]:
        h = self._check(self._rfd >= 0, "receive")
        buf = self._pool.pop() if self._pool else self._new_buf(0)
        recv = lib.pyipc_chan_recv
        try:
            while True:
                n = recv(h, buf, len(buf), prio, NOWAIT)
                if n >= 0:
                    data: bytes = _unpack(buf, n)
                    self._pool.append(buf)
                    return data, prio
                if n == _EAGAIN:
                    await self._wait_fd(self._rfd, False)
                elif n == _EMSGSIZE:
                    buf = self._new_buf(int(lib.pyipc_chan_need(h)))
                elif n == _EBUSY:
                    await asyncio.sleep(0.001)
                elif n != _EINTR:
                    raise self._error(n, h, 0)
        except BaseException:
            self._abort(h, 0)
            raise
