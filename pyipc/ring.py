"""``RingBuffer``: messages of bytes through a ring in POSIX shared memory.

The ring lives in ``/dev/shm/<name>``; any process that knows the name can
attach.  All the work happens in the C core (``csrc/ring.c``); this module
turns ``queue``-style arguments into C deadlines and C return codes into
exceptions.  The hot paths (``put``, ``get``) make one C call each and avoid
every other allocation they can: receive buffers are pooled per handle.
"""
from __future__ import annotations

import operator
import os
import secrets
from typing import Any, Iterable, List, Optional, Sequence, Tuple

from . import _reactor
from ._core import ffi, lib
from ._util import FOREVER, NOWAIT as _NOWAIT, deadline, shm_name
from .errors import Empty, Full, MessageTooLarge, ShutDown, error_from
from .errors import (
    RC_EINTR as _EINTR,
    RC_EAGAIN as _EAGAIN,
    RC_ETIMEDOUT as _ETIMEDOUT,
    RC_EMSGSIZE as _EMSGSIZE,
    RC_EBADF as _EBADF,
    RC_ESHUTDOWN as _ESHUTDOWN,
)

__all__ = ["RingBuffer", "DEFAULT_CAPACITY"]

DEFAULT_CAPACITY = 1 << 20
_FIRST_BUFFER = 64 * 1024  # receive buffers start here and grow on demand
_JOIN_MAX = 256 * 1024  # put_many joins batches up to this many bytes


# Bound once: attribute lookups on cffi's `lib` cost more than the calls.
_c_put = lib.pyipc_ring_put
_c_get = lib.pyipc_ring_get
_c_get_many = lib.pyipc_ring_get_many
_from_buffer = ffi.from_buffer
_unpack = ffi.unpack
_NULL = ffi.NULL

_STAT_KEYS = ("puts", "gets", "bytes_put", "bytes_got", "put_waits", "get_waits")
_INFO_KEYS = (
    "capacity",
    "max_message_size",
    "max_messages",
    "messages",
    "bytes_used",
    *_STAT_KEYS,
    "recoveries",
    "version",
    "shutdown",
    "creator_pid",
)

# A receive buffer: (char[] cdata, its size, a uint64_t* for "needed").
_RecvBuf = Tuple[Any, int, Any]


def _new_recv_buf(size: int) -> _RecvBuf:
    return (ffi.new("char[]", size), size, ffi.new("uint64_t *"))


def _grown(size: int, needed: int) -> int:
    """The next receive-buffer size: a power of two that holds `needed`."""
    while size < needed:
        size *= 2
    return size


def _closed() -> ValueError:
    return ValueError("operation on a closed RingBuffer")


class RingBuffer:
    """A multi-producer, multi-consumer queue of bytes in shared memory.

    ``RingBuffer(name, create=True, capacity=..., mode=0o600)`` makes a new
    segment (``FileExistsError`` if the name is taken); ``RingBuffer(name)``
    attaches to an existing one (``FileNotFoundError``, ``PermissionError``,
    or ``CorruptedError`` if it is not a valid ring).  ``name`` follows
    ``multiprocessing.shared_memory``: the leading ``/`` is optional, no other
    ``/``, at most 200 characters (``ValueError``).

    ``max_messages`` (an extension; 0 = unbounded) bounds the number of
    queued messages as well as their bytes; it is kept in the segment.
    """

    __slots__ = ("_h", "_name", "_capacity", "_max_message_size", "_max_messages", "_bufs", "_aio", "__weakref__")

    def __init__(
        self,
        name: Optional[str] = None,
        *,
        create: bool = False,
        capacity: Optional[int] = None,
        mode: int = 0o600,
        max_messages: int = 0,
    ) -> None:
        self._h: Any = None
        self._bufs: List[_RecvBuf] = []
        # The asyncio waits on this handle's words (a _reactor.WaitGuard),
        # made by the first one.
        self._aio: Any = None
        out = ffi.new("pyipc_ring **")
        if create:
            if name is None:
                name = "pyipc-" + secrets.token_hex(8)
            bare = shm_name(name)
            cap = DEFAULT_CAPACITY if capacity is None else operator.index(capacity)
            if cap <= 0:
                raise ValueError("'capacity' must be a positive number of bytes")
            if cap > 1 << 32:
                raise ValueError("'capacity' must be at most 4 GiB")
            max_messages = operator.index(max_messages)
            if max_messages < 0:
                raise ValueError("'max_messages' must be >= 0")
            mode = operator.index(mode)
            if not 0 <= mode <= 0o7777:
                raise ValueError("'mode' must be permission bits (0 to 0o7777)")
            rc = lib.pyipc_ring_create(os.fsencode("/" + bare), cap, max_messages, mode, out)
        else:
            if name is None:
                raise ValueError("'name' is required to attach to an existing ring")
            bare = shm_name(name)
            rc = lib.pyipc_ring_attach(os.fsencode("/" + bare), out)
        if rc < 0:
            raise error_from(rc, bare)
        self._h = ffi.gc(out[0], lib.pyipc_ring_free)
        self._name = bare
        self._capacity = int(lib.pyipc_ring_capacity(self._h))
        self._max_message_size = int(lib.pyipc_ring_max_message_size(self._h))
        self._max_messages = int(lib.pyipc_ring_max_messages(self._h))

    # ---- attributes ------------------------------------------------------

    @property
    def name(self) -> str:
        """The segment's name, without the leading ``/``."""
        return self._name

    @property
    def capacity(self) -> int:
        """Bytes of record space (requested capacity rounded up to a power of two)."""
        return self._capacity

    @property
    def max_message_size(self) -> int:
        """The largest message that always fits in an empty ring."""
        return self._max_message_size

    @property
    def max_messages(self) -> int:
        """The bound on queued messages kept in the segment (0: none)."""
        return self._max_messages

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called on this handle."""
        return self._h is None

    def __repr__(self) -> str:
        state = "closed" if self._h is None else f"capacity={self._capacity}"
        return f"<pyipc.RingBuffer name={self._name!r} {state}>"

    # ---- producing -------------------------------------------------------

    def put(
        self,
        data: Any,
        block: bool = True,
        timeout: Optional[float] = None,
        *,
        wait_consumed: bool = False,
    ) -> None:
        """Enqueue one message (any bytes-like object; empty is fine).

        Waits for room as ``queue.Queue.put`` does.  With
        ``wait_consumed=True``, also waits until a consumer has taken the
        message; the timeout covers both waits.

        Raises ``Full`` (no room in time), ``TimeoutError`` (queued but not
        taken in time; it stays queued), ``MessageTooLarge`` (longer than
        ``max_message_size``), ``ShutDown``, ``TypeError`` (not bytes-like),
        ``ValueError`` (closed handle, negative timeout), ``CorruptedError``.
        """
        h = self._h
        if h is None:
            raise _closed()
        d = FOREVER if (block and timeout is None) else deadline(block, timeout)
        # bytes go to C as they are (cffi passes their internal pointer);
        # anything else through the buffer protocol (TypeError if not one).
        buf = data if type(data) is bytes else _from_buffer(data)
        seq = ffi.new("uint64_t *") if wait_consumed else _NULL
        n = len(buf)
        while True:
            rc = _c_put(h, buf, n, d, seq)
            if rc == 0:
                break
            if rc != _EINTR:
                raise self._put_error(rc, n)
        if wait_consumed:
            self._wait_consumed(h, seq[0], d)

    def _wait_consumed(self, h: Any, seq: int, d: int) -> None:
        while True:
            rc = lib.pyipc_ring_wait_consumed(h, seq, d)
            if rc == 0:
                return
            if rc == _EINTR:
                continue
            if rc in (_EAGAIN, _ETIMEDOUT):
                raise TimeoutError("the message was queued but no consumer took it in time")
            raise self._error(rc)

    def put_nowait(self, data: Any) -> None:
        """``put(data, block=False)``."""
        self.put(data, False)

    def put_many(self, items: Iterable[Any], block: bool = True, timeout: Optional[float] = None) -> int:
        """Enqueue several messages in order, as many per lock round trip as fit.

        Returns how many were enqueued: all of them, unless ``block=False`` or
        the timeout stops it at the first one that did not fit in time.
        Raises ``MessageTooLarge`` for an item that can never fit (those
        before it stay queued), ``ShutDown``, ``TypeError``, ``ValueError``.
        """
        h = self._h
        if h is None:
            raise _closed()
        d = FOREVER if (block and timeout is None) else deadline(block, timeout)
        if not isinstance(items, (list, tuple)):
            items = list(items)
        if not items:
            return 0
        # memoryview() is the TypeError for anything not bytes-like.
        sizes = [len(x) if type(x) is bytes else memoryview(x).nbytes for x in items]
        if sum(sizes) > _JOIN_MAX:
            return self._put_each(h, items, sizes, d)
        # Small messages travel joined: one copy here is far cheaper than
        # one buffer object per message.
        blob = b"".join(items)
        lens = ffi.new("uint64_t[]", sizes)
        base = ffi.from_buffer(blob)
        done = ffi.new("size_t *")
        total = len(items)
        queued = 0
        offset = 0
        while True:
            rc = lib.pyipc_ring_put_many(h, base + offset, lens + queued, total - queued, d, done)
            offset += sum(sizes[queued : queued + done[0]])
            queued += int(done[0])
            if rc == 0:
                return queued
            if rc == _EINTR:
                continue
            if rc in (_EAGAIN, _ETIMEDOUT):
                return queued
            raise self._put_error(rc, sizes[queued])

    def _put_each(self, h: Any, items: Sequence[Any], sizes: List[int], d: int) -> int:
        """put_many for large messages: one record per call, no joined copy
        (each is a lock round trip, which is nothing beside its copy)."""
        for queued, (item, size) in enumerate(zip(items, sizes)):
            buf = item if type(item) is bytes else _from_buffer(item)
            while True:
                rc = _c_put(h, buf, size, d, _NULL)
                if rc != _EINTR:
                    break
            if rc in (_EAGAIN, _ETIMEDOUT):
                return queued
            if rc:
                raise self._put_error(rc, size)
        return len(items)

    # ---- consuming -------------------------------------------------------

    def get(self, block: bool = True, timeout: Optional[float] = None) -> bytes:
        """Dequeue the oldest message and return it as ``bytes``.

        Raises ``Empty`` (nothing in time), ``ShutDown`` (shut down and
        drained), ``ValueError`` (closed handle, negative timeout),
        ``CorruptedError``.
        """
        h = self._h
        if h is None:
            raise _closed()
        d = FOREVER if (block and timeout is None) else deadline(block, timeout)
        # Receive buffers are pooled per handle; list pop/append are atomic
        # under the GIL, so threads sharing a handle never share a buffer.
        bufs = self._bufs
        rbuf = bufs.pop() if bufs else _new_recv_buf(_FIRST_BUFFER)
        # The common case, straight-line: one C call, one bytes object.
        n = _c_get(h, rbuf[0], rbuf[1], d, rbuf[2])
        if n >= 0:
            data: bytes = _unpack(rbuf[0], n)
            bufs.append(rbuf)
            return data
        return self._get_retry(h, d, rbuf, n)

    def _get_retry(self, h: Any, d: int, rbuf: _RecvBuf, n: int) -> bytes:
        """get's rarer paths: a slice ended, a signal, or too small a buffer."""
        try:
            while True:
                buf, size, need = rbuf
                if n >= 0:
                    return _unpack(buf, n)  # type: ignore[no-any-return]
                if n == _EMSGSIZE:
                    rbuf = _new_recv_buf(_grown(size, need[0]))
                elif n != _EINTR:
                    raise self._get_error(n)
                buf, size, need = rbuf
                n = _c_get(h, buf, size, d, need)
        finally:
            self._bufs.append(rbuf)

    def get_nowait(self) -> bytes:
        """``get(block=False)``."""
        return self.get(False)

    def get_into(self, buffer: Any, block: bool = True, timeout: Optional[float] = None) -> int:
        """Dequeue the oldest message into a writable buffer; return its length.

        A buffer too small for the message raises ``MessageTooLarge`` and the
        message stays queued.  Other errors as ``get``; ``TypeError`` for a
        read-only or non-buffer object.
        """
        h = self._h
        if h is None:
            raise _closed()
        d = FOREVER if (block and timeout is None) else deadline(block, timeout)
        try:
            buf = ffi.from_buffer(buffer, require_writable=True)
        except BufferError as e:
            raise TypeError(f"get_into needs a writable bytes-like buffer: {e}") from None
        need = ffi.new("uint64_t *")
        size = len(buf)
        while True:
            n = _c_get(h, buf, size, d, need)
            if n >= 0:
                return int(n)
            if n == _EINTR:
                continue
            if n == _EMSGSIZE:
                raise MessageTooLarge(
                    f"a buffer of {size} bytes is too small for the next message ({need[0]} bytes)"
                )
            raise self._get_error(n)

    def get_many(self, max_messages: int, block: bool = True, timeout: Optional[float] = None) -> List[bytes]:
        """Wait for at least one message, then return up to ``max_messages``.

        Never waits for more once one is there.  ``max_messages`` must be
        >= 1 (``ValueError``).  Errors as ``get``.
        """
        h = self._h
        if h is None:
            raise _closed()
        max_messages = operator.index(max_messages)
        if max_messages < 1:
            raise ValueError("'max_messages' must be >= 1")
        d = FOREVER if (block and timeout is None) else deadline(block, timeout)
        lens = ffi.new("uint64_t[]", max_messages)
        bufs = self._bufs
        rbuf = bufs.pop() if bufs else _new_recv_buf(_FIRST_BUFFER)
        try:
            while True:
                buf, size, need = rbuf
                n = _c_get_many(h, buf, size, lens, max_messages, d, need)
                if n > 0:
                    view = ffi.buffer(buf, size)
                    out = []
                    off = 0
                    for i in range(n):
                        end = off + lens[i]
                        out.append(view[off:end])
                        off = end
                    return out
                if n == _EINTR:
                    continue
                if n == _EMSGSIZE:
                    rbuf = _new_recv_buf(_grown(size, need[0]))
                    continue
                raise self._get_error(n)
        finally:
            bufs.append(rbuf)

    # ---- asyncio ---------------------------------------------------------
    #
    # Each coroutine tries the non-blocking call on the loop's thread and,
    # while it raises Empty/Full, waits for the ring's futex word through the
    # loop's waitset (pyipc/_reactor.py): no thread per waiter, never the
    # loop's executor.  A message is only ever taken by that non-blocking
    # call, between two awaits, so cancelling a coroutine loses nothing.

    async def get_async(self, timeout: Optional[float] = None) -> bytes:
        """Coroutine form of ``get``: waits without blocking the event loop.

        Cancelling it takes nothing off the ring.  Raises ``Empty`` when the
        timeout expires, and what ``get`` raises (``ShutDown``,
        ``ValueError`` if this handle is or gets closed, ``CorruptedError``).
        """
        d = FOREVER if timeout is None else deadline(True, timeout)
        h = self._h
        if h is not None:
            # The common case, a message already there, without the retry
            # loop's coroutine: get()'s fast path, with NOWAIT.
            bufs = self._bufs
            rbuf = bufs.pop() if bufs else _new_recv_buf(_FIRST_BUFFER)
            n = _c_get(h, rbuf[0], rbuf[1], _NOWAIT, rbuf[2])
            if n >= 0:
                data: bytes = _unpack(rbuf[0], n)
                bufs.append(rbuf)
                return data
            bufs.append(rbuf)
        return await _reactor.retry(self, False, 0, d, self.get_nowait)

    async def put_async(self, data: Any, timeout: Optional[float] = None) -> None:
        """Coroutine form of ``put``: waits for room without blocking the loop.

        Cancelling it before it returns leaves nothing queued.  Raises
        ``Full`` when the timeout expires, and what ``put`` raises.
        """
        d = FOREVER if timeout is None else deadline(True, timeout)
        buf = data if type(data) is bytes else _from_buffer(data)
        size = len(buf)
        h = self._h
        if h is not None and _c_put(h, buf, size, _NOWAIT, _NULL) == 0:
            return  # room at once: the common case, without the retry loop

        def attempt() -> None:
            h = self._h
            if h is None:
                raise _closed()
            rc = _c_put(h, buf, size, _NOWAIT, _NULL)
            while rc == _EINTR:
                rc = _c_put(h, buf, size, _NOWAIT, _NULL)
            if rc:
                raise self._put_error(rc, size)

        await _reactor.retry(self, True, size, d, attempt)

    async def get_many_async(self, max_messages: int, timeout: Optional[float] = None) -> List[bytes]:
        """Coroutine form of ``get_many``: wait for at least one message, then
        return up to ``max_messages`` without waiting for more.

        Cancelling it takes nothing.  Raises ``Empty`` when the timeout
        expires, and what ``get_many`` raises.
        """
        max_messages = operator.index(max_messages)
        if max_messages < 1:
            raise ValueError("'max_messages' must be >= 1")
        return await _reactor.retry(
            self, False, 0, deadline(True, timeout), lambda: self.get_many(max_messages, False)
        )

    async def put_many_async(self, items: Iterable[Any], timeout: Optional[float] = None) -> int:
        """Coroutine form of ``put_many``: enqueue the messages in order, as
        many per lock round trip as fit, waiting for room between batches.

        Returns how many were enqueued: all, unless the timeout expired
        first (as ``put_many``, it then returns the count, it does not raise
        ``Full``).  If the coroutine is cancelled, the messages enqueued
        before that stay queued and the others are not: always a prefix of
        ``items``, each message once.  Raises what ``put_many`` raises.
        """
        if not isinstance(items, (list, tuple)):
            items = list(items)
        sizes = [len(x) if type(x) is bytes else memoryview(x).nbytes for x in items]
        d = deadline(True, timeout)
        total = len(items)
        queued = 0

        def attempt() -> None:
            nonlocal queued
            queued += self.put_many(items[queued:] if queued else items, False)
            if queued < total:
                raise Full("no room in the ring")

        try:
            await _reactor.retry(self, True, lambda: sizes[queued], d, attempt)
        except Full:
            pass  # the timeout: return how many went in
        return queued

    # ---- state -----------------------------------------------------------

    def qsize(self) -> int:
        """The number of messages queued now."""
        h = self._h
        if h is None:
            raise _closed()
        return int(lib.pyipc_ring_qsize(h))

    def __len__(self) -> int:
        return self.qsize()

    def empty(self) -> bool:
        """True if no message is queued now."""
        return self.qsize() == 0

    def shutdown(self, immediate: bool = False) -> None:
        """Shut the ring down for every handle, now and later attached.

        Further puts raise ``ShutDown``; gets drain what is queued (nothing
        if ``immediate``) and then raise ``ShutDown``; every blocked caller
        wakes.
        """
        h = self._h
        if h is None:
            raise _closed()
        rc = lib.pyipc_ring_shutdown(h, 1 if immediate else 0)
        if rc < 0:
            raise self._error(rc)

    def info(self) -> dict[str, int]:
        """Everything the header says: geometry, counters, shutdown state
        (0 open, 1 shut down, 2 shut down immediately), creator pid."""
        h = self._h
        if h is None:
            raise _closed()
        out = ffi.new("struct pyipc_ring_info *")
        rc = lib.pyipc_ring_info(h, out)
        if rc < 0:
            raise self._error(rc)
        return {k: int(getattr(out, k)) for k in _INFO_KEYS}

    def stats(self) -> dict[str, int]:
        """Counters kept in the segment: puts, gets, bytes_put, bytes_got,
        put_waits, get_waits (how often a producer or consumer slept),
        plus messages queued now and lock recoveries."""
        info = self.info()
        return {k: info[k] for k in (*_STAT_KEYS, "messages", "recoveries")}

    def check(self) -> int:
        """Walk and validate every queued record; return how many there are.

        Raises ``CorruptedError`` if any record fails validation.
        """
        h = self._h
        if h is None:
            raise _closed()
        while True:
            rc = lib.pyipc_ring_check(h)
            if rc >= 0:
                return int(rc)
            if rc != _EINTR:
                raise self._error(rc)

    # ---- lifetime --------------------------------------------------------

    def close(self) -> None:
        """Detach this handle (idempotent).  Calls blocked in other threads
        on this handle return with ``ValueError``."""
        h = self._h
        if h is None:
            return
        self._h = None
        self._bufs = []
        # Before the unmap: take this handle's words out of every event
        # loop's waitset, and wake those coroutines (they raise ValueError).
        guard = self._aio
        if guard is not None:
            guard.close()
        lib.pyipc_ring_close(h)

    def unlink(self) -> None:
        """Remove the segment's name; handles attached now keep working.

        Raises ``FileNotFoundError`` if the name is already gone.
        """
        rc = lib.pyipc_ring_unlink(os.fsencode("/" + self._name))
        if rc < 0:
            raise error_from(rc, self._name)

    def __enter__(self) -> "RingBuffer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> Tuple[Any, Tuple[str]]:
        # Pickles by name: the receiving process attaches to the same segment.
        return (RingBuffer, (self._name,))

    # ---- errors ----------------------------------------------------------

    def _error(self, rc: int) -> Exception:
        if rc == _EBADF:
            return _closed()
        return error_from(rc, self._name)

    def _put_error(self, rc: int, size: int) -> Exception:
        if rc in (_EAGAIN, _ETIMEDOUT):
            return Full("no room in the ring" + (" in time" if rc == _ETIMEDOUT else ""))
        if rc == _EMSGSIZE:
            return MessageTooLarge(
                f"a message of {size} bytes can never fit (max_message_size is {self._max_message_size})"
            )
        if rc == _ESHUTDOWN:
            return ShutDown(f"ring {self._name!r} is shut down")
        return self._error(rc)

    def _get_error(self, rc: int) -> Exception:
        if rc in (_EAGAIN, _ETIMEDOUT):
            return Empty("no message" + (" in time" if rc == _ETIMEDOUT else ""))
        if rc == _ESHUTDOWN:
            return ShutDown(f"ring {self._name!r} is shut down")
        return self._error(rc)
