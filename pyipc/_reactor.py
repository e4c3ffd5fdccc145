"""The event-loop side of waits on shared memory: asyncio without a thread per waiter.

A coroutine that must wait for a ring (room to put, a message to get) cannot
sleep in ``futex(2)``: its thread runs the event loop, which sleeps in epoll.
Each event loop therefore owns a *waitset* (``csrc/waitset.c``): helper
threads of this process sleep in ``futex_waitv(2)`` on up to 127 of the
rings' futex words each, and when one moves they make an ``eventfd``
readable; the loop watches that descriptor (``add_reader``) and resolves the
futures of the words that moved.  So a thousand coroutines waiting on a
thousand rings cost eight helper threads, no executor thread, and no CPU
while nothing happens; producers in other processes need to know nothing
about it (they wake the same words as for synchronous sleepers).  Why this
design rather than a doorbell in the segment, and what the fallback for
kernels without ``futex_waitv`` costs, is written at the top of
``csrc/waitset.c``.

Why one waitset per event loop rather than one per process: readiness then
needs no routing between loops, a slow loop never delays another's wakes,
and a waitset's life ends with its loop's.  A process with several loops (in
several threads) has one set of helpers per loop that waits.  A forked child
gets new waitsets on first use (helper threads do not survive ``fork``).

Internal API, also for other pyipc layers (an RPC client awaiting replies
on a ring, for one):

* ``await wait_ring(ring, for_space, need, deadline)`` waits until a get
  (``for_space=False``) or a put of ``need`` bytes (``for_space=True``) on a
  ``RingBuffer`` may succeed, the ring is shut down or closed, or the
  deadline (``_util.deadline`` form) passes.  It never takes anything: the
  caller then tries its non-blocking operation on the loop's thread, which
  is why cancelling a waiting coroutine never loses a message.  Returns
  ``NOW`` (no sleep was needed, or the handle is closed: the caller's own
  attempt raises the right error), ``WOKEN`` or ``TIMEOUT``.
* ``await retry(ring, for_space, need, deadline, attempt)`` is the loop
  every coroutine of ``RingBuffer`` and ``Queue`` runs: call ``attempt()``
  until it stops raising ``Empty``/``Full``, waiting with ``wait_ring`` in
  between, and re-raise the last ``Empty``/``Full`` at the deadline.
* ``await wait_word(guard, word, val, deadline, check=None)`` is the
  primitive under both, for any futex word in a shared mapping: wait while
  ``*word == val``.  ``guard`` is the mapping's ``WaitGuard``: its
  ``close()``, called before the mapping goes, removes every word registered
  through it (synchronously with the helper threads) and wakes their waiters.
* ``reactor()`` is the running loop's ``Reactor`` (``mode``, ``threads()``,
  ``count()`` for tests and diagnostics).

Set ``PYIPC_ASYNC_WAIT=threads`` in the environment to force the fallback
(one helper thread per word) that is used where the kernel lacks
``futex_waitv``; ``reactor().mode`` says which one a loop got.
"""
from __future__ import annotations

import asyncio
import os
import threading
import time
import weakref
from functools import partial
from typing import Any, Callable, Dict, Optional, Set, Tuple, TypeVar

from ._core import ffi, lib
from ._util import FOREVER
from .errors import Empty, Full, error_from
from .errors import RC_EAGAIN as _EAGAIN, RC_EBADF as _EBADF, RC_EMSGSIZE as _EMSGSIZE

__all__ = [
    "NOW",
    "WOKEN",
    "TIMEOUT",
    "AUDIT_INTERVAL",
    "Reactor",
    "WaitGuard",
    "reactor",
    "retry",
    "wait_ring",
    "wait_word",
]

T = TypeVar("T")

# What wait_ring / wait_word return.
NOW = 1  # no sleep was needed (or the handle is closed: try, and it raises)
WOKEN = 2  # the word moved (or an audit or close woke the wait): try again
TIMEOUT = 0  # the deadline passed

# pyipc_ring_arm's "armed, but arm again within LEASE_CHECK_NS" (ring.c).
_ARMED_LEASE = 2
_LEASE_CHECK_NS = 10_000_000

# Mirrors of csrc/waitset_api.h (#defines do not reach the cdef).
_WAITSET_THREADS = 1
_MODE_WAITV = 1

# How often a loop re-checks the readiness of the rings it waits on, without
# any wake.  A put or shutdown always wakes a waiter at once; this catches
# what moves no futex word: a segment scribbled into a ready (or invalid)
# state, a waker that died between its update and its wake call.  The
# synchronous waits notice the same within their 100 ms slices; here one
# check is one C call, ~0.4 us with the loop around it, so at this period
# 1,000 waiters cost ~0.1 % of a core (measured: 0.39 ms per round of
# 1,000), where 100 ms would cost ~0.4 % of a core for nothing.
AUDIT_INTERVAL = 0.5

# After this many "ready" answers in a row that the attempt then found not
# ready (another consumer won the race, a lock held by a stopped process),
# the retry loop backs off with sleeps instead of yielding once, so that it
# never keeps the loop busy.
_BACKOFF_AFTER = 2
_BACKOFF_MAX = 0.05

# Before a coroutine sleeps, it looks again for a while (the synchronous
# calls spin for 50 us the same way): measured with a peer on the other CPU
# that answers after a delay, a round trip costs its delay plus ~2-4 us up to
# 50 us, against its delay plus ~35-40 us through the helper thread (two
# wake-ups: the helper's, then the loop's).  First without giving up the
# loop, for BUSY_NS (a peer that answers at once answers in ~1-2 us; this
# holds the loop no longer than one callback of its own would); then between
# the loop's other callbacks, one look per iteration, until SPIN_NS.
BUSY_NS = 3_000
SPIN_NS = 50_000

_monotonic_ns = time.monotonic_ns

_ws_add = lib.pyipc_waitset_add
_ws_remove = lib.pyipc_waitset_remove
_ws_ready = lib.pyipc_waitset_ready
_ring_arm = lib.pyipc_ring_arm
_ring_wait = lib.pyipc_ring_wait

# The pid the reactors below belong to: a forked child starts afresh.
_pid = os.getpid()


def _after_fork_in_child() -> None:
    global _pid, _last
    _pid = os.getpid()
    _last = (_dead_ref, None)


def _dead() -> None:
    return None


_dead_ref: Callable[[], Any] = _dead


class _Waiter:
    """One registered word: its future, and what removes it."""

    __slots__ = ("fut", "token", "slot", "timer", "check")

    def __init__(self, fut: "asyncio.Future[int]", token: int, slot: int, check: Optional[Callable[[], int]]) -> None:
        self.fut = fut
        self.token = token
        self.slot = slot  # -1 once removed from the waitset
        self.timer: Optional[asyncio.TimerHandle] = None
        self.check = check


def _resolve(fut: "asyncio.Future[int]", how: int) -> None:
    if not fut.done():
        fut.set_result(how)


class Reactor:
    """The waitset of one event loop (see the module docstring)."""

    __slots__ = (
        "_ws",
        "_fd",
        "_waiters",
        "_next",
        "_buf",
        "_word",
        "_val",
        "_slot",
        "_audit",
        "_loop_ref",
        "pid",
        "__weakref__",
    )

    _BATCH = 64

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        flags = _WAITSET_THREADS if os.environ.get("PYIPC_ASYNC_WAIT") == "threads" else 0
        out = ffi.new("pyipc_waitset **")
        rc = lib.pyipc_waitset_new(flags, out)
        if rc < 0:
            raise error_from(rc)
        self._ws = ffi.gc(out[0], lib.pyipc_waitset_free)
        self._fd: int = lib.pyipc_waitset_fd(self._ws)
        self._waiters: Dict[int, _Waiter] = {}
        self._next = 1
        self._buf = ffi.new("uint64_t[]", self._BATCH)
        # Out-parameters, reused: only the loop's thread uses them, and
        # never across an await.
        self._word = ffi.new("uint32_t **")
        self._val = ffi.new("uint32_t *")
        self._slot = ffi.new("uint32_t *")
        self._audit: Optional[asyncio.TimerHandle] = None
        self._loop_ref = weakref.ref(loop)
        self.pid = _pid
        loop.add_reader(self._fd, self._on_ready)

    @property
    def mode(self) -> str:
        """``"futex_waitv"`` (up to 127 words per helper thread) or
        ``"threads"`` (the fallback: a helper thread per word)."""
        return "futex_waitv" if lib.pyipc_waitset_mode(self._ws) == _MODE_WAITV else "threads"

    def threads(self) -> int:
        """Helper threads running now."""
        return int(lib.pyipc_waitset_threads(self._ws))

    def count(self) -> int:
        """Words watched now."""
        return int(lib.pyipc_waitset_count(self._ws))

    # ---- registration (loop thread) ---------------------------------------

    def _add(self, word: Any, val: int, deadline: int, check: Optional[Callable[[], int]]) -> _Waiter:
        loop = asyncio.get_running_loop()
        token = self._next
        self._next = token + 1
        rc = _ws_add(self._ws, word, val, token, self._slot)
        if rc < 0:
            raise error_from(rc)
        w = _Waiter(loop.create_future(), token, self._slot[0], check)
        self._waiters[token] = w
        if deadline != FOREVER:
            delay = (deadline - _monotonic_ns()) / 1e9
            w.timer = loop.call_at(loop.time() + delay, _resolve, w.fut, TIMEOUT)
        if check is not None and self._audit is None:
            self._audit = loop.call_later(AUDIT_INTERVAL, self._run_audit)
        return w

    def _remove(self, w: _Waiter) -> None:
        """Take w out of the waitset (any thread; under its guard's lock)."""
        if w.slot >= 0:
            _ws_remove(self._ws, w.slot, w.token)
            w.slot = -1
        self._waiters.pop(w.token, None)

    # ---- callbacks (loop thread) ------------------------------------------

    def _on_ready(self) -> None:
        buf, ws, waiters, batch = self._buf, self._ws, self._waiters, self._BATCH
        while True:
            n = _ws_ready(ws, buf, batch)
            for i in range(n):
                w = waiters.get(buf[i])
                if w is not None and not w.fut.done():
                    w.fut.set_result(WOKEN)
            if n < batch:
                return

    def _run_audit(self) -> None:
        self._audit = None
        again = False
        for w in list(self._waiters.values()):
            if w.check is None or w.fut.done():
                continue
            if w.check() != _EAGAIN:
                w.fut.set_result(WOKEN)
            else:
                again = True
        loop = self._loop_ref()
        if again and loop is not None and not loop.is_closed():
            self._audit = loop.call_later(AUDIT_INTERVAL, self._run_audit)


# One reactor per (loop, pid).  The last one used is kept beside the map, as
# (weak reference to its loop, reactor): most programs have one loop.
_reactors: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Reactor]" = weakref.WeakKeyDictionary()
_reactors_pid = _pid
_reactors_lock = threading.Lock()
_last: Tuple[Callable[[], Any], Optional[Reactor]] = (_dead_ref, None)
os.register_at_fork(after_in_child=_after_fork_in_child)


def reactor(loop: Optional[asyncio.AbstractEventLoop] = None) -> Reactor:
    """The reactor of ``loop`` (default: the running loop), made on first use."""
    global _last, _reactors, _reactors_pid
    if loop is None:
        loop = asyncio.get_running_loop()
    ref, r = _last
    if ref() is loop and r is not None:
        return r
    with _reactors_lock:
        if _reactors_pid != _pid:
            # A forked child: the parent's reactors have no helper threads
            # here.  Drop them without touching their loops (whose epoll
            # instance the child shares with the parent).
            _reactors = weakref.WeakKeyDictionary()
            _reactors_pid = _pid
        r = _reactors.get(loop)
        if r is None:
            r = _reactors[loop] = Reactor(loop)
        _last = (weakref.ref(loop), r)
    return r


# ---- guards: words in a mapping that may be unmapped ----------------------


class WaitGuard:
    """The waits registered on one mapping's words, so that closing it first
    removes them all (synchronously with the helper threads) and wakes their
    coroutines.  Registration and removal hold ``lock``."""

    __slots__ = ("lock", "closed", "waits")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.closed = False
        self.waits: Set[Tuple[Reactor, _Waiter]] = set()

    def close(self) -> None:
        """Remove every registered word and wake its waiter; any thread.
        Once it returns, no helper thread reads those words again."""
        with self.lock:
            self.closed = True
            waits, self.waits = self.waits, set()
            for r, w in waits:
                r._remove(w)
        for r, w in waits:
            if r.pid != _pid:
                continue  # a forked child's copy of its parent's wait: nobody awaits it here
            loop = w.fut.get_loop()
            try:
                loop.call_soon_threadsafe(_resolve, w.fut, WOKEN)
            except RuntimeError:
                pass  # that loop is closed: nobody awaits the future any more


_guard_lock = threading.Lock()


def _guard_of(ring: Any) -> WaitGuard:
    """The ring's guard, made once (two threads may ask at the same time)."""
    with _guard_lock:
        g: Optional[WaitGuard] = ring._aio
        if g is None:
            g = ring._aio = WaitGuard()
        return g


async def wait_word(
    guard: WaitGuard,
    word: Any,
    val: int,
    deadline: int,
    check: Optional[Callable[[], int]] = None,
) -> int:
    """Wait while ``*word == val`` (a ``uint32_t *`` into a mapping that
    ``guard`` covers), until ``deadline``.  ``check()``, if given, is called
    every ``AUDIT_INTERVAL`` and ends the wait unless it returns -EAGAIN
    (``errors.RC_EAGAIN``), as the C core's readiness tests do.  Returns
    ``WOKEN`` or ``TIMEOUT``; ``NOW`` if the guard is already closed.

    The caller must hold on to the mapping until the guard is closed, and
    must have read ``val`` (and set whatever waiter flag its wakers test)
    before calling: a word that moves after that is seen as moved."""
    r = reactor()
    with guard.lock:
        if guard.closed:
            return NOW
        w = r._add(word, val, deadline, check)
        guard.waits.add((r, w))
    return await _sleep(guard, r, w)


async def _sleep(guard: WaitGuard, r: Reactor, w: _Waiter) -> int:
    try:
        return await w.fut
    finally:
        if w.timer is not None:
            w.timer.cancel()
        with guard.lock:
            guard.waits.discard((r, w))
            r._remove(w)


async def wait_ring(ring: Any, for_space: bool, need: int, deadline: int) -> int:
    """Wait until a get (or a put of ``need`` bytes, ``for_space``) on the
    ``RingBuffer`` ``ring`` may succeed, it is shut down or closed, or
    ``deadline`` passes.  Takes nothing.  Returns ``NOW``, ``WOKEN`` or
    ``TIMEOUT`` (see the module docstring)."""
    r = reactor()
    g: Optional[WaitGuard] = ring._aio
    if g is None:
        g = _guard_of(ring)
    g.lock.acquire()
    try:
        # Under the guard's lock: close() cannot unmap the ring between the
        # arm, which hands out a pointer into the mapping, and the add.
        h = ring._h
        if h is None or g.closed:
            return NOW
        word, val = r._word, r._val
        # A topic's handles bring their own arm and wait (same contract).
        arm, wait = getattr(ring, "_c_arm", _ring_arm), getattr(ring, "_c_wait", _ring_wait)
        rc = arm(h, for_space, need, word, val)
        if rc == _ARMED_LEASE:
            # A lease is in the way whose holder may die, and a dead holder
            # wakes nobody: look again within the C core's lease check.
            soon = _monotonic_ns() + _LEASE_CHECK_NS
            if deadline == FOREVER or deadline > soon:
                deadline = soon
        elif rc != 0:
            if rc == 1 or rc == _EBADF or rc == _EMSGSIZE:
                return NOW  # ready, closed, or never: the attempt says which
            raise error_from(rc, ring.name)
        w = r._add(word[0], val[0], deadline, partial(wait, h, for_space, need, 0))
        g.waits.add((r, w))
    finally:
        g.lock.release()
    return await _sleep(g, r, w)


async def retry(ring: Any, for_space: bool, need: Any, deadline: int, attempt: Callable[[], T]) -> T:
    """Call ``attempt()`` on the loop's thread until it stops raising
    ``Empty``/``Full``, waiting on ``ring`` in between (``need`` is the size
    of the message to put, or a callable that returns it); at ``deadline``
    the last ``Empty``/``Full`` propagates, saying "in time"."""
    futile = 0
    spin_end = 0
    while True:
        try:
            return attempt()
        except (Empty, Full) as e:
            now = _monotonic_ns()
            if deadline != FOREVER and now >= deadline:
                raise type(e)(f"{e} in time") from None
            if not spin_end:
                spin_end = now + SPIN_NS
                # A peer that answers at once answers within a few
                # microseconds: look again without giving up the loop.
                busy_end = now + BUSY_NS
                h = ring._h
                wait = getattr(ring, "_c_wait", _ring_wait)
                while h is not None and _monotonic_ns() < busy_end:
                    if wait(h, for_space, need() if callable(need) else need, 0) != _EAGAIN:
                        break
                continue
            if now < spin_end:
                await asyncio.sleep(0)
                continue
        got = await wait_ring(ring, for_space, need() if callable(need) else need, deadline)
        if got != NOW:
            futile = 0
            continue
        # Ready with no sleep: usually what was missing arrived between the
        # attempt and the arm, so try again at once.  Ready again and again
        # while the attempt keeps failing (another consumer keeps winning, a
        # lock held by a stopped process): yield, then back off, so that a
        # ring stuck in that state never monopolises the loop.
        futile += 1
        if futile > _BACKOFF_AFTER:
            await asyncio.sleep(min(_BACKOFF_MAX, 0.001 * 2 ** (futile - _BACKOFF_AFTER - 1)))
        elif futile == _BACKOFF_AFTER:
            await asyncio.sleep(0)
