"""``RingBuffer``: messages of bytes through a ring in shared memory.

The ring lives in ``/dev/shm/<name>`` (or in a regular file, ``path=``); any
process that knows the name can attach.  All the work happens in the C core
(``csrc/ring.c``); this module turns ``queue``-style arguments into C
deadlines and C return codes into exceptions.  The hot paths (``put``,
``get``) make one C call each and avoid every other allocation they can:
receive buffers are pooled per handle.  Everything that retries after a
slice or maps a C code to an exception goes through ``_retry`` and
``_error``, the one place for each.
"""
from __future__ import annotations

import errno
import operator
import os
import secrets
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple, Union

from . import _reactor
from ._core import ffi, lib
from ._util import FOREVER, NOWAIT as _NOWAIT, deadline, shm_name
from .errors import CorruptedError, Empty, Full, IPCError, MessageTooLarge, ShutDown, error_from
from .errors import (
    RC_EINTR as _EINTR,
    RC_EAGAIN as _EAGAIN,
    RC_ETIMEDOUT as _ETIMEDOUT,
    RC_EMSGSIZE as _EMSGSIZE,
    RC_EBADF as _EBADF,
    RC_ESHUTDOWN as _ESHUTDOWN,
    RC_EBADMSG as _EBADMSG,
)
from .lease import Reservation, View

__all__ = ["RingBuffer", "DEFAULT_CAPACITY"]

DEFAULT_CAPACITY = 1 << 20
MAX_CAPACITY = 1 << 32
_FIRST_BUFFER = 64 * 1024  # receive buffers start here and grow on demand
_JOIN_MAX = 256 * 1024  # put_many joins batches up to this many bytes
_ANON = -1  # the _flags of a ring with no name
_RC_ENOSPC = -28
_RC_ESTALE = -116

# Bound once: attribute lookups on cffi's `lib` cost more than the calls.
_c_put = lib.pyipc_ring_put
_c_get = lib.pyipc_ring_get
_c_get_many = lib.pyipc_ring_get_many
_c_copy = lib.pyipc_copy
_c_reserve = lib.pyipc_ring_reserve
_c_view = lib.pyipc_ring_view
_LEASE = ffi.typeof("struct pyipc_lease *")


def _new_lease() -> Any:
    return ffi.new(_LEASE)
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
    "reserves",
    "views",
    "hdr_size",
    "version",
    "shutdown",
    "creator_pid",
    "owner",
)

# What each kind of operation raises for the codes that mean "no".
_PUT, _GET, _WAIT = 0, 1, 2

# A receive buffer: (char[] cdata, its size, a uint64_t* for "needed", a
# memoryview of the whole buffer for decoders that read it in place).
_RecvBuf = Tuple[Any, int, Any, memoryview]
Decode = Callable[[_RecvBuf, int], Any]


def _new_recv_buf(size: int) -> _RecvBuf:
    buf = ffi.new("char[]", size)
    return (buf, size, ffi.new("uint64_t *"), memoryview(ffi.buffer(buf)))


def _grown(size: int, needed: int) -> int:
    """The next receive-buffer size: a power of two that holds `needed`."""
    while size < needed:
        size *= 2
    return size


def _closed() -> ValueError:
    return ValueError("operation on a closed RingBuffer")


def _bytes_like(data: Any) -> Any:
    """``data`` as something cffi passes as a pointer: bytes as they are,
    any other contiguous buffer through the buffer protocol."""
    if type(data) is bytes:
        return data
    try:
        return _from_buffer(data)
    except BufferError as e:  # a non-contiguous view: not bytes-like for us
        raise TypeError(f"a contiguous bytes-like object is required: {e}") from None


def _where(name: Optional[str], path: Any) -> Tuple[bytes, int, str]:
    """Validate name/path; return (C argument, flags, display name)."""
    if path is not None:
        if name is not None:
            raise ValueError("give either 'name' or 'path', not both")
        p = os.fspath(path)
        raw = os.fsencode(p)
        if not raw or b"\0" in raw:
            raise ValueError(f"invalid path: {p!r}")
        return raw, lib.PYIPC_SEG_PATH, os.fsdecode(p)
    assert name is not None
    bare = shm_name(name)
    return os.fsencode("/" + bare), 0, bare


def _int_arg(value: Any, what: str, low: int, high: int) -> int:
    """An integer argument in [low, high], else ValueError (never OverflowError)."""
    v = operator.index(value)
    if not low <= v <= high:
        raise ValueError(f"'{what}' must be between {low} and {high}, not {v}")
    return v


def corrupted(where: bytes, flags: int, what: str, kind: int = lib.PYIPC_KIND_RING) -> CorruptedError:
    """A CorruptedError that says what the segment at ``where`` is, when
    something of ``kind`` (a ring or a topic) was expected there."""
    probe = ffi.new("struct pyipc_seg_probe *")
    if lib.pyipc_seg_probe(where, flags, probe) < 0 or not probe.magic_ok:
        return CorruptedError(f"{what!r} is not a pyipc segment")
    if probe.version != lib.PYIPC_LAYOUT_VERSION:
        return CorruptedError(
            f"{what!r} has pyipc layout version {probe.version}, this pyipc reads version "
            f"{lib.PYIPC_LAYOUT_VERSION}: remove it (pyipc rm) and create it again"
        )
    if probe.kind == lib.PYIPC_KIND_TOPIC and kind != lib.PYIPC_KIND_TOPIC:
        return CorruptedError(f"{what!r} is a pyipc topic, not a ring: use Publisher or Subscriber")
    if probe.kind == lib.PYIPC_KIND_RING and kind != lib.PYIPC_KIND_RING:
        return CorruptedError(f"{what!r} is a pyipc ring, not a topic: use RingBuffer (or Queue)")
    if probe.kind not in (lib.PYIPC_KIND_RING, lib.PYIPC_KIND_TOPIC):
        return CorruptedError(f"{what!r} is a pyipc segment of an unknown kind ({probe.kind})")
    return CorruptedError(f"{what!r} fails validation: its header is damaged")


class RingBuffer:
    """A multi-producer, multi-consumer queue of bytes in shared memory.

    ``RingBuffer(name, create=True, capacity=..., mode=0o600)`` makes a new
    segment (``FileExistsError`` if the name is taken); ``RingBuffer(name)``
    attaches to an existing one (``FileNotFoundError``, ``PermissionError``,
    or ``CorruptedError`` if it is not a valid ring).  ``name`` follows
    ``multiprocessing.shared_memory``: the leading ``/`` is optional, no other
    ``/``, at most 200 characters (``ValueError``).  ``path=`` instead of
    ``name`` puts the ring in a regular file on any filesystem.

    ``max_messages`` (an extension; 0 = unbounded) bounds the number of
    queued messages as well as their bytes; it is kept in the segment.
    """

    __slots__ = (
        "_h",
        "_name",
        "_where",
        "_flags",
        "_path",
        "_capacity",
        "_max_message_size",
        "_max_messages",
        "_bufs",
        "_aio",
        "__weakref__",
    )

    def __init__(
        self,
        name: Optional[str] = None,
        *,
        create: bool = False,
        capacity: Optional[int] = None,
        mode: int = 0o600,
        max_messages: int = 0,
        path: Union[str, "os.PathLike[str]", None] = None,
    ) -> None:
        self._h: Any = None
        self._bufs: List[_RecvBuf] = []
        if create:
            if name is None and path is None:
                name = "pyipc-" + secrets.token_hex(8)
            where, flags, shown = _where(name, path)
            cap = DEFAULT_CAPACITY if capacity is None else _int_arg(capacity, "capacity", 1, MAX_CAPACITY)
            max_messages = _int_arg(max_messages, "max_messages", 0, MAX_CAPACITY // 8)
            mode = _int_arg(mode, "mode", 0, 0o7777)
            out = ffi.new("pyipc_ring **")
            rc = lib.pyipc_ring_create(where, flags, cap, max_messages, mode, out)
            self._adopt(rc, out, where, flags, shown)
        else:
            if name is None and path is None:
                raise ValueError("'name' or 'path' is required to attach to an existing ring")
            self._attach(name, path, 0)

    @classmethod
    def _anonymous(cls, capacity: Optional[int] = None, max_messages: int = 0) -> "RingBuffer":
        """A ring with no name (a sealed memfd): never in ``/dev/shm``, and
        other processes attach only through its descriptor, passed to them
        over a UNIX socket (``_share_fd``, ``_from_fd``), which needs no
        permission on any file.  For ``pyipc.rpc``."""
        cap = DEFAULT_CAPACITY if capacity is None else _int_arg(capacity, "capacity", 1, MAX_CAPACITY)
        max_messages = _int_arg(max_messages, "max_messages", 0, MAX_CAPACITY // 8)
        ring = cls.__new__(cls)
        ring._h = None
        ring._bufs = []
        out = ffi.new("pyipc_ring **")
        ring._adopt(lib.pyipc_ring_create_anon(cap, max_messages, out), out, b"", _ANON, "<anonymous>")
        return ring

    @classmethod
    def _from_fd(cls, fd: int) -> "RingBuffer":
        """Attach to a ring with no name through a descriptor another
        process passed us (the caller keeps ``fd``)."""
        ring = cls.__new__(cls)
        ring._h = None
        ring._bufs = []
        out = ffi.new("pyipc_ring **")
        rc = lib.pyipc_ring_attach_fd(operator.index(fd), out)
        if rc == _EBADMSG:
            raise CorruptedError(f"descriptor {fd} is not a pyipc ring")
        ring._adopt(rc, out, b"", _ANON, "<anonymous>")
        return ring

    def _share_fd(self) -> int:
        """The descriptor of a ring with no name, to pass to another process
        (borrowed: valid while this handle is open)."""
        return self._retry(lib.pyipc_ring_share_fd, self._handle())

    def _attach(self, name: Optional[str], path: Any, extra_flags: int) -> None:
        where, flags, shown = _where(name, path)
        out = ffi.new("pyipc_ring **")
        rc = lib.pyipc_ring_attach(where, flags | extra_flags, out)
        self._adopt(rc, out, where, flags, shown)

    def _adopt(self, rc: int, out: Any, where: bytes, flags: int, shown: str) -> None:
        """Take the C handle a create or attach made, or raise for ``rc``."""
        if rc < 0:
            if rc == _EBADMSG:
                raise corrupted(where, flags, shown)
            raise error_from(rc, shown)
        self._h = ffi.gc(out[0], lib.pyipc_ring_free)
        # The asyncio waits on this handle's words (a _reactor.WaitGuard),
        # made by the first one.
        self._aio: Any = None
        self._name = shown
        self._where = where
        self._flags = flags
        self._path = shown if flags != _ANON and flags & lib.PYIPC_SEG_PATH else None
        self._capacity = int(lib.pyipc_ring_capacity(self._h))
        self._max_message_size = int(lib.pyipc_ring_max_message_size(self._h))
        self._max_messages = int(lib.pyipc_ring_max_messages(self._h))

    # ---- attributes ------------------------------------------------------

    @property
    def name(self) -> Optional[str]:
        """The segment's name, without the leading ``/`` (``None`` for a ring
        in a file, or one with no name)."""
        return None if self._path is not None or self._flags == _ANON else self._name

    @property
    def path(self) -> Optional[str]:
        """The file a ring made with ``path=`` lives in, else ``None``."""
        return self._path

    @property
    def capacity(self) -> int:
        """Bytes of record space: the requested capacity rounded up to a
        power of two of at least one page (a huge page on hugetlbfs)."""
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
        what = f"path={self._path!r}" if self._path is not None else f"name={self._name!r}"
        return f"<pyipc.RingBuffer {what} {state}>"

    # ---- the one place for retries and errors ----------------------------

    def _error(self, rc: int, op: int = _WAIT, size: int = 0) -> Exception:
        """The exception for C code ``rc`` from an operation of kind ``op``."""
        if rc in (_EAGAIN, _ETIMEDOUT):
            late = " in time" if rc == _ETIMEDOUT else ""
            if op == _PUT:
                return Full("no room in the ring" + late)
            if op == _GET:
                return Empty("no message" + late)
            return TimeoutError("the message was queued but no consumer took it in time")
        if rc == _EMSGSIZE:
            if op == _GET:
                return MessageTooLarge(f"a buffer of {size} bytes is too small for the next message")
            return MessageTooLarge(
                f"a message of {size} bytes can never fit (max_message_size is {self._max_message_size})"
            )
        if rc == _ESHUTDOWN:
            return ShutDown(f"ring {self._name!r} is shut down")
        if rc == _EBADF:
            return _closed()
        if rc == _EBADMSG:
            return CorruptedError(
                f"ring {self._name!r} fails validation (a process wrote over it): "
                "see RingBuffer.repair() or `pyipc repair`"
            )
        if rc == _RC_ENOSPC:
            return IPCError(f"ring {self._name!r} has {lib.PYIPC_MAX_LEASES} leases open on this side already")
        if rc == _RC_ESTALE:
            return IPCError(f"the lease was dropped by repair() of ring {self._name!r}")
        return error_from(rc, self._name)

    def _lease_error(self, rc: int) -> Exception:
        return self._error(rc)

    def _again(self, rc: int, call: Callable[..., int], *args: Any, op: int = _WAIT, size: int = 0) -> int:
        """Finish a C call that returned ``rc``: call again while it returns
        -EINTR (a slice ended, or a signal: Python runs its handlers between
        two calls, so Ctrl-C interrupts a blocked call), raise for an error."""
        while rc == _EINTR:
            rc = call(*args)
        if rc >= 0:
            return int(rc)
        raise self._error(rc, op, size)

    def _retry(self, call: Callable[..., int], *args: Any, op: int = _WAIT, size: int = 0) -> int:
        """``call(*args)`` through ``_again``."""
        return self._again(call(*args), call, *args, op=op, size=size)

    def _handle(self) -> Any:
        h = self._h
        if h is None:
            raise _closed()
        return h

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
        # bytes go to C as they are (cffi passes their internal pointer).
        buf = data if type(data) is bytes else _bytes_like(data)
        ticket = ffi.new("uint64_t *") if wait_consumed else _NULL
        n = len(buf)
        rc = _c_put(h, buf, n, d, ticket)
        if rc:
            self._again(rc, _c_put, h, buf, n, d, ticket, op=_PUT, size=n)
        if wait_consumed:
            self._retry(lib.pyipc_ring_wait_consumed, h, ticket[0], d)

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
        h = self._handle()
        d = FOREVER if (block and timeout is None) else deadline(block, timeout)
        if not isinstance(items, (list, tuple)):
            items = list(items)
        if not items:
            return 0
        bufs = [_bytes_like(x) for x in items]
        sizes = [len(b) for b in bufs]
        if sum(sizes) > _JOIN_MAX:
            return self._put_each(h, bufs, sizes, d)
        # Small messages travel joined: one copy here is far cheaper than
        # one buffer object per message.
        blob = b"".join(bufs)
        lens = ffi.new("uint64_t[]", sizes)
        base = ffi.from_buffer(blob)
        done = ffi.new("size_t *")
        total = len(bufs)
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
            raise self._error(rc, _PUT, sizes[queued])

    def _put_each(self, h: Any, bufs: Sequence[Any], sizes: List[int], d: int) -> int:
        """put_many for large messages: one record per call, no joined copy
        (each is a lock round trip, which is nothing beside its copy)."""
        for queued, (buf, size) in enumerate(zip(bufs, sizes)):
            try:
                self._retry(_c_put, h, buf, size, d, _NULL, op=_PUT, size=size)
            except Full:
                return queued
        return len(bufs)

    def reserve(self, size: int, block: bool = True, timeout: Optional[float] = None) -> Reservation:
        """A context manager giving a writable ``memoryview`` of exactly
        ``size`` bytes inside the ring: write the message in place; it is
        published when the ``with`` block exits normally, dropped if it
        raises.  Waits for room like ``put`` (``Full``, ``MessageTooLarge``,
        ``ShutDown``).  See ``pyipc.lease`` for the rules that keep it safe.
        """
        size = _int_arg(size, "size", 0, MAX_CAPACITY)
        self._handle()
        return Reservation(self, size, block, timeout)

    def _reserve_raw(self, size: int, block: bool, timeout: Optional[float]) -> Tuple[Any, Any]:
        """Reserve ``size`` bytes: (C handle, ``struct pyipc_lease *``)."""
        h = self._handle()
        d = FOREVER if (block and timeout is None) else deadline(block, timeout)
        lease = _new_lease()
        rc = _c_reserve(h, size, d, lease)
        if rc:
            self._again(rc, _c_reserve, h, size, d, lease, op=_PUT, size=size)
        return h, lease

    def _put_gather(self, parts: Sequence[Any], block: bool, timeout: Optional[float]) -> None:
        """Put one message made of several bytes-like parts, copying each
        straight into a reservation (no joined copy).  For Queue."""
        bufs = [_bytes_like(p) for p in parts]
        total = sum(len(b) for b in bufs)
        h, lease = self._reserve_raw(total, block, timeout)
        publish = 0
        try:
            ptr = lease.ptr
            off = 0
            for b in bufs:
                n = len(b)
                _c_copy(ptr + off, b, n)  # releases the GIL for large copies
                off += n
            publish = 1
        finally:
            while lib.pyipc_ring_commit(h, lease, publish) == _EINTR:
                pass

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
        return self._get_slow(h, d, rbuf, n, _unpack_whole, None)  # type: ignore[no-any-return]

    def _get_slow(
        self, h: Any, d: int, rbuf: _RecvBuf, n: int, decode: Decode, large: Optional[Callable[[int, int], Any]]
    ) -> Any:
        """get's rarer paths: a slice ended, a signal, or a message larger
        than the pooled buffer (given to ``large(size, deadline)`` if set,
        else taken into a bigger pooled buffer); then ``decode(buffer,
        length)`` while the buffer is still ours.  ``rbuf`` came from the
        pool and goes back to it."""
        try:
            while True:
                if n >= 0:
                    return decode(rbuf, n)
                if n == _EMSGSIZE:
                    if large is not None:
                        needed = int(rbuf[2][0])
                        break
                    rbuf = _new_recv_buf(_grown(rbuf[1], rbuf[2][0]))
                elif n != _EINTR:
                    raise self._error(n, _GET, rbuf[1])
                n = _c_get(h, rbuf[0], rbuf[1], d, rbuf[2])
        finally:
            self._bufs.append(rbuf)
        assert large is not None
        return large(needed, d)

    def _queue_port(self) -> Tuple[Any, List[_RecvBuf]]:
        """What a Queue's hot paths need, made for it: this ring's C handle
        (to call ``pyipc_ring_put``/``_get`` on directly: a bound partial
        costs a tenth of a put) and the pool of receive buffers.  The Queue
        holds the handle, which keeps it alive; after close() the C calls
        return -EBADF, which ``_again`` and ``_get_slow`` turn into
        ValueError.  Every retry and error goes through those two."""
        return self._handle(), self._bufs

    def get_nowait(self) -> bytes:
        """``get(block=False)``."""
        return self.get(False)

    def get_into(self, buffer: Any, block: bool = True, timeout: Optional[float] = None) -> int:
        """Dequeue the oldest message into a writable buffer; return its length.

        A buffer too small for the message raises ``MessageTooLarge`` and the
        message stays queued.  Other errors as ``get``; ``TypeError`` for a
        read-only or non-buffer object.
        """
        self._handle()
        return self._get_into(buffer, FOREVER if (block and timeout is None) else deadline(block, timeout))

    def _get_into(self, buffer: Any, d: int, needed: Optional[List[int]] = None) -> int:
        """``get_into`` with a C deadline.  For Queue's large messages: with
        a ``needed`` list, a buffer too small appends the message's length
        there and returns -1 instead of raising."""
        h = self._handle()
        try:
            buf = ffi.from_buffer(buffer, require_writable=True)
        except (BufferError, TypeError) as e:
            raise TypeError(f"get_into needs a writable contiguous bytes-like buffer: {e}") from None
        need = ffi.new("uint64_t *")
        size = len(buf)
        while True:
            n = _c_get(h, buf, size, d, need)
            if n >= 0:
                return int(n)
            if n == _EMSGSIZE:
                if needed is not None:
                    needed.append(int(need[0]))
                    return -1
                raise MessageTooLarge(
                    f"a buffer of {size} bytes is too small for the next message ({need[0]} bytes)"
                )
            if n != _EINTR:
                raise self._error(n, _GET, size)

    def get_many(self, max_messages: int, block: bool = True, timeout: Optional[float] = None) -> List[bytes]:
        """Wait for at least one message, then return up to ``max_messages``.

        Never waits for more once one is there.  ``max_messages`` must be
        >= 1 (``ValueError``).  Errors as ``get``.
        """
        h = self._handle()
        max_messages = operator.index(max_messages)
        if max_messages < 1:
            raise ValueError("'max_messages' must be >= 1")
        # No ring holds more than one message per record header's worth of
        # bytes: size the length array by that, not by the argument.
        max_messages = min(max_messages, self._capacity // 8)
        d = FOREVER if (block and timeout is None) else deadline(block, timeout)
        lens = ffi.new("uint64_t[]", max_messages)
        bufs = self._bufs
        rbuf = bufs.pop() if bufs else _new_recv_buf(_FIRST_BUFFER)
        try:
            while True:
                buf, size, need, _ = rbuf
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
                raise self._error(n, _GET, size)
        finally:
            bufs.append(rbuf)

    def view(self, block: bool = True, timeout: Optional[float] = None) -> View:
        """A context manager giving a read-only ``memoryview`` of the oldest
        message in place.  The message is taken (no other consumer gets it)
        when the block is entered; its space goes back to the producers
        when the block exits.  Waits like ``get`` (``Empty``, ``ShutDown``).
        """
        self._handle()
        return View(self, 0, block, timeout)

    def _view_raw(self, block: bool, timeout: Optional[float]) -> Tuple[Any, Any]:
        """Take the oldest message as a lease: (C handle, ``struct pyipc_lease *``)."""
        h = self._handle()
        d = FOREVER if (block and timeout is None) else deadline(block, timeout)
        lease = _new_lease()
        rc = _c_view(h, d, lease)
        if rc < 0:
            self._again(rc, _c_view, h, d, lease, op=_GET)
        return h, lease

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
        buf = _bytes_like(data)
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
                raise self._error(rc, _PUT, size)

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
        return int(lib.pyipc_ring_qsize(self._handle()))

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
        self._retry(lib.pyipc_ring_shutdown, self._handle(), 1 if immediate else 0)

    def info(self) -> dict[str, int]:
        """Everything the header says: geometry, counters, open leases,
        shutdown state (0 open, 1 shut down, 2 shut down immediately, 3 a
        damaged shutdown word), creator pid, and this handle's owner id."""
        out = ffi.new("struct pyipc_ring_info *")
        self._retry(lib.pyipc_ring_info, self._handle(), out)
        return {k: int(getattr(out, k)) for k in _INFO_KEYS}

    def stats(self) -> dict[str, int]:
        """Counters kept in the segment: puts, gets, bytes_put, bytes_got,
        put_waits, get_waits (how often a producer or consumer slept),
        plus messages queued now and lock recoveries."""
        info = self.info()
        return {k: info[k] for k in (*_STAT_KEYS, "messages", "recoveries")}

    def check(self) -> int:
        """Walk and validate every queued record; return how many there are.

        Counts what consumers can take now: messages put after an open
        reservation count once it is committed or aborted (or, its holder
        dead, ended by the next call it is in the way of).

        Read-only.  Raises ``CorruptedError`` if anything fails validation,
        ``TimeoutError`` if the consumers' lock stays held (by a live process
        in a long copy, or because its word was written over).
        """
        h = self._handle()
        rc = lib.pyipc_ring_check(h)
        while rc == _EINTR:
            rc = lib.pyipc_ring_check(h)
        if rc == _ETIMEDOUT:
            raise TimeoutError(
                f"ring {self._name!r}: the consumers' lock stayed held (by a live process, or its "
                "word was written over), so check() could not walk the records"
            )
        return self._again(rc, lib.pyipc_ring_check, h)

    def repair(self) -> int:
        """Make a ring that fails validation usable again; return how many
        messages were dropped.

        Keeps every record that validates, in order, up to the first damaged
        one and drops the rest; puts right a damaged shutdown word, lease
        tables and the shared copy of the geometry.  Afterwards every handle,
        old and new, works again.  Never done implicitly.  Raises
        ``OSError(EBUSY)``, changing nothing, if a lock stays held for a
        second by a holder that lives (or whose liveness cannot be checked).
        """
        rc = lib.pyipc_ring_repair(self._handle())
        if rc == -errno.EBUSY:
            raise OSError(
                errno.EBUSY,
                f"ring {self._name!r}: a lock stays held by a live holder (or one whose liveness "
                "cannot be checked); nothing was repaired",
            )
        return self._again(rc, lib.pyipc_ring_repair, self._handle())

    def flush(self) -> None:
        """Write the ring's memory back to its file (``msync``): for a ring
        made with ``path=``, what is queued then survives a crash of the
        machine.  Harmless for a ring in ``/dev/shm``."""
        self._retry(lib.pyipc_ring_flush, self._handle())

    # ---- lifetime --------------------------------------------------------

    def close(self) -> None:
        """Detach this handle (idempotent).  Calls blocked in other threads
        on this handle return with ``ValueError``; memory still leased stays
        mapped until its lease ends."""
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
        """Remove the segment's name (or file); handles attached now keep working.

        Raises ``FileNotFoundError`` if the name is already gone.
        """
        if self._flags == _ANON:
            raise ValueError("a ring with no name has nothing to unlink")
        rc = lib.pyipc_seg_unlink(self._where, self._flags)
        if rc < 0:
            raise error_from(rc, self._name)

    def __enter__(self) -> "RingBuffer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> Tuple[Any, Tuple[Any, ...]]:
        # Pickles by name (or path): the receiving process attaches anew.
        if self._flags == _ANON:
            raise TypeError("a ring with no name cannot be pickled: pass its descriptor instead")
        return (_attach, (self.name, self._path))


def attach_for_repair(name: Optional[str] = None, path: Any = None) -> RingBuffer:
    """Attach to a ring whose shared header may be damaged, taking its
    geometry from the file's size, so that ``repair()`` can put the header
    right (``pyipc repair``).  Refuses a segment of another layout version
    or another kind, and anything without pyipc's magic."""
    if (name is None) == (path is None):
        raise ValueError("give either 'name' or 'path'")
    ring = RingBuffer.__new__(RingBuffer)
    ring._h = None
    ring._bufs = []
    ring._attach(name, path, lib.PYIPC_SEG_REPAIR)
    return ring


def _unpack_whole(rbuf: _RecvBuf, n: int) -> bytes:
    return _unpack(rbuf[0], n)  # type: ignore[no-any-return]


def _attach(name: Optional[str], path: Optional[str] = None) -> RingBuffer:
    """Rebuild an unpickled ``RingBuffer``: attach by name or path."""
    return RingBuffer(name, path=path)
