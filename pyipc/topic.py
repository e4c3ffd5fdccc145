"""``Publisher`` and ``Subscriber``: publish once, every subscriber reads.

A topic is one segment in ``/dev/shm/<name>`` (or a file, ``path=``) holding
a ring of messages and a slot per subscriber.  A publisher writes each
message once; every subscriber reads it in place through its own cursor.
All the work happens in the C core (``csrc/topic.c``); this module turns
``queue``-style arguments into C deadlines and C return codes into
exceptions, the way ``ring.py`` does for rings.
"""
from __future__ import annotations

import operator
import os
import secrets
import threading
import time
from collections import deque
from itertools import accumulate
from typing import Any, Callable, Deque, Iterable, List, Optional, Tuple, Union

from . import _reactor
from ._core import ffi, lib
from ._util import FOREVER, NOWAIT, deadline
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
from .ring import DEFAULT_CAPACITY, MAX_CAPACITY, _bytes_like, _grown, _int_arg, _new_lease, _where, corrupted

__all__ = ["Publisher", "Subscriber", "OVERFLOW_POLICIES"]

OVERFLOW_POLICIES = ("block", "overwrite")
_RC_ENOSPC = -28
_RC_ESTALE = -116
_RC_EUSERS = -87
_RC_EPERM = -1
_FIRST_BUFFER = 64 * 1024
_JOIN_MAX = 256 * 1024
# recv() takes up to this many messages that are already there in one C
# call and hands them out one by one: a C call through cffi costs more than
# a small message's whole copy (see the README's "Topics" section).
READ_AHEAD = 64

_c_publish = lib.pyipc_topic_publish
_c_recv = lib.pyipc_topic_recv
_c_recv_many = lib.pyipc_topic_recv_many
_unpack = ffi.unpack
_from_buffer = ffi.from_buffer

_INFO_KEYS = (
    "capacity",
    "max_message_size",
    "hdr_size",
    "published",
    "bytes_published",
    "oldest_seq",
    "retained",
    "bytes_used",
    "publish_waits",
    "recoveries",
    "max_subscribers",
    "subscribers",
    "overflow",
    "reserves",
    "views",
    "version",
    "shutdown",
    "creator_pid",
    "owner",
)
_SUB_KEYS = ("slot", "owner", "alive", "views", "lag", "received", "bytes", "missed", "waits", "behind")

# What each kind of operation raises for "no": publish Full, receive Empty.
_PUT, _GET = 0, 1

_RecvBuf = Tuple[Any, int, Any]


def _new_recv_buf(size: int) -> _RecvBuf:
    return (ffi.new("char[]", size), size, ffi.new("uint64_t *"))


class _Topic:
    """What publishers and subscribers share: a C handle on one topic."""

    __slots__ = ("_h", "_name", "_where", "_flags", "_path", "_capacity", "_max_message_size", "__weakref__")

    _role = "topic handle"

    def _open(self, name: Optional[str], path: Any) -> None:
        self._h: Any = None
        if name is None and path is None:
            raise ValueError("'name' or 'path' is required to attach to an existing topic")
        where, flags, shown = _where(name, path)
        out = ffi.new("pyipc_topic **")
        self._adopt(lib.pyipc_topic_attach(where, flags, out), out, where, flags, shown)

    def _adopt(self, rc: int, out: Any, where: bytes, flags: int, shown: str) -> None:
        if rc < 0:
            if rc == _EBADMSG:
                raise corrupted(where, flags, shown, lib.PYIPC_KIND_TOPIC)
            raise error_from(rc, shown)
        self._h = ffi.gc(out[0], lib.pyipc_topic_free)
        self._name = shown
        self._where = where
        self._flags = flags
        self._path = shown if flags else None
        self._capacity = int(lib.pyipc_topic_capacity(self._h))
        self._max_message_size = int(lib.pyipc_topic_max_message_size(self._h))

    # ---- attributes ------------------------------------------------------

    @property
    def name(self) -> Optional[str]:
        """The segment's name, without the leading ``/`` (``None`` for a topic in a file)."""
        return None if self._path is not None else self._name

    @property
    def path(self) -> Optional[str]:
        """The file a topic made with ``path=`` lives in, else ``None``."""
        return self._path

    @property
    def capacity(self) -> int:
        """Bytes of record space (a power of two of at least one page)."""
        return self._capacity

    @property
    def max_message_size(self) -> int:
        """The largest message that always fits (``capacity - 16``)."""
        return self._max_message_size

    @property
    def max_subscribers(self) -> int:
        """How many subscribers may be attached at once."""
        return int(lib.pyipc_topic_max_subscribers(self._handle()))

    @property
    def overflow(self) -> str:
        """``"block"`` or ``"overwrite"``: what publishers do when the ring is full."""
        return OVERFLOW_POLICIES[lib.pyipc_topic_overflow(self._handle())]

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called on this handle."""
        return self._h is None

    def __repr__(self) -> str:
        state = "closed" if self._h is None else f"capacity={self._capacity}"
        what = f"path={self._path!r}" if self._path is not None else f"name={self._name!r}"
        return f"<pyipc.{type(self).__name__} {what} {state}>"

    # ---- errors and retries ----------------------------------------------

    def _error(self, rc: int, op: int = _GET, size: int = 0) -> Exception:
        if rc in (_EAGAIN, _ETIMEDOUT):
            late = " in time" if rc == _ETIMEDOUT else ""
            return Full("no room in the topic" + late) if op == _PUT else Empty("no message" + late)
        if rc == _EMSGSIZE:
            if op == _GET:
                return MessageTooLarge(f"a buffer of {size} bytes is too small for the next message")
            return MessageTooLarge(
                f"a message of {size} bytes can never fit (max_message_size is {self._max_message_size})"
            )
        if rc == _ESHUTDOWN:
            return ShutDown(f"topic {self._name!r} is shut down")
        if rc == _EBADF:
            return ValueError(f"operation on a closed {type(self).__name__}")
        if rc == _EBADMSG:
            return CorruptedError(
                f"topic {self._name!r} fails validation (a process wrote over it): see `pyipc repair`"
            )
        if rc == _RC_EUSERS:
            return IPCError(
                f"topic {self._name!r} has {lib.pyipc_topic_max_subscribers(self._h)} subscribers "
                "already (its max_subscribers)"
            )
        if rc == _RC_ENOSPC:
            return IPCError(f"topic {self._name!r} has {lib.PYIPC_MAX_LEASES} leases open already")
        if rc == _RC_ESTALE:
            return IPCError(f"the lease was dropped by repair() of topic {self._name!r}")
        return error_from(rc, self._name)

    def _lease_error(self, rc: int) -> Exception:
        return self._error(rc)

    def _again(self, rc: int, call: Callable[..., int], *args: Any, op: int = _GET, size: int = 0) -> int:
        """Call again while the C call says -EINTR (a slice ended or a
        signal: Python runs its handlers in between), raise for errors."""
        while rc == _EINTR:
            rc = call(*args)
        if rc >= 0:
            return int(rc)
        raise self._error(rc, op, size)

    def _retry(self, call: Callable[..., int], *args: Any, op: int = _GET, size: int = 0) -> int:
        return self._again(call(*args), call, *args, op=op, size=size)

    def _handle(self) -> Any:
        h = self._h
        if h is None:
            raise ValueError(f"operation on a closed {type(self).__name__}")
        return h

    # ---- state -----------------------------------------------------------

    def info(self) -> dict[str, int]:
        """The header: geometry, counters (``published``, ``publish_waits``,
        ``recoveries`` ...), open reservations and views, shutdown state."""
        out = ffi.new("struct pyipc_topic_info *")
        self._retry(lib.pyipc_topic_info, self._handle(), out)
        return {k: int(getattr(out, k)) for k in _INFO_KEYS}

    def subscriber_info(self) -> List[dict[str, int]]:
        """One dict per attached subscriber: its ``slot``, ``lag`` (messages
        published that it has not read), ``received``, ``missed``,
        ``waits``, open ``views``, and whether its process is ``alive``."""
        h = self._handle()
        out = ffi.new("struct pyipc_topic_sub_info *")
        subs = []
        for i in range(lib.pyipc_topic_max_subscribers(h)):
            if lib.pyipc_topic_sub_info(h, i, out) == 0:
                subs.append({k: int(getattr(out, k)) for k in _SUB_KEYS})
        return subs

    def check(self) -> int:
        """Validate every retained record and every slot; return how many
        messages the ring retains.  Raises ``CorruptedError``."""
        return self._retry(lib.pyipc_topic_check, self._handle())

    def repair(self) -> int:
        """Make a topic that fails validation usable again; return how many
        messages were dropped.  Never done implicitly."""
        return self._retry(lib.pyipc_topic_repair, self._handle())

    def flush(self) -> None:
        """Write the topic's memory back to its file (``msync``)."""
        self._retry(lib.pyipc_topic_flush, self._handle())

    # ---- lifetime --------------------------------------------------------

    def close(self) -> None:
        """Detach this handle (idempotent); a subscriber gives its slot back
        at once (or, with a view still exported, when that view is gone)."""
        h = self._h
        if h is None:
            return
        self._h = None
        lib.pyipc_topic_close(h)

    def unlink(self) -> None:
        """Remove the topic's name (or file); attached handles keep working.
        Raises ``FileNotFoundError`` if it is already gone."""
        rc = lib.pyipc_seg_unlink(self._where, self._flags)
        if rc < 0:
            raise error_from(rc, self._name)


class Publisher(_Topic):
    """Publishes messages that every subscriber of the topic receives.

    ``Publisher(name, create=True, capacity=..., max_subscribers=16,
    overflow="block", mode=0o600)`` makes the topic (``FileExistsError`` if
    the name is taken; ``name=None`` picks one); ``Publisher(name)``
    attaches to an existing one.  ``overflow="block"`` makes publishers
    wait for the slowest live subscriber; ``"overwrite"`` never waits for
    subscribers: one that falls a whole ring behind skips ahead and counts
    what it ``missed``.  Any number of publishers may share a topic (one
    lock, one order).
    """

    __slots__ = ()

    def __init__(
        self,
        name: Optional[str] = None,
        *,
        create: bool = False,
        capacity: Optional[int] = None,
        max_subscribers: int = 16,
        overflow: str = "block",
        mode: int = 0o600,
        path: Union[str, "os.PathLike[str]", None] = None,
    ) -> None:
        self._h = None
        if not create:
            self._open(name, path)
            return
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"'overflow' must be 'block' or 'overwrite', not {overflow!r}")
        if name is None and path is None:
            name = "pyipc-" + secrets.token_hex(8)
        where, flags, shown = _where(name, path)
        cap = DEFAULT_CAPACITY if capacity is None else _int_arg(capacity, "capacity", 1, MAX_CAPACITY)
        subs = _int_arg(max_subscribers, "max_subscribers", 1, lib.PYIPC_TOPIC_MAX_SUBSCRIBERS)
        mode = _int_arg(mode, "mode", 0, 0o7777)
        out = ffi.new("pyipc_topic **")
        rc = lib.pyipc_topic_create(where, flags, cap, subs, OVERFLOW_POLICIES.index(overflow), mode, out)
        self._adopt(rc, out, where, flags, shown)

    @property
    def subscribers(self) -> int:
        """How many subscribers are attached now (dead ones are detached first)."""
        return self._retry(lib.pyipc_topic_subscribers, self._handle())

    def publish(self, data: Any, block: bool = True, timeout: Optional[float] = None) -> None:
        """Publish one message (any bytes-like object; empty is fine) to every subscriber.

        Waits for room as ``queue.Queue.put`` does: on a ``"block"`` topic
        while the slowest subscriber still needs the space, on any topic
        while an open view or reservation is in the way.  Raises ``Full``,
        ``MessageTooLarge``, ``ShutDown``, ``TypeError``, ``ValueError``.
        """
        h = self._h
        if h is None:
            raise ValueError("operation on a closed Publisher")
        d = FOREVER if (block and timeout is None) else deadline(block, timeout)
        buf = data if type(data) is bytes else _bytes_like(data)
        n = len(buf)
        rc = _c_publish(h, buf, n, d)
        if rc:
            self._again(rc, _c_publish, h, buf, n, d, op=_PUT, size=n)

    def publish_many(self, items: Iterable[Any], block: bool = True, timeout: Optional[float] = None) -> int:
        """Publish several messages in order, as many per lock round trip as
        fit; returns how many were published (all, unless ``block=False`` or
        the timeout stops it).  An item that can never fit raises
        ``MessageTooLarge`` (those before it stay published)."""
        h = self._handle()
        d = FOREVER if (block and timeout is None) else deadline(block, timeout)
        if not isinstance(items, (list, tuple)):
            items = list(items)
        if not items:
            return 0
        bufs = [_bytes_like(x) for x in items]
        sizes = [len(b) for b in bufs]
        total = len(bufs)
        if sum(sizes) > _JOIN_MAX:
            for i, b in enumerate(bufs):
                try:
                    self.publish(b, block, None if d == FOREVER else max(0.0, (d - time.monotonic_ns()) / 1e9))
                except Full:
                    return i
            return total
        # Small messages travel joined: one copy here costs less than a
        # buffer object per message.
        blob = b"".join(b if type(b) is bytes else memoryview(b).cast("B") for b in items)
        lens = ffi.new("uint64_t[]", sizes)
        base = _from_buffer(blob)
        done = ffi.new("size_t *")
        sent = 0
        offset = 0
        while True:
            rc = lib.pyipc_topic_publish_many(h, base + offset, lens + sent, total - sent, d, done)
            offset += sum(sizes[sent : sent + done[0]])
            sent += int(done[0])
            if rc == 0 or sent == total:
                return sent
            if rc == _EINTR:
                continue
            if rc in (_EAGAIN, _ETIMEDOUT):
                return sent
            raise self._error(rc, _PUT, sizes[sent])

    def reserve(self, size: int, block: bool = True, timeout: Optional[float] = None) -> Reservation:
        """A context manager giving a writable ``memoryview`` of exactly
        ``size`` bytes inside the topic: write the message in place; it is
        published when the block exits normally, dropped if it raises.
        Waits for room like ``publish``.  Same rules as
        ``RingBuffer.reserve`` (``BufferError`` if the view is still
        exported at exit, and then nothing is published)."""
        size = _int_arg(size, "size", 0, MAX_CAPACITY)
        self._handle()
        return Reservation(self, size, block, timeout, lib.pyipc_topic_commit)

    def _reserve_raw(self, size: int, block: bool, timeout: Optional[float]) -> Tuple[Any, Any]:
        """Reserve ``size`` bytes: (C handle, ``struct pyipc_lease *``)."""
        h = self._handle()
        d = FOREVER if (block and timeout is None) else deadline(block, timeout)
        lease = _new_lease()
        self._retry(lib.pyipc_topic_reserve, h, size, d, lease, op=_PUT, size=size)
        return h, lease

    def shutdown(self) -> None:
        """Shut the topic down for every handle: publishes raise
        ``ShutDown``; subscribers receive what was published, then raise
        ``ShutDown``; every blocked call wakes."""
        self._retry(lib.pyipc_topic_shutdown, self._handle())

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> Tuple[Any, Tuple[Any, ...]]:
        return (_attach_publisher, (self.name, self._path))


class Subscriber(_Topic):
    """Receives every message published to a topic after it attached.

    ``Subscriber(name, start="next")`` takes a slot in the topic (``IPCError``
    if ``max_subscribers`` are attached already) and receives what is
    published from then on; ``start="oldest"`` begins with the oldest
    message still in the ring.  Every subscriber sees the same order.  A
    subscriber passed to a child process (pickled, or inherited by
    ``fork``) becomes a new subscriber there.
    """

    __slots__ = ("_bufs", "_start", "_ahead", "_fill_lock", "_lens", "_aio")

    # For the event-loop waits of pyipc/_reactor.py: the ring's contract.
    _c_arm = lib.pyipc_topic_arm
    _c_wait = lib.pyipc_topic_wait

    def __init__(
        self,
        name: Optional[str] = None,
        *,
        path: Union[str, "os.PathLike[str]", None] = None,
        start: str = "next",
    ) -> None:
        self._h = None
        self._bufs: List[_RecvBuf] = []
        self._aio: Any = None  # the asyncio waits on this handle (a _reactor.WaitGuard)
        # Messages recv() read ahead, oldest first: this subscriber's, in
        # order, before anything the topic still holds for it.
        self._ahead: Deque[bytes] = deque()
        self._fill_lock = threading.Lock()
        self._lens = ffi.new("uint64_t[]", READ_AHEAD)
        if start not in ("next", "oldest"):
            raise ValueError(f"'start' must be 'next' or 'oldest', not {start!r}")
        self._start = start
        self._open(name, path)
        try:
            self._retry(lib.pyipc_topic_subscribe, self._h, 1 if start == "oldest" else 0)
        except BaseException:
            self.close()
            raise

    @property
    def pending(self) -> int:
        """Messages published for this subscriber and not yet read (those
        already overwritten excluded: they count as ``missed``)."""
        return self._retry(lib.pyipc_topic_pending, self._handle()) + len(self._ahead)

    @property
    def missed(self) -> int:
        """Messages this subscriber lost to overwriting (``"overwrite"`` topics)."""
        return self._retry(lib.pyipc_topic_missed, self._handle())

    def recv(self, block: bool = True, timeout: Optional[float] = None) -> bytes:
        """Receive the next message as ``bytes``.

        Takes up to ``READ_AHEAD`` messages that are already there in one
        call into the core and returns them one by one (they count in
        ``pending`` until returned).  Raises ``Empty`` (nothing in time),
        ``ShutDown`` (shut down and drained), ``ValueError`` (closed
        handle, negative timeout), ``CorruptedError``.
        """
        ahead = self._ahead
        if ahead:
            try:
                return ahead.popleft()
            except IndexError:  # another thread took the last one
                pass
        return self._fill(block, timeout)

    def _fill(self, block: bool, timeout: Optional[float]) -> bytes:
        """recv() with nothing read ahead: take what is there (waiting for one)."""
        h = self._h
        if h is None:
            raise ValueError("operation on a closed Subscriber")
        d = FOREVER if (block and timeout is None) else deadline(block, timeout)
        with self._fill_lock:
            ahead = self._ahead
            if ahead:
                return ahead.popleft()
            msgs = self._take(h, self._lens, READ_AHEAD, d)
            if len(msgs) > 1:
                ahead.extend(msgs)
                return ahead.popleft()
            return msgs[0]

    def _take(self, h: Any, lens: Any, most: int, d: int) -> List[bytes]:
        """Up to ``most`` messages from the core, waiting for the first until ``d``."""
        bufs = self._bufs
        rbuf = bufs.pop() if bufs else _new_recv_buf(_FIRST_BUFFER)
        try:
            while True:
                buf, size, need = rbuf
                n = _c_recv_many(h, buf, size, lens, most, d, need)
                if n == 1:
                    return [_unpack(buf, lens[0])]
                if n > 0:
                    # One bytes object, then slices of it: far cheaper than
                    # one cffi buffer slice per message.
                    ends = list(accumulate(_unpack(lens, n)))
                    blob = _unpack(buf, ends[-1])
                    return [blob[a:b] for a, b in zip([0, *ends], ends)]
                if n == _EINTR:
                    continue
                if n == _EMSGSIZE:
                    rbuf = _new_recv_buf(_grown(size, need[0]))
                    continue
                raise self._error(n, _GET, size)
        finally:
            bufs.append(rbuf)

    def recv_into(self, buffer: Any, block: bool = True, timeout: Optional[float] = None) -> int:
        """Receive the next message into a writable buffer; return its length.

        A buffer too small raises ``MessageTooLarge`` and the message stays
        next.  Other errors as ``recv``.
        """
        h = self._handle()
        d = FOREVER if (block and timeout is None) else deadline(block, timeout)
        try:
            buf = ffi.from_buffer(buffer, require_writable=True)
        except (BufferError, TypeError) as e:
            raise TypeError(f"recv_into needs a writable contiguous bytes-like buffer: {e}") from None
        need = ffi.new("uint64_t *")
        size = len(buf)
        if self._ahead:
            with self._fill_lock:
                if self._ahead:
                    m = self._ahead[0]
                    if len(m) > size:
                        raise MessageTooLarge(
                            f"a buffer of {size} bytes is too small for the next message ({len(m)} bytes)"
                        )
                    self._ahead.popleft()
                    ffi.memmove(buf, m, len(m))
                    return len(m)
        while True:
            n = _c_recv(h, buf, size, d, need)
            if n >= 0:
                return int(n)
            if n == _EMSGSIZE:
                raise MessageTooLarge(
                    f"a buffer of {size} bytes is too small for the next message ({need[0]} bytes)"
                )
            if n != _EINTR:
                raise self._error(n, _GET, size)

    def recv_many(self, max_messages: int, block: bool = True, timeout: Optional[float] = None) -> List[bytes]:
        """Wait for at least one message, then return up to ``max_messages``
        without waiting for more (``max_messages >= 1``).  Errors as ``recv``."""
        h = self._handle()
        max_messages = operator.index(max_messages)
        if max_messages < 1:
            raise ValueError("'max_messages' must be >= 1")
        max_messages = min(max_messages, self._capacity // 16)
        d = FOREVER if (block and timeout is None) else deadline(block, timeout)
        lens = ffi.new("uint64_t[]", max_messages)
        if self._ahead:
            with self._fill_lock:
                ahead = self._ahead
                if ahead:
                    out = [ahead.popleft() for _ in range(min(max_messages, len(ahead)))]
                    if len(out) < max_messages:
                        try:  # and those already there behind them
                            out += self._take(h, lens, max_messages - len(out), NOWAIT)
                        except (Empty, ShutDown):
                            pass  # the next call raises ShutDown
                    return out
        return self._take(h, lens, max_messages, d)

    def view(self, block: bool = True, timeout: Optional[float] = None) -> Union[View, "_CopyView"]:
        """A context manager giving a read-only ``memoryview`` of the next
        message in place.  While the block runs the message is never
        overwritten (on either kind of topic), so publishers that come
        round to it wait; same rules as ``RingBuffer.view``.  A message
        that ``recv()`` already read ahead is given as a view of that copy."""
        self._handle()
        if self._ahead:
            with self._fill_lock:
                if self._ahead:
                    return _CopyView(self._ahead.popleft())
        return View(self, 0, block, timeout, lib.pyipc_topic_release)

    def _view_raw(self, block: bool, timeout: Optional[float]) -> Tuple[Any, Any]:
        """Take the next message as a lease: (C handle, ``struct pyipc_lease *``)."""
        h = self._handle()
        d = FOREVER if (block and timeout is None) else deadline(block, timeout)
        lease = _new_lease()
        self._retry(lib.pyipc_topic_view, h, d, lease)
        return h, lease

    async def recv_async(self, timeout: Optional[float] = None) -> bytes:
        """Coroutine form of ``recv``: waits without blocking the event loop.

        Messages are only ever taken by a non-blocking ``recv`` on the
        loop's thread, between two awaits, so cancelling the coroutine
        never loses (or repeats) one.  The wait is the one ``RingBuffer``'s
        coroutines use (``pyipc/_reactor.py``): the loop's helper threads
        sleep on the topic's futex word, no thread per waiter and never the
        loop's executor.  Raises ``Empty`` when the timeout expires, and
        what ``recv`` raises.
        """
        d = FOREVER if timeout is None else deadline(True, timeout)
        ahead = self._ahead
        if ahead:
            try:
                return ahead.popleft()
            except IndexError:
                pass
        return await _reactor.retry(self, False, 0, d, self._recv_nowait)

    def _recv_nowait(self) -> bytes:
        return self.recv(False)

    def close(self) -> None:
        self._bufs = []
        self._ahead.clear()
        # Before the unmap: take this handle's words out of every event
        # loop's waitset and wake those coroutines (they raise ValueError).
        guard = self._aio
        if guard is not None:
            guard.close()
        super().close()

    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> Tuple[Any, Tuple[Any, ...]]:
        # The receiving process attaches as a new subscriber.
        return (_attach_subscriber, (self.name, self._path, self._start))


class _CopyView:
    """``view()`` of a message recv() read ahead: a read-only view of that
    private copy, released at exit.  Nothing else can write the copy, so
    an array made over the view may outlive the block."""

    __slots__ = ("_msg", "_view")

    def __init__(self, msg: bytes) -> None:
        self._msg = msg
        self._view: Optional[memoryview] = None

    def __enter__(self) -> memoryview:
        self._view = memoryview(self._msg)
        return self._view

    def __exit__(self, *exc: object) -> None:
        view, self._view = self._view, None
        if view is None:
            return
        view.release()


def attach_for_repair(name: Optional[str] = None, path: Any = None) -> Publisher:
    """Attach to a topic whose shared header may be damaged (``pyipc repair``)."""
    if (name is None) == (path is None):
        raise ValueError("give either 'name' or 'path'")
    pub = Publisher.__new__(Publisher)
    pub._h = None
    where, flags, shown = _where(name, path)
    out = ffi.new("pyipc_topic **")
    pub._adopt(lib.pyipc_topic_attach(where, flags | lib.PYIPC_SEG_REPAIR, out), out, where, flags, shown)
    return pub


def _attach_publisher(name: Optional[str], path: Optional[str] = None) -> Publisher:
    return Publisher(name, path=path)


def _attach_subscriber(name: Optional[str], path: Optional[str] = None, start: str = "next") -> Subscriber:
    return Subscriber(name, path=path, start=start)
