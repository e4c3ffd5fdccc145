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
from .errors import Empty, Full
from .ring import _PUT, RingBuffer, _new_recv_buf

__all__ = ["Queue"]

Dumps = Callable[[Any], Any]
Loads = Callable[[Any], Any]

PROTOCOL = 5

# put() and get() are the hot path: for small objects, pickling and the
# ring's C call take about as long as one more layer of Python calls would,
# so the functions they call are bound here once.
_from_buffer = ffi.from_buffer
_pickle_dumps = pickle.dumps
_pickle_loads = pickle.loads
_FIRST_BUFFER = 64 * 1024  # the ring's pooled receive buffers start this large
_NULL = ffi.NULL
_c_put = lib.pyipc_ring_put
_c_get = lib.pyipc_ring_get


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


def _frame_parts(tag: int, pickled: bytes, bufs: List[memoryview]) -> List[Any]:
    """Header, lengths, pickle and buffers as the parts of one message."""
    lens = [m.nbytes for m in bufs]
    head = _HEAD.pack(tag, len(bufs), len(pickled)) + struct.pack(f"<{len(lens)}Q", *lens)
    parts: List[Any] = [head]
    off = len(head)
    for part, size in [(pickled, len(pickled)), *zip(bufs, lens)]:
        pad = _pad(off)
        if pad:
            parts.append(_ZEROS[:pad])
        parts.append(part)
        off += pad + size
    return parts


def _frame(tag: int, pickled: bytes, bufs: List[memoryview]) -> bytes:
    """The parts of a framed message joined into one bytes object."""
    return b"".join(_frame_parts(tag, pickled, bufs))


def _encode_parts(obj: Any) -> Optional[List[Any]]:
    """The parts of a framed message for ``obj``, or None if it pickles
    without large buffers (then ``_encode`` gives the plain pickle)."""
    tp = type(obj)
    if (tp is bytes or tp is bytearray) and len(obj) >= _OOB_MIN:
        return _frame_parts(_TAG_BYTES if tp is bytes else _TAG_BYTEARRAY, b"", [memoryview(obj)])
    bufs: List[memoryview] = []

    def collect(pb: pickle.PickleBuffer) -> bool:
        raw = pb.raw()
        if raw.nbytes < _OOB_MIN:
            return True
        bufs.append(raw)
        return False

    pickled = _pickle_dumps(obj, PROTOCOL, buffer_callback=collect)
    if not bufs:
        return None
    return _frame_parts(_TAG_PICKLE, pickled, bufs)


def _encode(obj: Any) -> bytes:
    """The default serializer: pickle protocol 5, large buffers out of band."""
    tp = type(obj)
    if not ((tp is bytes or tp is bytearray) and len(obj) >= _OOB_MIN):
        try:
            return _pickle_dumps(obj, PROTOCOL, buffer_callback=_no_large_buffers)
        except _HasLargeBuffer:
            pass
    parts = _encode_parts(obj)
    return b"".join(parts) if parts is not None else _pickle_dumps(obj, PROTOCOL)


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
        "_decode",
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
        assert ring.name is not None
        self._name: str = ring.name
        # put() and get() are the hot path: for small objects, pickling and
        # the C call take about as long as one more layer of Python calls
        # would, so the ring hands us its C handle to call C on directly;
        # every retry and error still goes through the ring (_again,
        # _get_slow).
        self._h, self._bufs = ring._queue_port()
        self._spares: List[bytearray] = []  # at most one, see _get_large
        self._maxsize: int = ring.max_messages
        # None selects the inlined pickle.dumps(obj, 5) in put().
        self._dumps: Optional[Dumps] = dumps
        self._loads: Loads = loads if loads is not None else pickle.loads
        # The default serializer frames large buffers out of band (see
        # _encode); custom ones get their own bytes untouched.
        self._framed = dumps is None and loads is None
        self._decode = self._decode_pooled if self._framed else self._decode_custom
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
        if self._closed:
            raise ValueError(f"{self!r} is closed")
        if self._dumps is None:
            # _encode(obj), inlined for the common case of a small object.
            if type(obj) in _RAW_TYPES and len(obj) >= _OOB_MIN:
                data = None
            else:
                try:
                    data = _pickle_dumps(obj, PROTOCOL, buffer_callback=_no_large_buffers)
                except _HasLargeBuffer:
                    data = None
            if data is None:
                # Large buffers go straight from the object into the ring.
                parts = _encode_parts(obj)
                if parts is not None:
                    self._ring._put_gather(parts, block, timeout)
                    return
                data = _pickle_dumps(obj, PROTOCOL)
        else:
            data = self._dumps(obj)
            if type(data) is not bytes:
                data = _from_buffer(data)  # TypeError if it is not bytes-like
        d = FOREVER if (block and timeout is None) else deadline(block, timeout)
        h = self._h
        rc = _c_put(h, data, len(data), d, _NULL)
        if rc:
            self._ring._again(rc, _c_put, h, data, len(data), d, _NULL, op=_PUT, size=len(data))

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
        if self._closed:
            raise ValueError(f"{self!r} is closed")
        d = FOREVER if (block and timeout is None) else deadline(block, timeout)
        bufs = self._bufs
        rbuf = bufs.pop() if bufs else _new_recv_buf(_FIRST_BUFFER)
        h = self._h
        n = _c_get(h, rbuf[0], rbuf[1], d, rbuf[2])
        if 0 <= n < _OOB_MIN and self._framed:
            # The common case, straight-line: only plain pickles are this
            # small (see _OOB_MIN), and pickle.loads copies whatever it
            # builds out of its input, so it reads the pooled buffer in place.
            try:
                return _pickle_loads(rbuf[3][:n])
            finally:
                bufs.append(rbuf)
        return self._ring._get_slow(h, d, rbuf, n, self._decode, self._get_large)

    def _decode_pooled(self, rbuf: Any, n: int) -> Any:
        # A message in the ring's pooled buffer.  Only plain pickles are
        # smaller than _OOB_MIN, and pickle.loads copies whatever it builds
        # out of its input, so it reads the buffer in place.  A pooled
        # buffer the ring's get_many grew may hold a framed one: that gets
        # a copy of its own, which the objects it holds may keep viewing.
        if n >= _OOB_MIN and _is_framed(rbuf[3]):
            return _decode(bytearray(rbuf[3][:n]))
        return _pickle_loads(rbuf[3][:n])

    def _decode_custom(self, rbuf: Any, n: int) -> Any:
        # A custom loads may keep what it is given: give it its own bytes.
        return self._loads(ffi.unpack(rbuf[0], n))

    def _get_large(self, size: int, d: int) -> Any:
        """Take the next message, known to be about ``size`` bytes, into a
        bytearray, and return the object: the one copy out of the ring.

        Arrays and bytearrays unpickled from a framed message keep that
        bytearray as their memory.  Otherwise (bytes, a large plain pickle)
        the bytearray is kept as a spare for the next large message: fresh
        memory costs page faults, which for a MiB take longer than the copy.
        """
        spares = self._spares
        data = spares.pop() if spares else None
        if data is None or len(data) < size:
            data = bytearray(size)
        needed: List[int] = []
        while True:
            n = self._ring._get_into(data, d, needed)
            if n >= 0:
                break
            # Another consumer took that message; the next is larger.
            data = bytearray(needed.pop())
        if not self._framed:
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
        if self._closed:
            raise ValueError(f"{self!r} is closed")
        d = FOREVER if timeout is None else deadline(True, timeout)
        data = (self._dumps or _encode)(obj)
        if type(data) is not bytes:
            data = _from_buffer(data)  # TypeError if it is not bytes-like
        size = len(data)
        ring = self._ring

        def attempt() -> None:
            h = self._h
            if h is None:
                raise ValueError(f"{self!r} is closed")
            rc = _c_put(h, data, size, _NOWAIT, _NULL)
            if rc:
                ring._again(rc, _c_put, h, data, size, _NOWAIT, _NULL, op=_PUT, size=size)

        try:
            return attempt()  # room at once: the common case, without the retry loop
        except Full:
            pass
        await _reactor.retry(ring, True, size, d, attempt)

    async def get_async(self, timeout: Optional[float] = None) -> Any:
        """Get an object without blocking the event loop.

        Cancelling the coroutine takes nothing off the queue.  Raises
        ``Empty`` when ``timeout`` expires, plus everything ``get`` raises
        (``ValueError`` if the queue is or gets closed).
        """
        if self._closed:
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
        if self._closed:
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
        if self._closed:
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
        n = self.qsize()  # ValueError if closed, whatever maxsize is
        return self._maxsize > 0 and n >= self._maxsize

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
