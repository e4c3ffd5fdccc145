"""Zero-copy leases: ``reserve()`` writes a message in place, ``view()`` reads one.

A lease is a piece of the ring's shared memory that belongs to one process
for the length of a ``with`` block.  The rule that makes it safe: the space
of a lease goes back to the ring only once nothing in this process can reach
that memory any more.  Python gives no hook for "the last view of a buffer is
gone", so the lease builds one out of reference counting:

    the memoryview the user gets
      -> its managed buffer (shared by every slice and export of it)
        -> a cffi buffer object over the record
          -> a cffi pointer made by ``ffi.gc`` with ``_Token.end`` as its
             destructor

Every way of reaching the memory (the view, a slice of it, a NumPy array
made over it, even ``view.obj``) keeps that chain alive, and when the last
one goes CPython frees the chain at once and the destructor ends the lease
in C.  At the end of the ``with`` block the lease releases its view; if the
chain survives that, something still exports the memory: the exit raises
``BufferError`` and the lease ends later, when the chain dies (a
reservation is then dropped, never published).

The same leases serve every kind of segment: the owner passes the C
functions that end its leases (a ring's by default, a topic's for
``Publisher.reserve`` and ``Subscriber.view``).
"""
from __future__ import annotations

import os
from typing import Any, Optional

from ._core import ffi, lib
from .errors import RC_EINTR

__all__ = ["Reservation", "View"]

_c_commit = lib.pyipc_ring_commit
_c_release = lib.pyipc_ring_release


class _Token:
    """Ends one lease in C, exactly once, in the process that took it."""

    __slots__ = ("h", "slot", "pos", "size", "publish", "done", "rc", "pid", "fn")

    def __init__(self, h: Any, slot: int, pos: int, size: int, publish: Optional[bool], fn: Any) -> None:
        self.h = h  # the segment's C handle: kept alive (and mapped) by us
        self.slot = slot
        self.pos = pos
        self.size = size
        self.publish = publish  # None: a view; True/False: a reservation
        self.done = False
        self.rc = 0
        self.pid = os.getpid()
        self.fn = fn  # release(h, slot, pos) for a view, commit(h, slot, pos, size, publish)

    def end(self, _ptr: Any = None) -> None:
        if self.done:
            return
        self.done = True
        if os.getpid() != self.pid:
            return  # a forked child's copy: the lease is the parent's
        while True:
            if self.publish is None:
                rc = self.fn(self.h, self.slot, self.pos)
            else:
                rc = self.fn(self.h, self.slot, self.pos, self.size, 1 if self.publish else 0)
            if rc != RC_EINTR:
                break
        self.rc = rc


class _Lease:
    __slots__ = ("_ring", "_size", "_block", "_timeout", "_view", "_token", "_fn")

    def __init__(self, ring: Any, size: int, block: bool, timeout: Optional[float], fn: Any = None) -> None:
        self._ring = ring  # whatever made the lease: a RingBuffer, Publisher or Subscriber
        self._fn = fn
        self._size = size
        self._block = block
        self._timeout = timeout
        self._view: Optional[memoryview] = None
        self._token: Optional[_Token] = None

    def _wrap(self, ptr: Any, token: _Token, readonly: bool) -> memoryview:
        owner = ffi.gc(ptr, token.end)
        view = memoryview(ffi.buffer(owner, token.size))
        if readonly:
            writable, view = view, view.toreadonly()
            writable.release()
        self._token = token
        self._view = view
        return view

    def _finish(self) -> None:
        """Release our view; raise BufferError if the memory is still reachable."""
        view, token = self._view, self._token
        self._view = self._token = None
        if view is None or token is None:
            return
        try:
            view.release()
        except BufferError:
            pass  # exported: the export keeps the chain, checked below
        del view
        if not token.done:
            reserved = token.publish is not None
            if reserved:
                token.publish = False
            raise BufferError(
                "the lease's memory is still exported (a NumPy array or a memoryview made from "
                "it is alive): its space stays held until the last one is gone"
                + (", and the message is not published" if reserved else "")
            )
        if token.rc < 0:
            raise self._ring._lease_error(token.rc)


class Reservation(_Lease):
    """``with ring.reserve(size) as buf:`` - write a message of ``size`` bytes in place.

    ``buf`` is a writable ``memoryview`` of exactly ``size`` bytes inside the
    ring.  The message is published when the block exits normally; if the
    block raises, nothing is published and the space is returned.
    """

    __slots__ = ()

    def __enter__(self) -> memoryview:
        h, ptr, slot, pos = self._ring._reserve_raw(self._size, self._block, self._timeout)
        fn = _c_commit if self._fn is None else self._fn
        return self._wrap(ptr, _Token(h, slot, pos, self._size, True, fn), readonly=False)

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None and self._token is not None:
            self._token.publish = False
        self._finish()


class View(_Lease):
    """``with ring.view() as msg:`` - read the oldest message in place.

    ``msg`` is a read-only ``memoryview``; the message is taken (no other
    consumer gets it) on entry, and its space goes back to the producers
    when the block exits.
    """

    __slots__ = ()

    def __enter__(self) -> memoryview:
        h, ptr, slot, pos, size = self._ring._view_raw(self._block, self._timeout)
        fn = _c_release if self._fn is None else self._fn
        return self._wrap(ptr, _Token(h, slot, pos, size, None, fn), readonly=True)

    def __exit__(self, *_: Any) -> None:
        self._finish()

