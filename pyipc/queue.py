"""``Queue``: Python objects over a ``RingBuffer``, a drop-in for
``multiprocessing.Queue``.

Each object is pickled (protocol 5) in the caller and put on the ring as one
message; a get takes one message and unpickles it.  There is no feeder thread:
an object that cannot be pickled raises in ``put`` itself, and ``put``
returns only once the message is in shared memory, where every process
attached to the ring can take it.

The process that creates a queue owns its shared-memory segment and removes
the name when the queue is closed, collected, or when that process exits; a
handle that only attached (an unpickled copy in a child, or
``Queue(name=..., create=False)``) never removes anything.
"""
from __future__ import annotations

import os
import pickle
import struct
from multiprocessing.util import Finalize
from typing import Any, Callable, Iterable, List, Optional, Tuple

from . import _reactor
from ._core import ffi, lib
from ._util import FOREVER, NOWAIT as _NOWAIT, deadline
from .errors import Empty, Full, MessageTooLarge, ShutDown, error_from
from .errors import (
    RC_EINTR as _EINTR,
    RC_EAGAIN as _EAGAIN,
    RC_ETIMEDOUT as _ETIMEDOUT,
    RC_EMSGSIZE as _EMSGSIZE,
    RC_EBADF as _EBADF,
    RC_ESHUTDOWN as _ESHUTDOWN,
)
from .ring import RingBuffer

__all__ = ["Queue"]

Dumps = Callable[[Any], Any]
Loads = Callable[[Any], Any]

PROTOCOL = 5

# put() and get() are the hot path: for small objects the pickling and the
# ring's C call take about as long as one more layer of Python calls would.
# So they call the C core directly on the RingBuffer's handle, with the C
# functions and constants bound here once.  Everything else goes through the
# RingBuffer.
_lib_put = lib.pyipc_ring_put
_lib_get = lib.pyipc_ring_get
_unpack = ffi.unpack
_from_buffer = ffi.from_buffer
_NULL = ffi.NULL
_pickle_dumps = pickle.dumps
_pickle_loads = pickle.loads

# A receive buffer: (char[] cdata, its size, a uint64_t* for "needed", a
# memoryview of the whole buffer).  Buffers are pooled per handle; a list's
# pop() and append() are atomic under the GIL, so threads sharing a Queue
# never share a buffer.
_RecvBuf = Tuple[Any, int, Any, memoryview]
_FIRST_BUFFER = 64 * 1024


def _new_recv_buf(size: int) -> _RecvBuf:
    buf = ffi.new("char[]", size)
    return (buf, size, ffi.new("uint64_t *"), memoryview(ffi.buffer(buf)))


# ---- large buffers out of band ----------------------------------------------
#
# Pickling a large buffer in-band is slow: the pickler grows its output as it
# goes, and the unpickler copies the data out again.  With protocol 5 the
# buffer can travel beside the pickle instead.  A message is then one ring
# record, framed as
#
#     header (16 bytes): tag, number of buffers, pickle length
#     buffer lengths (8 bytes each)
#     the pickle, then each buffer, every part starting 16-byte aligned
#
# and the receiver takes it straight into a bytearray of its own, which the
# unpickled objects (NumPy arrays) then view without another copy, writable.
# A top-level bytes or bytearray travels the same way without any pickle.
#
# Only buffers of at least _OOB_MIN bytes go out of band, so every framed
# message is larger than the pooled receive buffers (_FIRST_BUFFER): get()'s
# fast path only ever sees plain pickles, which start with the PROTO opcode
# b"\x80", and never looks at a tag.
_OOB_MIN = _FIRST_BUFFER
_TAG_PICKLE = 1
_TAG_BYTES = 2
_TAG_BYTEARRAY = 3
_HEAD = struct.Struct("<B3xIQ")  # tag, number of buffers, pickle length
_ALIGN = 16
_RAW_TYPES = frozenset((bytes, bytearray))
_ZEROS = bytes(_ALIGN)


class _HasLargeBuffer(Exception):
    """Raised by put()'s buffer_callback to switch to the framed encoding."""


def _no_large_buffers(pb: pickle.PickleBuffer) -> bool:
    """put()'s buffer_callback: small buffers stay in-band (True); a large
    one aborts the pickling early, before it is copied into the pickle."""
    if pb.raw().nbytes >= _OOB_MIN:
        raise _HasLargeBuffer
    return True


def _pad(n: int) -> int:
    return -n % _ALIGN


def _frame(tag: int, pickled: bytes, bufs: List[memoryview]) -> bytes:
    """Join header, lengths, pickle and buffers into one message (one copy)."""
    lens = [m.nbytes for m in bufs]
    head = _HEAD.pack(tag, len(bufs), len(pickled)) + struct.pack(f"<{len(lens)}Q", *lens)
    parts: List[Any] = [head]
    off = len(head)
    for part, size in [(pickled, len(pickled)), *zip(bufs, lens)]:
        pad = _pad(off)
        parts.append(_ZEROS[:pad])
        parts.append(part)
        off += pad + size
    return b"".join(parts)


def _encode(obj: Any) -> bytes:
    """The default serializer: pickle protocol 5, large buffers out of band."""
    tp = type(obj)
    if (tp is bytes or tp is bytearray) and len(obj) >= _OOB_MIN:
        return _frame(_TAG_BYTES if tp is bytes else _TAG_BYTEARRAY, b"", [memoryview(obj)])
    try:
        return _pickle_dumps(obj, PROTOCOL, buffer_callback=_no_large_buffers)
    except _HasLargeBuffer:
        pass
    bufs: List[memoryview] = []

    def collect(pb: pickle.PickleBuffer) -> bool:
        raw = pb.raw()
        if raw.nbytes < _OOB_MIN:
            return True
        bufs.append(raw)
        return False

    return _frame(_TAG_PICKLE, _pickle_dumps(obj, PROTOCOL, buffer_callback=collect), bufs)


def _is_framed(data: Any) -> bool:
    """A framed message, rather than a plain pickle (which starts b"\x80")?"""
    return len(data) > 0 and data[0] in (_TAG_PICKLE, _TAG_BYTES, _TAG_BYTEARRAY)


def _layout(data: Any, size: int) -> Tuple[int, int, int, List[int], List[int]]:
    """Parse a framed message of ``size`` bytes at the start of ``data``:
    tag, pickle offset and length, buffer offsets and lengths."""
    tag, nbufs, plen = _HEAD.unpack_from(data)
    lens = list(struct.unpack_from(f"<{nbufs}Q", data, _HEAD.size))
    off = _HEAD.size + 8 * nbufs
    off += _pad(off)
    starts = []
    pos = off + plen
    for n in lens:
        pos += _pad(pos)
        starts.append(pos)
        pos += n
    if pos > size:
        raise pickle.UnpicklingError("truncated out-of-band message")
    return tag, off, plen, starts, lens


def _decode(data: Any) -> Any:
    """The default deserializer, for a plain pickle or a framed message.

    ``data`` is a bytearray that the result may keep viewing (from
    get_large), or bytes (from get_many and get_async).
    """
    if not _is_framed(data):
        return _pickle_loads(data)
    tag, off, plen, starts, lens = _layout(data, len(data))
    if tag == _TAG_BYTES:
        return bytes(memoryview(data)[starts[0] : starts[0] + lens[0]])
    if type(data) is not bytearray:
        # Bytes are read-only: the objects must not view them, so take a
        # writable copy first.
        data = bytearray(data)
    if tag == _TAG_BYTEARRAY:
        # Deleting from the front of a bytearray moves its start: no copy.
        del data[starts[0] + lens[0] :]
        del data[: starts[0]]
        return data
    view = memoryview(data)
    buffers = [view[a : a + n] for a, n in zip(starts, lens)]
    return _pickle_loads(view[off : off + plen], buffers=buffers)


def _release(ring: RingBuffer, owner_pid: int) -> None:
    """Detach ``ring`` and, in the process that created it, remove its name.

    Called at most once, by ``close()``, by garbage collection or at exit.  A
    forked child inherits the creator's handle (and this finalizer) but must
    never remove a segment that the parent may still be using.
    """
    try:
        if os.getpid() == owner_pid:
            try:
                ring.unlink()
            except FileNotFoundError:
                # Someone (``pyipc rm``, a test fixture) removed it already.
                pass
    finally:
        ring.close()


class Queue:
    """A process-shared FIFO of Python objects, like ``multiprocessing.Queue``.

    ``Queue(maxsize=0, *, capacity=None, name=None, create=True)``:

    * ``maxsize`` bounds the number of queued items (``<= 0``: no bound but
      the ring's bytes).  It is stored in the segment: a handle that attaches
      uses the creator's bound and ignores its own argument.
    * ``capacity`` is the ring's size in bytes (default 1 MiB).  A pickled
      object larger than ``max_message_size`` raises ``MessageTooLarge``.
    * ``name`` is the shared-memory name (``None``: a unique one);
      ``create=False`` attaches to an existing queue by name.
    * ``dumps``/``loads`` replace ``pickle.dumps(obj, 5)`` and
      ``pickle.loads``; every handle of one queue must use compatible ones
      (they travel with the queue when it is pickled, by reference).
    * ``mode`` is the segment's permission bits (creator only).

    Raises ``FileExistsError`` (``create=True`` with a name in use),
    ``FileNotFoundError`` (``create=False`` with no such name),
    ``CorruptedError`` (the name is not a pyipc ring) and ``ValueError``
    (an invalid name).
    """

    __slots__ = (
        "_ring",
        "_name",
        "_maxsize",
        "_closed",
        "_dumps",
        "_loads",
        "_h",
        "_bufs",
        "_spares",
        "_framed",
        "_finalizer",
        "__weakref__",
    )

    def __init__(
        self,
        maxsize: int = 0,
        *,
        capacity: Optional[int] = None,
        name: Optional[str] = None,
        create: bool = True,
        dumps: Optional[Dumps] = None,
        loads: Optional[Loads] = None,
        mode: int = 0o600,
    ) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int):
            raise TypeError(f"maxsize must be an int, not {type(maxsize).__name__}")
        # multiprocessing.Queue treats maxsize <= 0 as "no bound"; so do we.
        bound = max(0, maxsize)
        self._closed = True  # until the ring exists, for __repr__
        self._h: Any = None
        self._finalizer: Optional[Finalize[None]] = None
        if create:
            ring = RingBuffer(
                name, create=True, capacity=capacity, mode=mode, max_messages=bound
            )
        else:
            if name is None:
                raise ValueError("create=False needs the name of an existing queue")
            ring = RingBuffer(name, create=False)
        self._ring = ring
        self._name: str = ring.name
        # put() and get() call C directly on the ring's own handle (same
        # package, same lifetime: it stays valid until the ring is freed).
        self._h = ring._h
        self._bufs: List[_RecvBuf] = []
        self._spares: List[bytearray] = []  # at most one, see _get_large
        self._maxsize: int = ring.max_messages
        # None selects the inlined pickle.dumps(obj, 5) in put().
        self._dumps: Optional[Dumps] = dumps
        self._loads: Loads = loads if loads is not None else pickle.loads
        # The default serializer frames large buffers out of band (see
        # _encode); custom ones get their own bytes untouched.
        self._framed = dumps is None and loads is None
        self._closed = False
        if create:
            # multiprocessing's Finalize rather than weakref.finalize: it runs
            # on collection, at interpreter exit *and* when a multiprocessing
            # child exits through os._exit, which skips atexit; and it
            # ignores itself in any process but the one that made it.
            # Negative priority: at exit it runs after daemonic children
            # were terminated and the others joined, so they are done with
            # the segment when its name goes.
            self._finalizer = Finalize(
                self, _release, args=(ring, os.getpid()), exitpriority=-10
            )

    # -- attributes ---------------------------------------------------------

    @property
    def name(self) -> str:
        """The shared-memory name (without a leading ``/``)."""
        return self._name

    @property
    def maxsize(self) -> int:
        """The bound on queued items, as stored in the segment (0: none)."""
        return self._maxsize

    @property
    def capacity(self) -> int:
        """The ring's size in bytes."""
        return self._ring.capacity

    @property
    def max_message_size(self) -> int:
        """The largest pickled object, in bytes, that ``put`` accepts."""
        return self._ring.max_message_size

    @property
    def closed(self) -> bool:
        """True once ``close()`` has been called on this handle."""
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"maxsize={self._maxsize}"
        return f"<pyipc.Queue name={self._name!r} {state}>"

    # -- putting ------------------------------------------------------------

    def put(self, obj: Any, block: bool = True, timeout: Optional[float] = None) -> None:
        """Put ``obj`` on the queue, waiting for room as ``queue.Queue`` does.

        ``obj`` is pickled here, in the caller, so pickling errors
        (``pickle.PicklingError``, ``TypeError``, ``AttributeError``) raise
        from ``put`` itself.  Raises ``Full`` when ``block`` is false and
        there is no room, or when ``timeout`` expires; ``MessageTooLarge``
        if the pickle can never fit; ``ShutDown`` after ``shutdown()``;
        ``ValueError`` if this handle is closed or ``timeout`` is negative.
        """
        h = self._h
        if h is None:
            raise ValueError(f"{self!r} is closed")
        if self._dumps is None:
            # _encode(obj), inlined for the common case of a small object.
            if type(obj) in _RAW_TYPES and len(obj) >= _OOB_MIN:
                data = _encode(obj)
            else:
                try:
                    data = _pickle_dumps(obj, PROTOCOL, buffer_callback=_no_large_buffers)
                except _HasLargeBuffer:
                    data = _encode(obj)
        else:
            data = self._dumps(obj)
            if type(data) is not bytes:
                # cffi passes bytes as they are; anything else bytes-like
                # (TypeError if it is not) needs a view.
                data = _from_buffer(data)
        d = FOREVER if (block and timeout is None) else deadline(block, timeout)
        rc = _lib_put(h, data, len(data), d, _NULL)
        if rc:
            self._put_again(h, data, d, rc)

    def _put_again(self, h: Any, data: Any, d: int, rc: int) -> None:
        """put()'s slow path: retry after -EINTR, else raise for ``rc``."""
        while rc == _EINTR:
            # The C wait returns every slice or on a signal, so that pending
            # signal handlers (Ctrl-C) run here, between two calls.
            rc = _lib_put(h, data, len(data), d, _NULL)
        if rc == 0:
            return
        if rc in (_EAGAIN, _ETIMEDOUT):
            raise Full("no room in the queue" + (" in time" if rc == _ETIMEDOUT else ""))
        if rc == _EMSGSIZE:
            raise MessageTooLarge(
                f"the pickled object ({len(data)} bytes) can never fit: "
                f"max_message_size is {self._ring.max_message_size}"
            )
        raise self._error(rc)

    def _error(self, rc: int) -> Exception:
        if rc == _ESHUTDOWN:
            return ShutDown(f"queue {self._name!r} is shut down")
        if rc == _EBADF:
            return ValueError(f"{self!r} is closed")
        return error_from(rc, self._name)

    def put_nowait(self, obj: Any) -> None:
        """``put(obj, block=False)``: raises ``Full`` at once if there is no room."""
        self.put(obj, False)

    def put_many(
        self, objs: Iterable[Any], block: bool = True, timeout: Optional[float] = None
    ) -> int:
        """Put several objects in order, as ``RingBuffer.put_many``.

        Every object is pickled first (a pickling error puts nothing).
        Returns how many were put: all of them unless ``block`` is false or
        ``timeout`` stopped at the first that did not fit in time.  Raises
        ``MessageTooLarge`` for an object that can never fit (those before it
        stay queued), ``ShutDown``, and ``ValueError`` on a closed handle.
        """
        if self._closed:
            raise ValueError(f"{self!r} is closed")
        dumps = self._dumps or _encode
        return self._ring.put_many([dumps(obj) for obj in objs], block, timeout)

    # -- getting ------------------------------------------------------------

    def get(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        """Remove and return the oldest object, waiting as ``queue.Queue`` does.

        Raises ``Empty`` when ``block`` is false and nothing is queued, or
        when ``timeout`` expires; ``ShutDown`` after ``shutdown()`` once
        drained; ``ValueError`` if this handle is closed or ``timeout`` is
        negative; and whatever unpickling raises.
        """
        h = self._h
        if h is None:
            raise ValueError(f"{self!r} is closed")
        d = FOREVER if (block and timeout is None) else deadline(block, timeout)
        bufs = self._bufs
        rbuf = bufs.pop() if bufs else _new_recv_buf(_FIRST_BUFFER)
        buf, size, need, view = rbuf
        n = _lib_get(h, buf, size, d, need)
        if n < 0:
            return self._get_again(h, rbuf, d, n)
        if self._framed:
            # pickle.loads copies whatever it builds out of its input, so it
            # can read the pooled buffer in place: one bytes object fewer.
            try:
                return _pickle_loads(view[:n])
            finally:
                bufs.append(rbuf)
        bufs.append(rbuf)
        return self._loads(_unpack(buf, n))

    def _get_again(self, h: Any, rbuf: _RecvBuf, d: int, n: int) -> Any:
        """get()'s slow path: retry after -EINTR, take a message larger than
        the pooled buffer, else raise for ``n``.  Returns the object."""
        buf, size, need, _ = rbuf
        try:
            while n == _EINTR:
                # The C wait returns every slice or on a signal, so that
                # pending signal handlers (Ctrl-C) run here, between calls.
                n = _lib_get(h, buf, size, d, need)
            if n >= 0:
                data = _unpack(buf, n)
                return _decode(data) if self._framed else self._loads(data)
            needed = int(need[0])
        finally:
            self._bufs.append(rbuf)
        if n == _EMSGSIZE:
            return self._get_large(h, d, needed)
        raise self._get_error(n)

    def _get_large(self, h: Any, d: int, size: int) -> Any:
        """Take the next message, known to be about ``size`` bytes, into a
        bytearray, and return the object.

        Arrays and bytearrays unpickled from a framed message keep that
        bytearray as their memory.  Otherwise (bytes, a large plain pickle)
        the bytearray is kept as a spare for the next large message: fresh
        memory costs page faults, which for a MiB take longer than the copy.
        """
        spares = self._spares
        data = spares.pop() if spares else None
        if data is None or len(data) < size:
            data = bytearray(size)
        need = ffi.new("uint64_t *")
        while True:
            with _from_buffer(data) as buf:
                n = _lib_get(h, buf, len(data), d, need)
            if n >= 0:
                break
            if n == _EMSGSIZE:
                # Another consumer took that message; the next is larger.
                data = bytearray(int(need[0]))
            elif n != _EINTR:
                spares.append(data)
                raise self._get_error(n)
        if not self._framed:
            # A custom loads may keep what it is given: give it its own.
            del data[n:]
            return self._loads(data)
        if not _is_framed(data):
            with memoryview(data) as view:
                obj = _pickle_loads(view[:n])
            spares.append(data)
            return obj
        tag, _, _, starts, lens = _layout(data, n)
        if tag == _TAG_BYTES:
            with memoryview(data) as view:
                obj = bytes(view[starts[0] : starts[0] + lens[0]])
            spares.append(data)
            return obj
        del data[n:]
        return _decode(data)

    def _get_error(self, n: int) -> Exception:
        if n in (_EAGAIN, _ETIMEDOUT):
            return Empty("nothing in the queue" + (" in time" if n == _ETIMEDOUT else ""))
        return self._error(n)

    def get_nowait(self) -> Any:
        """``get(block=False)``: raises ``Empty`` at once if nothing is queued."""
        return self.get(False)

    def get_many(
        self, max_messages: int, block: bool = True, timeout: Optional[float] = None
    ) -> list[Any]:
        """Wait for one object, then return up to ``max_messages`` without waiting.

        Raises ``Empty`` (nothing in time), ``ShutDown``, and ``ValueError``
        (a closed handle, or ``max_messages < 1``).
        """
        if self._closed:
            raise ValueError(f"{self!r} is closed")
        loads = _decode if self._framed else self._loads
        return [loads(m) for m in self._ring.get_many(max_messages, block, timeout)]

    # -- asyncio ------------------------------------------------------------
    #
    # As on RingBuffer: try without waiting on the loop's thread, and while
    # that raises Empty/Full, wait for the ring's futex word through the
    # loop's waitset (pyipc/_reactor.py).  Objects are pickled before any
    # wait and unpickled after the take, both on the loop's thread.

    async def put_async(self, obj: Any, timeout: Optional[float] = None) -> None:
        """Put ``obj`` without blocking the event loop.

        The object is pickled at once, in the caller; the coroutine then
        waits for room.  Cancelling it before it returns leaves nothing
        queued.  Raises ``Full`` when ``timeout`` expires, plus everything
        ``put`` raises (``ValueError`` if the queue is or gets closed).
        """
        h = self._h
        if h is None:
            raise ValueError(f"{self!r} is closed")
        d = FOREVER if timeout is None else deadline(True, timeout)
        data = (self._dumps or _encode)(obj)
        if type(data) is not bytes:
            data = _from_buffer(data)
        size = len(data)
        rc = _lib_put(h, data, size, _NOWAIT, _NULL)
        if rc == 0:
            return
        if rc != _EAGAIN and rc != _EINTR:
            self._put_again(h, data, _NOWAIT, rc)  # raises

        def attempt() -> None:
            h = self._h
            if h is None:
                raise ValueError(f"{self!r} is closed")
            rc = _lib_put(h, data, size, _NOWAIT, _NULL)
            if rc:
                self._put_again(h, data, _NOWAIT, rc)

        await _reactor.retry(self._ring, True, size, d, attempt)

    async def get_async(self, timeout: Optional[float] = None) -> Any:
        """Get an object without blocking the event loop.

        Cancelling the coroutine takes nothing off the queue.  Raises
        ``Empty`` when ``timeout`` expires, plus everything ``get`` raises
        (``ValueError`` if the queue is or gets closed).
        """
        if self._h is None:
            raise ValueError(f"{self!r} is closed")
        d = FOREVER if timeout is None else deadline(True, timeout)
        try:
            return self.get(False)
        except Empty:
            pass
        return await _reactor.retry(self._ring, False, 0, d, self.get_nowait)

    async def get_many_async(self, max_messages: int, timeout: Optional[float] = None) -> list[Any]:
        """Wait for one object without blocking the loop, then return up to
        ``max_messages`` without waiting for more (``get_many``).

        Cancelling it takes nothing.  Raises ``Empty`` when ``timeout``
        expires, plus everything ``get_many`` raises.
        """
        if self._h is None:
            raise ValueError(f"{self!r} is closed")
        if max_messages < 1:
            raise ValueError("'max_messages' must be >= 1")
        d = FOREVER if timeout is None else deadline(True, timeout)
        return await _reactor.retry(self._ring, False, 0, d, lambda: self.get_many(max_messages, False))

    async def put_many_async(self, objs: Iterable[Any], timeout: Optional[float] = None) -> int:
        """Put several objects in order without blocking the loop, as
        ``RingBuffer.put_many_async``: every object is pickled first; returns
        how many were put (all, unless ``timeout`` expired first); if
        cancelled, those put before stay queued (a prefix, each once).
        """
        if self._h is None:
            raise ValueError(f"{self!r} is closed")
        dumps = self._dumps or _encode
        return await self._ring.put_many_async([dumps(obj) for obj in objs], timeout)

    # -- state --------------------------------------------------------------

    def qsize(self) -> int:
        """The number of objects queued now (a snapshot). ``ValueError`` if closed."""
        if self._closed:
            raise ValueError(f"{self!r} is closed")
        return self._ring.qsize()

    def empty(self) -> bool:
        """True if nothing is queued now (a snapshot). ``ValueError`` if closed."""
        return self.qsize() == 0

    def full(self) -> bool:
        """True if ``maxsize`` items are queued now (a snapshot).

        A queue without ``maxsize`` is never full by this test, although a
        put may still wait for bytes of room.  ``ValueError`` if closed.
        """
        return self._maxsize > 0 and self.qsize() >= self._maxsize

    def shutdown(self, immediate: bool = False) -> None:
        """Shut the queue down for every handle, as ``queue.Queue.shutdown``.

        Further puts raise ``ShutDown``; gets drain what is queued (nothing
        if ``immediate``) and then raise ``ShutDown``; blocked callers wake.
        ``ValueError`` if this handle is closed.
        """
        if self._closed:
            raise ValueError(f"{self!r} is closed")
        self._ring.shutdown(immediate)

    # -- lifetime -----------------------------------------------------------

    def close(self) -> None:
        """Detach this handle; in the creating process, also remove the name.

        Idempotent.  Afterwards every method raises ``ValueError``.  Other
        processes already attached keep working; new ones can no longer
        attach.  Raises nothing else.
        """
        if self._closed:
            return
        self._closed = True
        self._h = None
        self._bufs = []
        self._spares = []
        # The ring's close() waits for put()/get() calls in other threads to
        # leave the handle, then unmaps.
        if self._finalizer is not None:
            self._finalizer()
        else:
            self._ring.close()

    def join_thread(self) -> None:
        """Does nothing: there is no feeder thread, ``put`` has already
        delivered everything.  Kept so code written for
        ``multiprocessing.Queue`` runs unchanged."""

    def cancel_join_thread(self) -> None:
        """Does nothing, for the same reason as ``join_thread``."""

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Callable[..., Queue], tuple[Any, ...]]:
        # By name: the receiving process attaches to the same segment.  A
        # custom dumps/loads travels by reference, as pickle sends functions.
        if self._closed:
            raise ValueError(f"{self!r} is closed")
        if self._dumps is not None or self._loads is not pickle.loads:
            return (_attach, (self._name, self._dumps, self._loads))
        return (_attach, (self._name,))


def _attach(name: str, dumps: Optional[Dumps] = None, loads: Optional[Loads] = None) -> Queue:
    """Rebuild an unpickled ``Queue``: attach by name, never own."""
    return Queue(name=name, create=False, dumps=dumps, loads=loads)
