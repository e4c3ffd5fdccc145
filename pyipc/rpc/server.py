"""``Server``: runs registered functions for clients.

Threads, and why:

* **the control thread** (``serve_forever``, or ``start()``'s thread) waits
  on the listening socket and every client's socket with a selector:
  handshakes, control messages (cancel, stream credit) and end of file.
  It never runs a call, so a slow function never delays a cancel.
* **lane threads**, one per client (more while that client's calls are
  slow, see below), take requests straight from the client's request ring
  and run plain functions themselves, then put the reply.  There is no
  hand-off between threads on that path: waking a thread costs 10-30 us on
  this kind of machine, several times a whole call.
* **the monitor** gives a lane a helper thread when its only reader has
  been inside one call for a tick (~2 ms), so that one slow call does not
  hold up the client's other calls.  At most one thread of a lane waits on
  the ring at a time: a second spinning waiter would take the CPU from the
  thread doing the work.  Helpers leave once another thread waits again.
  The monitor ticks only while calls run and sleeps otherwise.
* **the event loop thread** (started with the first coroutine function)
  runs coroutine functions, each as a task that a cancel cancels.
* **a stream thread** per generator call in progress, which makes items
  while the client has credit: at most ``stream_window`` items ahead of
  what it consumed.

``workers`` bounds how many plain functions (and generator steps) run at
once, whatever the number of clients: a semaphore taken around each call.
"""
from __future__ import annotations

import asyncio
import collections
import inspect
import os
import pickle
import selectors
import threading
import time
import types
from typing import (Any, Callable, Deque, Dict, Iterable, List, Optional, Sequence, Set, TypeVar,
                    Union, overload)

from ..errors import Full, MessageTooLarge, ShutDown
from . import protocol as P
from .errors import NoSuchMethod
from .fragments import FRAGMENT as _FRAGMENT
from .local import DEFAULT_CAPACITY, LocalConnection, LocalListener, resolve_address

if False:  # typing only: the tcp module imports pyzmq
    from .tcp import TcpListener

__all__ = ["Server"]

_F = TypeVar("_F", bound=Callable[..., Any])

_PLAIN, _CORO, _GEN, _AGEN = range(4)
_TICK = 0.002  # the monitor's tick while calls run
_IDLE_TICKS = 50  # ticks without a running call before the monitor sleeps
_CANCELLED_MAX = 4096

_monotonic_ns = time.monotonic_ns
_GeneratorType = types.GeneratorType
_decode_header = P.decode_request_header
_decode_body = P.decode_body
_encode_error = P.encode_error
_REQ_SIZE = P.REQUEST_HEADER.size
_unpack_request = P.REQUEST_HEADER.unpack_from
_CONTROL_SIZE = P.CONTROL.size
_CALL = P.CALL
_RESULT = P.RESULT


def _kind_of(func: Callable[..., Any]) -> int:
    if inspect.iscoroutinefunction(func):
        return _CORO
    if inspect.isasyncgenfunction(func):
        return _AGEN
    if inspect.isgeneratorfunction(func):
        return _GEN
    return _PLAIN


class _ThreadState:
    """One lane thread's state, written only by that thread (so no lock)
    and read by the monitor."""

    __slots__ = ("waiting", "started")

    def __init__(self) -> None:
        self.waiting = True  # inside (or about to enter) the ring's get
        self.started = 0  # calls taken so far


class _WorkerSlots:
    """A counting semaphore for the ``workers`` bound whose uncontended
    acquire and release cost one ``deque`` operation each.

    ``threading.BoundedSemaphore`` takes a ``Condition`` on both sides,
    ~0.9 us per call here, a quarter of a server's whole cost of a
    no-op call.  The free slots are tokens in a deque: ``pop`` and
    ``append`` are each atomic.  Only a thread that finds none takes the
    condition; it counts itself in ``waiting`` under the condition's lock
    *before* it looks again, so a release either comes before that look
    (and the look finds the token) or sees ``waiting`` and notifies.
    """

    __slots__ = ("_free", "_cond", "_waiting")

    def __init__(self, n: int) -> None:
        self._free: Deque[None] = collections.deque([None] * n)
        self._cond = threading.Condition(threading.Lock())
        self._waiting = 0

    def acquire(self, blocking: bool = True) -> bool:
        try:
            self._free.pop()
            return True
        except IndexError:
            if not blocking:
                return False
        with self._cond:
            self._waiting += 1
            try:
                while True:
                    try:
                        self._free.pop()
                        return True
                    except IndexError:
                        self._cond.wait()
            finally:
                self._waiting -= 1

    def release(self) -> None:
        self._free.append(None)
        if self._waiting:
            with self._cond:
                self._cond.notify()

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class _Release:
    """A context manager that releases a semaphore already acquired."""

    __slots__ = ("sem",)

    def __init__(self, sem: _WorkerSlots) -> None:
        self.sem = sem

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self.sem.release()


class _Stream:
    """A generator call in progress: its credit and cancellation."""

    __slots__ = ("credit", "cancelled", "cond")

    def __init__(self, credit: int) -> None:
        self.credit = credit
        self.cancelled = False
        self.cond = threading.Condition(threading.Lock())


class _Lane:
    """Everything the server holds for one client.

    For ``tcp://`` a lane is either one client connection (its ``conn`` a
    ``TcpPeer``: calls, streams, tasks; no threads of its own) or the
    reader group (its ``conn`` the ``TcpListener``: the threads that read
    the socket, ``main`` being what they run).
    """

    def __init__(self, conn: Any, main: Optional[Callable[..., None]] = None) -> None:
        self.conn = conn
        self.main = main
        # How replies are framed: one message for the rings, frames for tcp.
        self.encode_reply: Callable[..., Any] = getattr(conn, "encode_reply", P.encode_reply)
        self.lock = threading.Lock()
        self.states: List[_ThreadState] = []
        self.dead = False
        self.graceful = False  # the client said goodbye: drain, then leave
        self.cancelled: Set[int] = set()
        self.last_rid = 0
        self.streams: Dict[int, _Stream] = {}
        self.tasks: Dict[int, "asyncio.Task[Any]"] = {}

    def send(self, data: Any) -> None:
        """Put a reply of any size; dropped once the client is gone."""
        try:
            try:
                self.conn.send_reply(data)
            except MessageTooLarge:
                self.conn.send_large_reply(data)  # a local ring's limit: in fragments
        except (ShutDown, ValueError):
            pass


class Server:
    """An RPC server at ``address``.

    ``address`` is a name (a socket in ``$XDG_RUNTIME_DIR/pyipc/`` or
    ``/tmp/pyipc-<uid>/``, a directory made with mode 0700) or an absolute
    path.  ``server.address`` is the resolved path.  An address where a
    server is listening raises ``FileExistsError``; a socket file left by
    a server that was killed is replaced.

    Only processes of this user, or of the uids in ``allow_uids``, may
    connect (checked with ``SO_PEERCRED``); the socket file has exactly
    the permission bits ``mode`` and is removed by ``close()``.  Another
    uid can only be served by a privileged server (the shared memory is
    handed over by name and must be given to that uid).

    ``workers`` bounds the plain functions running at once; ``capacity``
    is the bytes of each client's request and reply rings (a request or
    reply larger than a ring travels in pieces); ``stream_window`` is how many
    items a generator may run ahead of its consumer.

    ``tcp://host:port`` (the ``net`` extra; port 0 picks a free one, and
    ``server.address`` is the bound address) serves other hosts over
    ZeroMQ with CurveZMQ: ``secret_key`` is the server's secret key and
    ``allowed_keys`` the public keys of the clients it serves (key files
    made by ``pyipc keygen``, or key bytes); without ``secret_key`` (or
    ``allowed_keys``) it raises ``ValueError``.  A port in use raises
    ``FileExistsError``.  A client connection silent for ``heartbeat``
    seconds is dropped with everything it held.  ``mode``,
    ``allow_uids`` and ``capacity`` do not apply there.
    """

    def __init__(
        self,
        address: str,
        *,
        workers: int = 4,
        mode: int = 0o600,
        allow_uids: Optional[Iterable[int]] = None,
        capacity: int = DEFAULT_CAPACITY,
        stream_window: int = 16,
        secret_key: Any = None,
        allowed_keys: Optional[Sequence[Any]] = None,
        heartbeat: float = 5.0,
    ) -> None:
        if workers < 1:
            raise ValueError("'workers' must be at least 1")
        if stream_window < 1:
            raise ValueError("'stream_window' must be at least 1")
        self._closed = True  # until fully made, for close() and __del__
        self._net: Optional["TcpListener"] = None
        self._net_lanes: Dict[bytes, _Lane] = {}
        if isinstance(address, str) and address.startswith("tcp://"):
            from .keys import require_zmq

            require_zmq()
            from .tcp import TcpListener

            self._net = TcpListener(address, secret_key, allowed_keys, heartbeat)
            self._listener: Optional[LocalListener] = None
            self.address = self._net.address
        else:
            if secret_key is not None or allowed_keys is not None:
                raise ValueError("secret_key and allowed_keys are for tcp:// addresses")
            path = resolve_address(address, create_dir=True)
            self._listener = LocalListener(path, mode, allow_uids, capacity)
            self.address = path
        self.workers = workers
        self.stream_window = stream_window
        self._methods: Dict[str, tuple[Callable[..., Any], int]] = {}
        self._sem = _WorkerSlots(workers)
        self._release = _Release(self._sem)
        self._backlog: Deque[Any] = collections.deque()
        self._lanes: Dict[LocalConnection, _Lane] = {}
        self._handshaking: Set[LocalConnection] = set()
        self._threads: List[threading.Thread] = []
        self._threads_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._serving = threading.Lock()
        self._control: Optional[threading.Thread] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._loop_lock = threading.Lock()
        self._loop_thread: Optional[threading.Thread] = None
        self._monitor_asleep = True
        self._monitor_event = threading.Event()
        self._monitor: Optional[threading.Thread] = None
        self._close_done = threading.Event()
        self._looping = False
        self._closed = False

    # ---- registration ----------------------------------------------------

    @overload
    def register(self, func: _F, name: Optional[str] = None) -> _F: ...

    @overload
    def register(self, func: None = None, name: Optional[str] = None) -> Callable[[_F], _F]: ...

    def register(
        self, func: Optional[_F] = None, name: Optional[str] = None
    ) -> Union[_F, Callable[[_F], _F]]:
        """Expose ``func`` under ``name`` (default: its ``__name__``).

        Also a decorator, bare (``@server.register``) or with a name
        (``@server.register(name="add")``).  Returns ``func``.  Plain
        functions run in the worker threads, coroutine functions on the
        server's event loop, and generator functions (also async ones)
        stream their items.  Registering a name again replaces it.
        """
        if func is None:
            return lambda f: self.register(f, name)
        if not callable(func):
            raise TypeError(f"{func!r} is not callable")
        key = name if name is not None else getattr(func, "__name__", None)
        if not isinstance(key, str) or not key:
            raise ValueError("a name is needed for a callable without __name__")
        self._methods[key] = (func, _kind_of(func))
        return func

    def register_instance(self, obj: Any, prefix: str = "") -> None:
        """Expose every public method of ``obj`` (names not starting with
        ``_``) as ``prefix + name``."""
        for attr in dir(obj):
            if attr.startswith("_"):
                continue
            value = getattr(obj, attr, None)
            if callable(value):
                self.register(value, prefix + attr)

    def methods(self) -> List[str]:
        """The registered names, sorted."""
        return sorted(self._methods)

    # ---- serving ---------------------------------------------------------

    def serve_forever(self) -> None:
        """Serve in this thread until ``close()`` (from another thread or a
        called function).  ``ValueError`` if the server is closed."""
        if self._closed:
            raise ValueError("operation on a closed rpc Server")
        if not self._serving.acquire(blocking=False):
            raise RuntimeError("the server is already serving")
        try:
            self._control_loop()
            # close() may be running in another thread: return once it is
            # done, so that a program that exits next leaves nothing behind.
            self._close_done.wait(10.0)
        finally:
            self._serving.release()

    def start(self) -> "Server":
        """Serve in background threads and return the server."""
        if self._closed:
            raise ValueError("operation on a closed rpc Server")
        if self._control is None:
            self._control = threading.Thread(target=self.serve_forever, name="pyipc-rpc-server",
                                             daemon=True)
            self._control.start()
        return self

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._closed

    def close(self) -> None:
        """Stop serving: remove the socket, wake every waiting client with
        ``ServerGone``, cancel coroutines and streams, and detach from every
        client's rings.  Idempotent; callable from any thread, also from a
        function the server is running."""
        if self._closed:
            return
        self._closed = True
        if self._listener is not None:
            self._listener.close()
        if self._net is not None:
            self._net.shutdown()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        for lane in list(self._lanes.values()) + list(self._net_lanes.values()):
            self._kill_lane(lane)
        self._net_lanes.clear()
        for conn in list(self._handshaking):
            conn.close()
        self._handshaking.clear()
        self._monitor_event.set()
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        # No waiting for the threads that run calls: a call may take any
        # time.  The rings' close() waits only for threads inside a ring
        # call, which the shutdowns above have woken; a call still running
        # finds its ring closed when it replies, and its thread leaves.
        for lane in list(self._lanes.values()):
            lane.conn.close()
        self._lanes.clear()
        if not self._looping:
            self._close_pipe()
        self._close_done.set()
        for t in (self._control, self._loop_thread):
            if t is not None and t is not threading.current_thread():
                t.join(1.0)
        if self._net is not None:
            self._net.close()  # after the control thread: it uses the ZAP socket

    def _close_pipe(self) -> None:
        with self._threads_lock:
            fds = (self._wake_r, self._wake_w)
            self._wake_r = self._wake_w = -1
        for fd in fds:
            if fd < 0:
                continue
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._lanes)} clients"
        return f"<pyipc.rpc.Server {self.address!r} {state}>"

    # ---- the control thread ----------------------------------------------

    def _control_loop(self) -> None:
        if self._net is not None:
            self._net_loop(self._net)
            return
        assert self._listener is not None
        sel = selectors.DefaultSelector()
        self._looping = True
        try:
            try:
                sel.register(self._listener.fileno(), selectors.EVENT_READ, None)
                sel.register(self._wake_r, selectors.EVENT_READ, self)
            except (ValueError, OSError):
                if self._closed:
                    return  # closed before this thread got going
                raise
            while not self._closed:
                for key, _ in sel.select():
                    if self._closed:
                        break
                    if key.data is None:
                        conn = self._listener.accept()
                        if conn is not None:
                            self._handshaking.add(conn)
                            sel.register(conn.fileno(), selectors.EVENT_READ, conn)
                    elif key.data is self:
                        os.read(self._wake_r, 512)
                    else:
                        self._readable(sel, key.data)
        finally:
            sel.close()
            self._looping = False
            if self._closed:
                self._close_pipe()

    def _readable(self, sel: selectors.BaseSelector, conn: LocalConnection) -> None:
        while True:
            try:
                data = conn.channel.recv(timeout=0)
            except TimeoutError:
                return
            except (EOFError, OSError, ValueError):
                self._gone(sel, conn)
                return
            if conn in self._handshaking:
                self._handshaking.discard(conn)
                if data != b"A":
                    self._gone(sel, conn)
                    return
                conn.forget_names()
                self._open_lane(conn)
                continue
            msg = P.decode_control(data)
            lane = self._lanes.get(conn)
            if msg is None or lane is None:
                continue
            kind, rid, n = msg
            if kind == P.BYE:
                lane.graceful = True
            else:
                self._control_message(lane, kind, rid, n)

    def _control_message(self, lane: _Lane, kind: int, rid: int, n: int) -> None:
        """A cancel or a stream credit from the client of ``lane``."""
        if kind == P.CANCEL:
            self._cancel(lane, rid)
        elif kind == P.CREDIT:
            stream = lane.streams.get(rid)
            if stream is not None:
                with stream.cond:
                    stream.credit += n
                    stream.cond.notify()

    def _gone(self, sel: selectors.BaseSelector, conn: LocalConnection) -> None:
        """The client closed its socket or died: drop everything it had."""
        try:
            sel.unregister(conn.fileno())
        except (KeyError, ValueError):
            pass
        self._handshaking.discard(conn)
        lane = self._lanes.pop(conn, None)
        if lane is None:
            conn.close()
            return
        with lane.lock:
            if lane.graceful and lane.states:
                # Its lane threads run what is queued, then find the ring
                # shut down (the client did it); the last one closes.
                lane.conn.forget_names()
                try:
                    lane.conn.replies.shutdown(True)
                except ValueError:
                    pass
                return
        self._kill_lane(lane)
        conn.close()

    def _cancel(self, lane: _Lane, rid: int) -> None:
        cancelled = lane.cancelled
        if len(cancelled) >= _CANCELLED_MAX:
            # Cancels that raced with their call's reply are never looked
            # up again; ids grow, so the old ones can go.
            floor = lane.last_rid - _CANCELLED_MAX
            lane.cancelled = cancelled = {r for r in cancelled if r > floor}
        cancelled.add(rid)
        stream = lane.streams.get(rid)
        if stream is not None:
            with stream.cond:
                stream.cancelled = True
                stream.cond.notify()
        task = lane.tasks.get(rid)
        if task is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(task.cancel)

    def _kill_lane(self, lane: _Lane) -> None:
        lane.dead = True
        lane.conn.shutdown()  # wakes its threads; puts and gets now fail
        for stream in list(lane.streams.values()):
            with stream.cond:
                stream.cancelled = True
                stream.cond.notify()
        loop = self._loop
        if loop is not None:
            for task in list(lane.tasks.values()):
                loop.call_soon_threadsafe(task.cancel)

    # ---- lanes -----------------------------------------------------------

    def _spawn(self, target: Callable[..., None], *args: Any, name: str) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._threads_lock:
            self._threads = [x for x in self._threads if x.is_alive()]
            self._threads.append(t)
        t.start()

    def _open_lane(self, conn: LocalConnection) -> None:
        lane = _Lane(conn)
        self._lanes[conn] = lane
        state = _ThreadState()
        lane.states.append(state)
        self._spawn(self._lane_main, lane, state, name="pyipc-rpc-lane")
        if self._monitor is None:
            self._monitor = threading.Thread(target=self._monitor_main, name="pyipc-rpc-monitor",
                                             daemon=True)
            self._monitor.start()

    def _lane_main(self, lane: _Lane, state: _ThreadState) -> None:
        conn = lane.conn
        # get() rather than get_into() a reused buffer: for small messages
        # it is the faster of the two (~0.35 us against ~1 us here), and
        # large ones are copied out of the buffer anyway.
        recv = conn.recv_request
        handle = self._handle
        states = lane.states
        try:
            while True:
                try:
                    data = recv()
                except (ShutDown, ValueError):
                    return
                state.waiting = False
                state.started += 1
                if self._monitor_asleep:
                    self._monitor_asleep = False
                    self._monitor_event.set()
                handle(lane, memoryview(data), len(data))
                if len(states) > 1:
                    # A helper exists: only one thread should wait on the ring.
                    with lane.lock:
                        if any(s.waiting for s in states if s is not state):
                            return
                        state.waiting = True
                else:
                    state.waiting = True
        finally:
            with lane.lock:
                if state in states:
                    states.remove(state)
                last = not states and lane.graceful and lane.conn not in self._lanes
            if last:
                lane.conn.close()

    def _monitor_main(self) -> None:
        seen: Dict[_Lane, tuple[int, ...]] = {}
        idle = 0
        event = self._monitor_event
        while not self._closed:
            if self._monitor_asleep:
                event.wait()
                event.clear()
                idle = 0
                continue
            event.wait(_TICK)
            busy = False
            for lane in list(self._lanes.values()):
                states = lane.states
                if lane.dead or any(s.waiting for s in states):
                    seen.pop(lane, None)
                    continue
                busy = True
                started = tuple(s.started for s in states)
                if seen.get(lane) == started:
                    self._add_helper(lane)
                seen[lane] = started
            if busy:
                idle = 0
            else:
                idle += 1
                if idle >= _IDLE_TICKS:
                    seen.clear()
                    self._monitor_asleep = True
                    # A lane that became busy just before we fell asleep
                    # saw us awake and did not wake us: look once more.
                    if any(not s.waiting for lane in list(self._lanes.values())
                           for s in lane.states):
                        self._monitor_asleep = False

    def _add_helper(self, lane: _Lane) -> None:
        with lane.lock:
            if lane.dead or len(lane.states) > self.workers + 1:
                return
            if any(s.waiting for s in lane.states):
                return
            state = _ThreadState()
            lane.states.append(state)
        self._spawn(lane.main or self._lane_main, lane, state, name="pyipc-rpc-lane")

    # ---- tcp:// -------------------------------------------------------------
    #
    # One ROUTER socket carries every client's calls and control messages
    # (see tcp.py).  Its readers are the lane threads of one reader group:
    # as for a local client, a reader runs plain functions itself (no
    # hand-off to a worker thread) and the monitor adds a reader when one
    # has been inside a call for a tick.  Each client connection has a
    # lane of its own for its calls, streams and tasks, made when its
    # first message arrives and dropped when it says goodbye or its
    # connection is lost.

    def _net_loop(self, net: "TcpListener") -> None:
        self._looping = True
        try:
            if self._closed:
                return
            group = _Lane(net, self._net_main)
            self._lanes[net] = group  # type: ignore[index]
            state = _ThreadState()
            group.states.append(state)
            self._spawn(self._net_main, group, state, name="pyipc-rpc-net")
            if self._monitor is None:
                self._monitor = threading.Thread(target=self._monitor_main,
                                                 name="pyipc-rpc-monitor", daemon=True)
                self._monitor.start()
            net.serve_control(self._wake_r, lambda: self._closed, self._net_lost)
        finally:
            self._looping = False
            if self._closed:
                self._close_pipe()

    def _net_lost(self) -> None:
        """A client connection was lost: drop the lanes of every client
        that can no longer be reached (a probe finds them)."""
        net = self._net
        if net is None:
            return
        for peer, lane in list(self._net_lanes.items()):
            if not net.reachable(peer):
                self._net_lanes.pop(peer, None)
                self._kill_lane(lane)

    def _net_main(self, group: _Lane, state: _ThreadState) -> None:
        net = group.conn
        recv = net.recv_request
        handle = self._handle_net
        lanes = self._net_lanes
        states = group.states
        try:
            while True:
                try:
                    peer, first, rest = recv()
                except (ShutDown, ValueError):
                    return
                state.waiting = False
                state.started += 1
                if self._monitor_asleep:
                    self._monitor_asleep = False
                    self._monitor_event.set()
                lane = lanes.get(peer)
                if lane is None:
                    if self._closed:
                        return
                    from .tcp import TcpPeer

                    lane = lanes.setdefault(peer, _Lane(TcpPeer(net, peer)))
                if len(first) == _CONTROL_SIZE and not rest:
                    msg = P.decode_control(first)
                    if msg is not None:
                        kind, rid, n = msg
                        if kind == P.BYE:
                            self._net_bye(peer, lane)
                        else:
                            self._control_message(lane, kind, rid, n)
                else:
                    handle(lane, first, rest)
                if len(states) > 1:
                    with group.lock:
                        if any(s.waiting for s in states if s is not state):
                            return
                        state.waiting = True
                else:
                    state.waiting = True
        finally:
            with group.lock:
                if state in states:
                    states.remove(state)

    def _net_bye(self, peer: bytes, lane: _Lane) -> None:
        """The client is closing.  Everything it sent has been read (one
        connection keeps its order), so its calls run on (a notify sent
        just before close() too), but its streams have no reader left."""
        self._net_lanes.pop(peer, None)
        lane.graceful = True
        for stream in list(lane.streams.values()):
            with stream.cond:
                stream.cancelled = True
                stream.cond.notify()

    def _handle_net(self, lane: _Lane, first: bytes, rest: List[Any]) -> None:
        """Run one request from a tcp:// client: ``first`` is the header and
        pickle, or the header alone with the pickle and its buffers in
        ``rest`` (see tcp.py).  The deadline came as nanoseconds left.

        The same steps as ``_handle``, which stays separate so that the
        local path does no transport test."""
        n = len(first)
        if n < _REQ_SIZE:
            return
        kind, _, nbufs, rid, left = _unpack_request(first)
        lane.last_rid = rid
        if lane.cancelled and rid in lane.cancelled:
            lane.cancelled.discard(rid)
            return
        deadline = _monotonic_ns() + left if left > 0 else 0
        if left == 1:
            return  # it expired before it was sent
        reply = kind == _CALL
        try:
            if rest:
                if len(rest) != nbufs + 1:
                    raise pickle.UnpicklingError(
                        f"{len(rest) - 1} buffers came where {nbufs} were announced")
                method, args, kwargs = pickle.loads(rest[0], buffers=rest[1:])
            else:
                method, args, kwargs = _decode_body(memoryview(first), _REQ_SIZE, n, 0)
            entry = self._methods.get(method)
            if entry is None:
                raise NoSuchMethod(f"no method {method!r} on this server")
        except BaseException as exc:
            if reply:
                lane.send(_encode_error(rid, exc))
            return
        func, fkind = entry
        if fkind == _PLAIN:
            self._submit_net(lane, rid, reply, deadline, func, args, kwargs)
        elif fkind == _CORO:
            self._ensure_loop().call_soon_threadsafe(
                self._start_task, lane, rid, reply, deadline, func, args, kwargs)
        else:
            self._start_stream(lane, rid, reply, func, args, kwargs, fkind == _AGEN)

    # ---- running calls ---------------------------------------------------

    def _handle(self, lane: _Lane, view: memoryview, n: int, owned: bool = False) -> None:
        """Run one request taken from ``lane``'s ring (in ``view[:n]``;
        ``owned``: a buffer of its own, put together from fragments)."""
        try:
            kind, _, nbufs, rid, deadline = _decode_header(view, n)
        except ValueError:
            return  # not a request: nothing to answer
        if kind >= _FRAGMENT:
            # A piece of a request larger than the ring (fragments.py):
            # whoever places the last piece runs the request.
            whole = lane.conn.incoming.feed(view, n)
            if whole is not None and whole[:1] and whole[0] < _FRAGMENT:
                self._handle(lane, memoryview(whole), len(whole), True)
            return
        lane.last_rid = rid
        if lane.cancelled and rid in lane.cancelled:
            lane.cancelled.discard(rid)
            return
        if deadline and _monotonic_ns() >= deadline:
            return  # the caller gave up already: never run it
        reply = kind == _CALL
        try:
            method, args, kwargs = _decode_body(view, _REQ_SIZE, n, nbufs, owned)
            entry = self._methods.get(method)
            if entry is None:
                raise NoSuchMethod(f"no method {method!r} on this server")
        except BaseException as exc:
            if reply:
                lane.send(_encode_error(rid, exc))
            return
        func, fkind = entry
        if fkind == _PLAIN:
            self._run_plain(lane, rid, reply, deadline, func, args, kwargs)
        elif fkind == _CORO:
            self._ensure_loop().call_soon_threadsafe(
                self._start_task, lane, rid, reply, deadline, func, args, kwargs)
        else:
            self._start_stream(lane, rid, reply, func, args, kwargs, fkind == _AGEN)

    def _submit_net(self, *call: Any) -> None:
        """Run a plain function's call now if a worker slot is free, else
        leave it in the backlog for whoever frees one.

        A tcp:// reader never waits for a slot: it is also the reader of
        every client's cancels and stream credit, which must not wait
        behind slow calls (a local client's come through a socket of
        their own)."""
        if self._sem.acquire(False):
            self._run_plain(*call, gate=self._release)  # type: ignore[misc]
        else:
            self._backlog.append(call)
        if self._backlog:
            self._drain_backlog()

    def _drain_backlog(self) -> None:
        """Run backlog calls while worker slots are free.  Called after
        every release of a slot on the tcp:// paths, so that no call is
        left behind: one queued just after a release finds the slot free."""
        backlog = self._backlog
        while backlog and self._sem.acquire(False):
            try:
                call = backlog.popleft()
            except IndexError:
                self._sem.release()
                return
            self._run_plain(*call, gate=self._release)  # type: ignore[misc]

    def _run_plain(self, lane: _Lane, rid: int, reply: bool, deadline: int,
                   func: Callable[..., Any], args: Any, kwargs: Any, gate: Any = None) -> None:
        # ``gate`` (tcp://): the worker slot is held already and released
        # on leaving (see _submit_net).
        with self._sem if gate is None else gate:
            # Waiting for a worker is waiting in the queue too.
            if deadline and _monotonic_ns() >= deadline:
                return
            if lane.dead or (lane.cancelled and rid in lane.cancelled):
                lane.cancelled.discard(rid)
                return
            try:
                result = func(*args, **kwargs) if kwargs else func(*args)
            except BaseException as exc:
                if reply:
                    lane.send(_encode_error(rid, exc))
                return
        if type(result) is _GeneratorType:
            self._stream(lane, rid, reply, result, False, started=True)
            return
        if not reply:
            return
        try:
            data = lane.encode_reply(_RESULT, rid, result)
        except BaseException as exc:
            data = _encode_error(rid, exc)
        try:
            lane.conn.send_reply(data)
        except MessageTooLarge:
            lane.send(data)  # in fragments
        except (ShutDown, ValueError):
            pass

    # ---- coroutine functions -----------------------------------------------

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None:
            return loop
        with self._loop_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                self._loop_thread = threading.Thread(
                    target=self._loop_main, args=(loop,), name="pyipc-rpc-loop", daemon=True)
                self._loop_thread.start()
                self._loop = loop
            return self._loop

    def _loop_main(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        finally:
            loop.close()

    def _start_task(self, lane: _Lane, rid: int, reply: bool, deadline: int,
                    func: Callable[..., Any], args: Any, kwargs: Any) -> None:
        if lane.dead or (lane.cancelled and rid in lane.cancelled):
            lane.cancelled.discard(rid)
            return
        if deadline and _monotonic_ns() >= deadline:
            return
        assert self._loop is not None
        task = self._loop.create_task(self._run_coro(lane, rid, reply, deadline, func, args, kwargs))
        lane.tasks[rid] = task

    async def _run_coro(self, lane: _Lane, rid: int, reply: bool, deadline: int,
                        func: Callable[..., Any], args: Any, kwargs: Any) -> None:
        try:
            coro = func(*args, **kwargs)
            if deadline:
                # The deadline reaches the coroutine as task cancellation.
                result = await asyncio.wait_for(coro, (deadline - _monotonic_ns()) / 1e9)
            else:
                result = await coro
        except asyncio.CancelledError:
            return  # cancelled by the client or by close(): nobody waits
        except asyncio.TimeoutError:
            if deadline and _monotonic_ns() >= deadline:
                return  # the caller has raised TimeoutError already
            if reply:
                await self._send_async(lane, _encode_error(rid, TimeoutError("timed out")))
            return
        except BaseException as exc:
            if reply:
                await self._send_async(lane, _encode_error(rid, exc))
            return
        finally:
            lane.tasks.pop(rid, None)
        if not reply:
            return
        try:
            data = lane.encode_reply(_RESULT, rid, result)
        except BaseException as exc:
            data = _encode_error(rid, exc)
        await self._send_async(lane, data)

    async def _send_async(self, lane: _Lane, data: bytes) -> None:
        """Put a reply from the event loop without blocking it."""
        try:
            try:
                lane.conn.send_reply(data, False)
            except Full:
                await lane.conn.send_reply_async(data)
        except MessageTooLarge:
            try:
                await lane.conn.send_large_reply_async(data)  # a local ring's limit: in fragments
            except (ShutDown, ValueError):
                pass
        except (ShutDown, ValueError):
            pass

    # ---- generators --------------------------------------------------------

    def _start_stream(self, lane: _Lane, rid: int, reply: bool, func: Callable[..., Any],
                      args: Any, kwargs: Any, is_async: bool) -> None:
        try:
            gen = func(*args, **kwargs)
        except BaseException as exc:
            if reply:
                lane.send(_encode_error(rid, exc))
            return
        self._stream(lane, rid, reply, gen, is_async, started=False)

    def _stream(self, lane: _Lane, rid: int, reply: bool, gen: Any, is_async: bool,
                started: bool) -> None:
        if not reply:
            # A notify of a generator: run it to the end, nobody reads it.
            self._spawn(self._drain, gen, is_async, name="pyipc-rpc-stream")
            return
        stream = _Stream(self.stream_window)
        lane.streams[rid] = stream
        lane.send(lane.encode_reply(P.STREAM, rid, None))
        self._spawn(self._stream_main, lane, rid, stream, gen, is_async, name="pyipc-rpc-stream")

    def _next(self, gen: Any, is_async: bool) -> Any:
        if not is_async:
            return next(gen)
        fut = asyncio.run_coroutine_threadsafe(gen.__anext__(), self._ensure_loop())
        try:
            return fut.result()
        except StopAsyncIteration:
            raise StopIteration from None

    def _close_gen(self, gen: Any, is_async: bool) -> None:
        try:
            if is_async:
                asyncio.run_coroutine_threadsafe(gen.aclose(), self._ensure_loop()).result(5.0)
            else:
                gen.close()
        except BaseException:
            pass

    def _drain(self, gen: Any, is_async: bool) -> None:
        try:
            while True:
                try:
                    with self._sem:
                        self._next(gen, is_async)
                finally:
                    if self._backlog:
                        self._drain_backlog()
        except BaseException:
            pass

    def _stream_main(self, lane: _Lane, rid: int, stream: _Stream, gen: Any,
                     is_async: bool) -> None:
        cond = stream.cond
        try:
            while True:
                with cond:
                    while stream.credit <= 0 and not stream.cancelled and not lane.dead:
                        cond.wait(1.0)
                    if stream.cancelled or lane.dead:
                        self._close_gen(gen, is_async)
                        return
                    stream.credit -= 1
                with self._sem:
                    try:
                        item = self._next(gen, is_async)
                    except StopIteration:
                        lane.send(lane.encode_reply(P.END, rid, None))
                        return
                    except BaseException as exc:
                        lane.send(_encode_error(rid, exc))
                        return
                if self._backlog:
                    self._drain_backlog()
                try:
                    data = lane.encode_reply(P.ITEM, rid, item)
                    try:
                        lane.conn.send_reply(data)
                    except MessageTooLarge:
                        lane.conn.send_large_reply(data)  # a local ring's limit: in fragments
                except (ShutDown, ValueError):
                    self._close_gen(gen, is_async)
                    return
                except BaseException as exc:
                    lane.send(_encode_error(rid, exc))
                    self._close_gen(gen, is_async)
                    return
        finally:
            lane.streams.pop(rid, None)
            lane.cancelled.discard(rid)
            if self._backlog:
                self._drain_backlog()
