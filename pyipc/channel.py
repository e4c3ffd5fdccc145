"""The ``Channel`` protocol and the machinery every channel shares.

A channel is a handle on kernel descriptors (a pipe, a UNIX socket, a POSIX
message queue) that sends and receives whole messages.  All I/O is in the C
core (``csrc/chan.c`` and one file per kind): one C call per message, or per
batch with ``send_many``/``recv_many``.  This module turns timeouts into C
deadlines and return codes into exceptions, in one place: ``_retry`` calls
again while the core says so and ``_fail`` raises what is left.

Threads: any number of threads may send and receive on one handle; frames
never interleave.  ``close()`` while another thread is blocked on the same
handle is safe: that call returns within ~100 ms raising ``ValueError``
(closed), and the descriptors are closed when it has left (so the peer sees
end of file then, not a moment before).
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, List, NoReturn, Optional, Protocol, Sequence, Tuple, TypeVar
from typing import runtime_checkable

from ._core import ffi, lib
from ._util import FOREVER, NOWAIT, channel_deadline, check_int
from .errors import IPCError, MessageTooLarge, error_from
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
    RC_ENOTRECOVERABLE as _ENOTRECOVERABLE,
)

__all__ = ["Channel", "ChannelBase"]

# Messages one send_many/recv_many system call takes (C's PYIPC_CHAN_BATCH).
BATCH = int(lib.PYIPC_CHAN_BATCH)
# The most messages one recv_many returns: as many empty frames as a
# stream's receive buffer holds; every other kind returns fewer.
_MANY_MAX = 8192
# send_many joins the messages into one buffer up to this many bytes; past
# it, each message is sent by itself (one system call each anyway).
_JOIN_MAX = 1 << 20

# Bound once: the hot paths then do no attribute lookups on lib and ffi.
_send = lib.pyipc_chan_send
_recv = lib.pyipc_chan_recv
_send_many = lib.pyipc_chan_send_many
_recv_many = lib.pyipc_chan_recv_many
_unpack = ffi.unpack
_from_buffer = ffi.from_buffer
_ffi_buffer = ffi.buffer
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

    def send_many(self, items: Sequence[Any], timeout: Optional[float] = None) -> None:
        """Send several messages in order, with as few system calls as the
        kind allows."""
        ...

    def recv_many(self, max_messages: int, timeout: Optional[float] = None) -> List[bytes]:
        """Wait for one message, then return up to ``max_messages`` of those
        already there."""
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


def new_handle(make: Callable[[Any], int], name: Optional[str] = None) -> Any:
    """Call a C constructor ``make(out)`` that stores a handle in ``out``;
    return the handle, freed by the garbage collector if never closed."""
    out = ffi.new("pyipc_chan **")
    rc = make(out)
    while rc == _EINTR:  # a slice ended: Python runs signal handlers
        rc = make(out)
    if rc < 0:
        if rc == _EAGAIN:  # timeout=0 and not ready
            rc = _ETIMEDOUT
        raise error_from(rc, name)
    # ffi.gc is the safety net for handles never closed; it runs only when
    # no Python frame (so no thread in a C call) holds the handle any more.
    return ffi.gc(out[0], lib.pyipc_chan_free)


def readable(data: Any) -> Any:
    """``data`` as something C takes for ``const char *``: bytes as they
    are, any other contiguous bytes-like object through the buffer protocol.
    ``TypeError`` for anything else (a str, an int, a non-contiguous view)."""
    if type(data) is bytes:
        return data
    try:
        return _from_buffer("char[]", data)
    except BufferError:
        raise TypeError("a message must be a contiguous bytes-like object") from None


def _writable(buffer: Any) -> Any:
    try:
        return _from_buffer("char[]", buffer, require_writable=True)
    except BufferError:
        # What socket.recv_into raises for a read-only buffer.
        raise TypeError("recv_into needs a writable, contiguous bytes-like object") from None


async def wait_fd(fd: int, for_send: bool) -> None:
    """Wait, on the running event loop, until ``fd`` is readable (or
    writable)."""
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


class ChannelBase:
    """Shared implementation of the ``Channel`` protocol over a C handle.

    Not constructed directly: use ``pipe()``, ``socketpair()``,
    ``unix_connect()``, ``UnixListener.accept()`` or ``MessageQueue``.
    """

    __slots__ = ("_h", "_tx", "_rx", "_rfd", "_wfd", "_slot", "_many_pool", "_bufsize",
                 "_name", "__weakref__")

    def __init__(self, handle: Any, name: Optional[str] = None) -> None:
        """Own ``handle`` (from ``new_handle``)."""
        self._h: Any = handle
        rfd = int(lib.pyipc_chan_fileno(handle, 0))
        wfd = int(lib.pyipc_chan_fileno(handle, 1))
        self._rfd = rfd if rfd >= 0 else -1
        self._wfd = wfd if wfd >= 0 else -1
        # The handle again, or None where this end cannot send / receive or
        # is closed: the hot paths test one attribute.
        self._tx: Any = handle if wfd >= 0 else None
        self._rx: Any = handle if rfd >= 0 else None
        self._name = name
        # The receive buffer (see recv) and those of recv_many, taken while
        # in use (atomic under the GIL), so two threads never share one.
        self._bufsize = int(lib.pyipc_chan_bufsize(handle))
        self._slot: Optional[Tuple[Any, Any]] = None
        self._many_pool: List[Tuple[Any, int, Any, Any]] = []

    # ---- lifecycle ----

    def fileno(self) -> int:
        """Return the descriptor that becomes readable when a message comes
        (for a send-only end, the one it sends on).

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
        """True if a whole message is held by the handle itself, ready for
        a receive that will not wait.

        Pipes and stream sockets read ahead only while the kernel still
        holds a byte of the stream, so their descriptor is readable then too;
        packet channels hold nothing; a ``MessageQueue`` keeps the message
        that a too small ``recv_into`` buffer refused, which its descriptor
        does not show.  Raises ``ValueError`` if closed.
        """
        h = self._h
        if h is None:
            raise _closed_error()
        return bool(lib.pyipc_chan_pending(h))

    # ---- the one place for retries and errors ----

    def _check(self, can: bool, what: str) -> Any:
        h = self._h
        if h is None:
            raise _closed_error()
        if not can:
            raise ValueError(f"this end of the channel cannot {what}")
        return h

    @staticmethod
    def _busy(dl: int) -> bool:
        """Another thread's message is half sent/received on this handle:
        it will finish it, so wait a little without holding anything.
        True when the deadline has passed instead."""
        if dl == NOWAIT or (dl != FOREVER and time.monotonic_ns() >= dl):
            return True
        time.sleep(0.001)
        return False

    def _retry(self, rc: int, again: Callable[[], int], dl: int, direction: int,
               grow: Optional[Callable[[], None]] = None) -> int:
        """The slow path of every call: call ``again`` while the C core asks
        to (-EINTR: a slice ended, and Python ran its signal handlers in
        between; -EBUSY: another thread's message is half done; -EMSGSIZE
        with ``grow``: a bigger buffer was made), then return what is
        non-negative or raise what is not."""
        try:
            while True:
                if rc == _EINTR:
                    pass
                elif rc == _EBUSY:
                    if self._busy(dl):
                        rc = _ETIMEDOUT
                        break
                elif rc == _EMSGSIZE and grow is not None:
                    grow()
                else:
                    break
                rc = again()
        except BaseException:
            self._settle(0, direction)
            raise
        if rc < 0:
            self._fail(rc, direction)
        return rc

    def _settle(self, rc: int, direction: int) -> None:
        """Close the channel if ``rc`` (0: an exception) left its
        stream out of step: a message half sent or half received and given
        up, or bytes that are not messages."""
        h = self._h
        if h is None:
            return
        if rc in (_EBADMSG, _ECONNRESET, _ENOTRECOVERABLE) or lib.pyipc_chan_midframe(h, direction):
            self.close()

    def _fail(self, rc: int, direction: int) -> NoReturn:
        """Raise the exception for a C error ``rc`` of a send (direction 1)
        or receive (0), closing the channel first if the stream is now out
        of step (see ``_settle``)."""
        if rc == _EBADF and self._h is None:
            raise _closed_error()  # else a bad descriptor given to send_fds
        self._settle(rc, direction)
        if rc == _EAGAIN:
            rc = _ETIMEDOUT
        if direction == 0 and rc == _EPIPE:
            raise EOFError("the peer closed the channel")
        if direction == 0 and rc == _ECONNRESET:
            raise EOFError("the peer closed the channel in the middle of a message")
        if rc == _ENOTRECOVERABLE:
            raise IPCError("this process was forked while another thread was in the middle"
                           " of a stream message on this channel: the stream is out of step here")
        raise error_from(rc, self._name)

    # ---- send ----

    def send(self, data: Any, timeout: Optional[float] = None) -> None:
        """Send one message (any bytes-like object; empty is valid).

        Raises ``TimeoutError`` if it could not be sent in time (``timeout=0``
        never waits), ``BrokenPipeError`` if the peer is gone,
        ``MessageTooLarge`` if it can never fit (packets, queues),
        ``TypeError`` for data that is not a contiguous bytes-like object,
        ``ValueError`` if the channel is closed, receive-only, or
        ``timeout`` is negative.
        """
        # The hot path: one C call, no closure.  The C side takes bytes (or
        # a cdata buffer) as `const void *` and cffi raises TypeError for
        # anything else, and for a closed or receive-only end (None): those
        # go to _send_slow.
        dl = FOREVER if timeout is None else channel_deadline(timeout)
        h = self._tx
        try:
            rc = _send(h, data, len(data), dl)
        except TypeError:
            return self._send_slow(data, dl)
        if rc:
            self._send_again(rc, h, data, dl)

    def _send_slow(self, data: Any, dl: int) -> None:
        h = self._check(self._wfd >= 0, "send")
        p = readable(data)
        rc = _send(h, p, len(p), dl)
        if rc:
            self._send_again(rc, h, p, dl)

    def _send_again(self, rc: int, h: Any, p: Any, dl: int) -> None:
        self._retry(rc, lambda: int(_send(h, p, len(p), dl)), dl, 1)

    def send_many(self, items: Sequence[Any], timeout: Optional[float] = None) -> None:
        """Send several messages in order, with as few system calls as the
        kind allows: one ``writev`` for many frames on a stream, one
        ``sendmmsg`` per 64 packets, a loop in C for a message queue.

        Raises what ``send`` raises; the exception's ``sent`` attribute says
        how many messages went out whole before it (a stream half-way
        through one is closed, as by ``send``).
        """
        h = self._tx
        if h is None:
            h = self._check(self._wfd >= 0, "send")
        dl = FOREVER if timeout is None else channel_deadline(timeout)
        if not isinstance(items, (list, tuple)):
            items = list(items)
        if not items:
            return
        lens = list(map(len, items))
        total = sum(lens)
        if total > _JOIN_MAX:
            return self._send_each(h, items, dl)
        try:
            data = b"".join(items)
        except (BufferError, TypeError):
            raise TypeError("every message must be a contiguous bytes-like object") from None
        if total != len(data):  # items whose len() counts elements, not bytes
            lens = [memoryview(m).nbytes for m in items]
        arr = _new_raw("uint64_t[]", lens)
        sent = ffi.new("size_t *")
        rc = _send_many(h, data, arr, len(lens), sent, dl)
        if rc:
            self._send_many_slow(rc, h, data, arr, lens, sent, dl)

    def _send_many_slow(self, rc: int, h: Any, data: bytes, arr: Any, lens: List[int],
                        sent: Any, dl: int) -> None:
        p = _from_buffer("char[]", data)
        done = [0, 0]  # messages and bytes sent by the calls so far

        def again() -> int:
            k = int(sent[0])
            done[1] += sum(lens[done[0]:done[0] + k])
            done[0] += k
            return int(_send_many(h, p + done[1], arr + done[0], len(lens) - done[0], sent, dl))

        try:
            self._retry(rc, again, dl, 1)
        except BaseException as exc:
            exc.sent = done[0] + int(sent[0])  # type: ignore[attr-defined]
            raise

    def _send_each(self, h: Any, items: Sequence[Any], dl: int) -> None:
        # Large messages: one system call each anyway, and no copy to join.
        for i, m in enumerate(items):
            try:
                p = readable(m)
                rc = _send(h, p, len(p), dl)
                if rc:
                    self._send_again(rc, h, p, dl)
            except BaseException as exc:
                exc.sent = i  # type: ignore[attr-defined]
                raise

    # ---- receive ----

    def _new_slot(self, size: int = 0) -> Tuple[Any, Any]:
        """A receive buffer of at least ``size`` bytes and the ffi.buffer
        over it, whose slices are the received messages as bytes."""
        buf = _new_raw("char[]", max(size, self._bufsize))
        return buf, _ffi_buffer(buf)

    def recv(self, timeout: Optional[float] = None) -> bytes:
        """Receive one message and return it.

        Raises ``EOFError`` once the peer has closed and everything it sent
        was received, ``TimeoutError`` if nothing came in time
        (``timeout=0`` never waits), ``ValueError`` if the channel is
        closed, send-only, or ``timeout`` is negative.
        """
        # The hot path: one C call, no closure.  The receive buffer is taken
        # out of its slot while in use (atomic under the GIL): a second
        # thread receiving meanwhile makes its own.
        slot = self._slot
        if slot is None:
            slot = self._new_slot()
        else:
            self._slot = None
        dl = FOREVER if timeout is None else channel_deadline(timeout)
        h = self._rx
        try:
            n = _recv(h, slot[0], self._bufsize, dl)
        except TypeError:  # h is None: closed, or a send-only end
            self._slot = slot
            self._check(self._rfd >= 0, "receive")
            raise
        if n < 0:
            return self._recv_again(n, h, slot, dl)
        data: bytes = slot[1][:n]
        self._slot = slot
        return data

    def _recv_again(self, n: int, h: Any, slot: Tuple[Any, Any], dl: int) -> bytes:
        box: List[Any] = [slot, self._bufsize]

        def grow() -> None:
            # recv() always takes the message: a buffer that fits it.
            need = int(lib.pyipc_chan_need(h))
            box[0], box[1] = self._new_slot(need), need

        n = self._retry(n, lambda: int(_recv(h, box[0][0], box[1], dl)), dl, 0, grow)
        data: bytes = box[0][1][:n]
        self._slot = slot  # the usual size, whatever was grown for this one
        return data

    def recv_into(self, buffer: Any, timeout: Optional[float] = None) -> int:
        """Receive one message into a writable buffer; return its length.

        A buffer too small raises ``MessageTooLarge`` and the message is kept
        for the next receive on this handle.  Also raises what ``recv``
        raises, and ``TypeError`` if ``buffer`` is not a writable,
        contiguous buffer.
        """
        h = self._rx
        if h is None:
            h = self._check(self._rfd >= 0, "receive")
        p = _writable(buffer)
        dl = FOREVER if timeout is None else channel_deadline(timeout)
        n = _recv(h, p, len(p), dl)
        if n < 0:
            if n != _EMSGSIZE:
                n = self._retry(n, lambda: _recv(h, p, len(p), dl), dl, 0)
            if n == _EMSGSIZE:
                raise MessageTooLarge(
                    f"message of {int(lib.pyipc_chan_need(h))} bytes does not fit"
                    f" in a buffer of {len(p)}; it is kept for the next receive"
                )
        return int(n)

    def recv_many(self, max_messages: int, timeout: Optional[float] = None) -> List[bytes]:
        """Wait for one message, then return it and up to ``max_messages - 1``
        more of those already there, without waiting for them.

        One system call for many messages where the kind allows it: one
        read (after a ``FIONREAD``) of a stream, one ``recvmmsg`` of up to
        64 packets, a loop in C over a message queue.  Raises what ``recv``
        raises, and ``ValueError`` if ``max_messages`` is below 1.
        """
        want = check_int(max_messages, "max_messages", 1)
        h = self._rx
        if h is None:
            h = self._check(self._rfd >= 0, "receive")
        dl = FOREVER if timeout is None else channel_deadline(timeout)
        pool = self._many_pool
        entry = pool.pop() if pool else self._new_many_buf(0)
        buf, cap, view, lens = entry
        want = want if want < _MANY_MAX else _MANY_MAX
        n = _recv_many(h, buf, cap, lens, want, dl)
        if n < 0:
            n, view = self._recv_many_again(n, h, entry, want, dl)
        sizes: List[int] = _unpack(lens, n)
        # Each message sliced straight from the buffer: one copy.
        out: List[bytes] = []
        append = out.append
        o = 0
        for size in sizes:
            e = o + size
            append(view[o:e])
            o = e
        pool.append(entry)  # the usual size, whatever was grown for this call
        return out

    def _recv_many_again(self, n: int, h: Any, entry: Tuple[Any, int, Any, Any], want: int,
                         dl: int) -> Tuple[int, Any]:
        box: List[Any] = list(entry)

        def grow() -> None:
            # The first message is larger than the buffer: one that fits it.
            box[:3] = self._new_many_buf(int(lib.pyipc_chan_need(h)))[:3]

        n = self._retry(n, lambda: int(_recv_many(h, box[0], box[1], box[3], want, dl)), dl, 0,
                        grow)
        return n, box[2]

    def _new_many_buf(self, size: int) -> Tuple[Any, int, Any, Any]:
        """A recv_many buffer of at least ``size`` bytes, its size, the
        ffi.buffer over it and an array for the lengths."""
        # Packet channels need room for up to BATCH of the largest packet
        # the kernel allows (megabytes each): memory that costs only the
        # pages the messages are written to.
        cap = max(size, int(lib.pyipc_chan_many_bufsize(self._check(True, ""), BATCH)))
        buf = lib.pyipc_buf_alloc(cap)
        if buf == _NULL:
            raise MemoryError(f"cannot map a receive buffer of {cap} bytes")
        buf = ffi.gc(buf, lib.pyipc_buf_free)
        return buf, cap, _ffi_buffer(buf, cap), _new_raw("uint64_t[]", _MANY_MAX)

    # ---- asyncio ----

    async def send_async(self, data: Any) -> None:
        """Send one message, awaiting room with the event loop (never
        blocking it).  Raises what ``send`` raises, except ``TimeoutError``;
        cancelled half-way through a stream message, the channel closes."""
        h = self._check(self._wfd >= 0, "send")
        p = readable(data)
        await self._async_call(lambda: int(_send(h, p, len(p), NOWAIT)), 1)

    async def recv_async(self) -> bytes:
        """Receive one message, awaiting it with the event loop (never
        blocking it).  Raises what ``recv`` raises, except ``TimeoutError``."""
        h = self._check(self._rfd >= 0, "receive")
        slot = self._slot
        if slot is None:
            slot = self._new_slot()
        else:
            self._slot = None
        box: List[Any] = [slot, self._bufsize]

        def call() -> int:
            n = int(_recv(h, box[0][0], box[1], NOWAIT))
            if n == _EMSGSIZE:
                need = int(lib.pyipc_chan_need(h))
                box[0], box[1] = self._new_slot(need), need
                return _EINTR  # call again at once, with the bigger buffer
            return n

        n = await self._async_call(call, 0)
        data: bytes = box[0][1][:n]
        self._slot = slot
        return data

    async def _async_call(self, call: Callable[[], int], direction: int) -> int:
        """``call`` (a non-blocking C call) until it succeeds, awaiting the
        descriptor between tries: the asyncio form of ``_retry``."""
        fd = self._wfd if direction else self._rfd
        try:
            while True:
                rc = call()
                if rc >= 0:
                    return rc
                if rc == _EAGAIN:
                    await wait_fd(fd, bool(direction))
                elif rc == _EBUSY:
                    await asyncio.sleep(0.001)
                elif rc != _EINTR:
                    self._fail(rc, direction)
        except BaseException:
            self._settle(0, direction)
            raise
