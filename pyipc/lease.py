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
``Publisher.reserve`` and ``Subscriber.view``), which take the same
``struct pyipc_lease``.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional

from ._core import ffi, lib
from .errors import RC_EINTR

__all__ = ["Reservation", "View"]

_c_commit = lib.pyipc_ring_commit
_c_release = lib.pyipc_ring_release
_gc = ffi.gc
_buffer = ffi.buffer

# Which process a lease belongs to, without a getpid() system call per
# lease: bumped in every forked child.
_generation = [0]
os.register_at_fork(after_in_child=lambda: _generation.__setitem__(0, _generation[0] + 1))


class _Token:
    """Ends one lease in C, exactly once, in the process that took it."""

    __slots__ = ("h", "lease", "publish", "done", "rc", "gen", "fn")

    def __init__(self, h: Any, lease: Any, publish: Optional[bool], fn: Any = None) -> None:
        self.h = h  # the segment's C handle: kept alive (and mapped) by us
        self.lease = lease  # struct pyipc_lease *
        self.publish = publish  # None: a view; True/False: a reservation
        self.done = False
        self.rc = 0
        self.gen = _generation[0]
        # release(h, lease) for a view, commit(h, lease, publish) for a reservation
        self.fn: Callable[..., int] = fn if fn is not None else (_c_release if publish is None else _c_commit)

    def end(self, _ptr: Any = None) -> None:
        if self.done:
            return
        self.done = True
        if self.gen != _generation[0]:
            return  # a forked child's copy: the lease is the parent's
        while True:
            if self.publish is None:
                rc = self.fn(self.h, self.lease)
            else:
                rc = self.fn(self.h, self.lease, 1 if self.publish else 0)
            if rc != RC_EINTR:
                break
        self.rc = rc


class _Lease:
    __slots__ = ("_ring", "_size", "_block", "_timeout", "_view", "_token", "_fn")

    def __init__(self, ring: Any, size: int, block: bool, timeout: Optional[float], fn: Any = None) -> None:
        self._ring = ring  # whatever made the lease: a RingBuffer, Publisher or Subscriber
        self._fn = fn  # the C function that ends it (None: the ring's)
        self._size = size
        self._block = block
        self._timeout = timeout
        self._view: Optional[memoryview] = None
        self._token: Optional[_Token] = None

    def _wrap(self, token: _Token, readonly: bool) -> memoryview:
        lease = token.lease
        # The destructor lives on the pointer the buffer keeps: see the
        # module docstring.
        view = memoryview(_buffer(_gc(lease.ptr, token.end), lease.len))
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
        h, lease = self._ring._reserve_raw(self._size, self._block, self._timeout)
        return self._wrap(_Token(h, lease, True, self._fn), readonly=False)

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
        h, lease = self._ring._view_raw(self._block, self._timeout)
        return self._wrap(_Token(h, lease, None, self._fn), readonly=True)

    def __exit__(self, *_: Any) -> None:
        self._finish()
