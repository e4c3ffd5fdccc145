"""``connect`` and ``Client``: calling a server's functions.

One connection carries every thread's calls, with replies matched by id.
Who reads the replies, and why:

* A thread waiting for a call's result reads the reply ring itself when
  nobody else is reading it (the "reader role", a lock taken without
  waiting).  A sequential caller therefore never involves another thread:
  waking one costs 10-30 us on this kind of machine, several times a call.
* A thread that finds the role taken waits on an event of its own; the
  reader hands it its reply as it passes, and when the reader leaves it
  passes the role to a waiter whose reply has not come yet.
* Futures (``submit``) and coroutines (``acall``) have nobody waiting in a
  thread, so a pump thread takes the role while any of them is pending and
  sleeps otherwise.  Results for an event loop are handed over in batches:
  one ``call_soon_threadsafe`` for all the replies read in one go.

A forked child that uses a client it inherited connects anew on its first
call (the parent keeps the old connection); a client pickled into another
process connects there by address.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import itertools
import os
import pickle
import threading
import time
import weakref
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Set, Tuple, Union

from ..errors import Empty, Full, ShutDown
from . import protocol as P
from .errors import ServerGone
from .fragments import FRAGMENT
from .local import LocalClientTransport

__all__ = ["Client", "connect", "RemoteIterator", "RpcFuture"]

_monotonic_ns = time.monotonic_ns
_encode_request = P.encode_request
_decode_body = P.decode_body
_REPLY = P.REPLY_HEADER
_REPLY_SIZE = P.REPLY_HEADER.size
_unpack_reply = P.REPLY_HEADER.unpack_from
_FRAGMENT = FRAGMENT
_RESULT, _ERROR, _STREAM, _ITEM, _END = P.RESULT, P.ERROR, P.STREAM, P.ITEM, P.END
_CALL, _NOTIFY = P.CALL, P.NOTIFY
_END_OF_STREAM = object()
_BATCH = 64  # replies taken per ring call when several calls are pending

# Clients of this process, so that a forked child knows to reconnect.
_clients: "weakref.WeakSet[Client]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_clients):
        client._forked = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def _deadline(timeout: Optional[float]) -> int:
    if timeout is None:
        return 0
    if timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")
    return _monotonic_ns() + int(timeout * 1e9)


def _left(deadline: int) -> Optional[float]:
    if not deadline:
        return None
    return max(0.0, (deadline - _monotonic_ns()) / 1e9)


# ---- what waits for replies ---------------------------------------------------


class _Slot:
    """A synchronous call's reply, filled in by whichever thread reads it."""

    __slots__ = ("ready", "kind", "value", "event")

    def __init__(self) -> None:
        self.ready = False
        self.kind = 0
        self.value: Any = None
        self.event: Optional[threading.Event] = None

    def complete(self, client: "Client", rid: int, kind: int, value: Any) -> None:
        self.kind = kind
        self.value = value
        self.ready = True
        ev = self.event
        if ev is not None:
            ev.set()


class RpcFuture(concurrent.futures.Future):  # type: ignore[type-arg]
    """The ``concurrent.futures.Future`` of a ``submit``.

    ``result()`` and ``exception()`` read replies themselves when nobody
    else does (as a synchronous call would), rather than wait for the pump
    thread to hand the result over: one thread switch less per result.
    """

    _client: Optional["Client"] = None

    def _read_until_done(self, timeout: Optional[float]) -> None:
        client = self._client
        if client is None or self.done() or client._closed or client._forked:
            return
        try:
            client._wait(_DoneWaiter(self), _deadline(timeout))
        except TimeoutError:
            pass  # the base class raises its own TimeoutError

    def result(self, timeout: Optional[float] = None) -> Any:
        self._read_until_done(timeout)
        return super().result(timeout)

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        self._read_until_done(timeout)
        return super().exception(timeout)

    def cancel(self) -> bool:
        """Cancel the call if its result has not come: the server never
        starts it if it has not yet (returns False once it is done)."""
        if not super().cancel():
            return False
        client = self._client
        if client is not None:
            client._abandon(self._rid)
        return True

    _rid = 0


class _DoneWaiter:
    """What ``RpcFuture.result`` waits for."""

    __slots__ = ("future", "event")

    def __init__(self, future: concurrent.futures.Future) -> None:  # type: ignore[type-arg]
        self.future = future
        self.event: Optional[threading.Event] = None

    @property
    def ready(self) -> bool:
        return self.future.done()


class _FutureEntry:
    """A ``submit`` call's future."""

    __slots__ = ("future", "waiter")

    def __init__(self, future: "concurrent.futures.Future[Any]") -> None:
        self.future = future

    def complete(self, client: "Client", rid: int, kind: int, value: Any) -> None:
        client._async.discard(rid)
        fut = self.future
        if kind == _STREAM:
            value = RemoteIterator(client, rid, value)
        try:
            # From PENDING straight to FINISHED: one trip through the
            # future's lock rather than two.
            if kind == _ERROR:
                fut.set_exception(value)
            else:
                fut.set_result(value)
        except concurrent.futures.InvalidStateError:
            return  # cancelled meanwhile
        if client._idle:
            client._wake_done_waiters()


class _AsyncEntry:
    """An ``acall``'s asyncio future, resolved on its own loop."""

    __slots__ = ("loop", "future")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: "asyncio.Future[Any]") -> None:
        self.loop = loop
        self.future = future

    def complete(self, client: "Client", rid: int, kind: int, value: Any) -> None:
        client._async.discard(rid)
        if kind == _STREAM:
            value = RemoteIterator(client, rid, value)
        batch = client._deliveries.get(self.loop)
        if batch is None:
            batch = client._deliveries[self.loop] = []
        batch.append((self.future, kind, value))


def _resolve(batch: List[Tuple["asyncio.Future[Any]", int, Any]]) -> None:
    """On the event loop: resolve a batch of acall futures."""
    for fut, kind, value in batch:
        if fut.done():
            continue
        if kind == _ERROR:
            fut.set_exception(value)
        else:
            fut.set_result(value)


class _StreamState:
    """Items of a streaming call, queued as they are read."""

    __slots__ = ("items", "event", "window")

    def __init__(self, window: int) -> None:
        self.items: Deque[Tuple[int, Any]] = collections.deque()
        self.event: Optional[threading.Event] = None
        self.window = window

    @property
    def ready(self) -> bool:
        return bool(self.items)

    def complete(self, client: "Client", rid: int, kind: int, value: Any) -> None:
        self.items.append((kind, value))
        if kind != _ITEM:
            client._pending.pop(rid, None)
        ev = self.event
        if ev is not None:
            ev.set()


class _PumpWaiter:
    """What the pump thread waits for: no future or coroutine pending."""

    __slots__ = ("client", "event")

    def __init__(self, client: "Client") -> None:
        self.client = client
        self.event: Optional[threading.Event] = None

    @property
    def ready(self) -> bool:
        c = self.client
        return not c._async or c._gone is not None


class RemoteIterator:
    """The items of a remote generator, as the server makes them.

    The server runs at most its ``stream_window`` items ahead of what was
    consumed here.  ``close()`` (also the context manager's exit, and
    collection) closes the generator on the server; iterating to the end
    needs no close.  Also an async iterator (each step waits in the loop's
    default executor).
    """

    def __init__(self, client: "Client", rid: int, window: Any) -> None:
        self._client = client
        self._rid = rid
        self._done = False
        self._consumed = 0
        w = window if isinstance(window, int) and window > 0 else 1
        self._credit_every = max(1, w // 2)
        state = client._pending.get(rid)
        assert isinstance(state, _StreamState)
        self._state = state

    def __iter__(self) -> "RemoteIterator":
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        state = self._state
        client = self._client
        if not state.items:
            try:
                client._wait(state, 0)
            except BaseException:
                self.close()
                raise
        kind, value = state.items.popleft()
        if kind == _ITEM:
            self._consumed += 1
            if self._consumed >= self._credit_every:
                client._control(P.CREDIT, self._rid, self._consumed)
                self._consumed = 0
            return value
        self._done = True
        if kind == _END:
            raise StopIteration
        raise value

    def __aiter__(self) -> "RemoteIterator":
        return self

    def _next_or_end(self) -> Any:
        # StopIteration cannot travel through a future.
        try:
            return self.__next__()
        except StopIteration:
            return _END_OF_STREAM

    async def __anext__(self) -> Any:
        if self._state.items or self._done:
            item = self._next_or_end()
        else:
            item = await asyncio.get_running_loop().run_in_executor(None, self._next_or_end)
        if item is _END_OF_STREAM:
            raise StopAsyncIteration
        return item

    def close(self) -> None:
        """Stop the stream early: the server closes the generator."""
        if self._done:
            return
        self._done = True
        if self._client._pending.pop(self._rid, None) is not None:
            self._client._control(P.CANCEL, self._rid)

    def __enter__(self) -> "RemoteIterator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class _Method:
    """``client.proxy.name``: calling it is ``client.call("name", ...)``;
    attributes build dotted names (``proxy.calc.add`` calls "calc.add")."""

    __slots__ = ("_client", "_name")

    def __init__(self, client: "Client", name: str) -> None:
        self._client = client
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._client.call(self._name, *args, **kwargs)

    def __getattr__(self, name: str) -> "_Method":
        if name.startswith("__"):
            raise AttributeError(name)
        return _Method(self._client, f"{self._name}.{name}")

    def __repr__(self) -> str:
        return f"<remote method {self._name!r}>"


class _Proxy:
    __slots__ = ("_client",)

    def __init__(self, client: "Client") -> None:
        self._client = client

    def __getattr__(self, name: str) -> _Method:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Method(self._client, name)


# ---- the client ----------------------------------------------------------------


def _decode_frames(m: List[Any], nbufs: int) -> Any:
    """The body of a reply that came as ``[head, pickle, buffer, ...]``
    (tcp://): unpickled over the frames' own memory."""
    if len(m) != nbufs + 2:
        raise pickle.UnpicklingError(f"{len(m) - 2} buffers came where {nbufs} were announced")
    return pickle.loads(m[1], buffers=m[2:])


def _is_tcp(address: Any) -> bool:
    if isinstance(address, str):
        return address.startswith("tcp://")
    return isinstance(address, (list, tuple))


class Client:
    """A connection to a ``Server``; see ``connect()``."""

    def __init__(self, address: Union[str, Sequence[str]], timeout: Optional[float] = None,
                 **net: Any) -> None:
        self._closed = True
        self._forked = False
        self._net = net
        self._connect(address, timeout)
        _clients.add(self)

    def _connect(self, address: Union[str, Sequence[str]], timeout: Optional[float]) -> None:
        t: Any
        if _is_tcp(address):
            from .keys import require_zmq

            require_zmq()
            from .tcp import TcpClientTransport

            t = TcpClientTransport(address, timeout, **self._net)
        else:
            if self._net:
                raise ValueError(f"{', '.join(sorted(self._net))}: only for tcp:// addresses")
            assert isinstance(address, str)
            t = LocalClientTransport(address, timeout)
        self._t = t
        self.address: Union[str, List[str]] = t.path
        self._encode: Callable[..., Any] = getattr(t, "encode_request", _encode_request)
        self._recv = t.recv_reply
        self._recv_many = t.recv_replies
        self._send = t.send_request
        self._ids = itertools.count(1)
        self._pending: Dict[int, Any] = {}
        self._async: Set[int] = set()
        self._deliveries: Dict[asyncio.AbstractEventLoop, List[Any]] = {}
        self._role = threading.Lock()
        self._idle: List[Any] = []
        self._gone: Optional[BaseException] = None
        self._pump: Optional[threading.Thread] = None
        self._pump_waiter = _PumpWaiter(self)
        self._pump_event = threading.Event()
        self._pump_asleep = True
        self._proxy = _Proxy(self)
        self._pid = os.getpid()
        self._closed = False

    def _reconnect_after_fork(self) -> None:
        """In a forked child: leave the parent's connection alone, make ours."""
        self._forked = False
        old = self._t
        self._connect(self.address, None)
        old.abandon()

    # ---- calls -----------------------------------------------------------

    @property
    def proxy(self) -> Any:
        """``client.proxy.method(*args, **kwargs)`` is
        ``client.call("method", *args, **kwargs)``."""
        return self._proxy

    def call(self, method: str, *args: Any, timeout: Optional[float] = None, **kwargs: Any) -> Any:
        """Call ``method`` on the server and return its result.

        A generator function's call returns a ``RemoteIterator``.  Raises
        the remote exception (same type, ``RemoteTraceback`` as its
        ``__cause__``; ``RemoteError`` if it cannot travel),
        ``NoSuchMethod``, ``TimeoutError`` when ``timeout`` expires (the
        server never starts a call whose deadline passed), ``ServerGone``,
        what pickling raises for arguments that do not pickle (nothing is
        sent then), and ``ValueError`` once closed.  Arguments and results
        of any size travel (larger than the connection's ring: in pieces).
        """
        if self._forked:
            self._reconnect_after_fork()
        if self._closed:
            raise ValueError("operation on a closed rpc Client")
        deadline = _deadline(timeout) if timeout is not None else 0
        rid = next(self._ids)
        data = self._encode(_CALL, rid, deadline, method, args, kwargs)
        slot = _Slot()
        pending = self._pending
        pending[rid] = slot
        try:
            self._send(data)
        except BaseException:
            pending.pop(rid, None)
            raise
        try:
            self._wait(slot, deadline)
        except BaseException:
            # Timed out or interrupted: the server may drop the call, and a
            # transport that counts calls in flight forgets this one.
            self._abandon(rid)
            raise
        if slot.kind == _RESULT:
            return slot.value
        if slot.kind == _ERROR:
            raise slot.value
        return RemoteIterator(self, rid, slot.value)

    def submit(self, method: str, *args: Any, **kwargs: Any) -> "concurrent.futures.Future[Any]":
        """Send a call and return a ``concurrent.futures.Future`` of its
        result at once.  Cancelling the future before the result came tells
        the server (a call that has not started is never run).  Raises
        before sending what ``call`` raises before sending."""
        if self._forked:
            self._reconnect_after_fork()
        if self._closed:
            raise ValueError("operation on a closed rpc Client")
        rid = next(self._ids)
        data = self._encode(_CALL, rid, 0, method, args, kwargs)
        fut = RpcFuture()
        fut._client = self
        fut._rid = rid
        self._pending[rid] = _FutureEntry(fut)
        self._async.add(rid)
        self._wake_pump()
        try:
            self._send(data)
        except BaseException:
            self._pending.pop(rid, None)
            self._async.discard(rid)
            raise
        return fut

    async def acall(self, method: str, *args: Any, timeout: Optional[float] = None,
                    **kwargs: Any) -> Any:
        """``call`` as a coroutine: waits without blocking the event loop.

        Cancelling it (``task.cancel()``, ``asyncio.wait_for``) tells the
        server: a call that has not started is never run, a coroutine
        function's task is cancelled.  ``timeout`` raises ``TimeoutError``.
        """
        if self._forked:
            self._reconnect_after_fork()
        if self._closed:
            raise ValueError("operation on a closed rpc Client")
        loop = asyncio.get_running_loop()
        deadline = _deadline(timeout)
        rid = next(self._ids)
        data = self._encode(_CALL, rid, deadline, method, args, kwargs)
        fut = loop.create_future()
        self._pending[rid] = _AsyncEntry(loop, fut)
        self._async.add(rid)
        self._wake_pump()
        try:
            try:
                self._send(data, False)
            except Full:
                await self._t.send_request_async(data)
            if timeout is None:
                return await fut
            try:
                return await asyncio.wait_for(fut, _left(deadline))
            except asyncio.TimeoutError:
                raise TimeoutError(f"the call of {method!r} timed out") from None
        except BaseException:
            self._abandon(rid)
            raise

    def notify(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Send a one-way call and return once it is sent: no result, and
        no error comes back (an unknown method or a failure is dropped)."""
        if self._forked:
            self._reconnect_after_fork()
        if self._closed:
            raise ValueError("operation on a closed rpc Client")
        if self._gone is not None:
            raise ServerGone("the server is gone")
        self._send(self._encode(_NOTIFY, next(self._ids), 0, method, args, kwargs))

    def _abandon(self, rid: int) -> None:
        """Forget a call nobody waits for any more; if its reply has not
        come, tell the server (cancel)."""
        self._async.discard(rid)
        if self._pending.pop(rid, None) is not None:
            self._control(P.CANCEL, rid)

    def _control(self, kind: int, rid: int, n: int = 0) -> None:
        if not self._closed and self._gone is None:
            self._t.send_control(P.encode_control(kind, rid, n))

    # ---- reading replies -------------------------------------------------

    def _wait(self, w: Any, deadline: int) -> None:
        """Return once ``w.ready``, reading replies while nobody else does.
        Raises ``TimeoutError`` when ``deadline`` passes."""
        role = self._role
        idle = self._idle
        while not w.ready:
            if role.acquire(False):
                try:
                    self._read(w, deadline)
                finally:
                    role.release()
                    if idle:
                        self._pass_role()
                continue
            ev = w.event
            if ev is None:
                ev = w.event = threading.Event()
            ev.clear()
            idle.append(w)
            try:
                if w.ready:
                    break
                if role.acquire(False):
                    # Freed meanwhile; its holder may not have seen us.
                    role.release()
                    continue
                if not ev.wait(_left(deadline)) and deadline and _monotonic_ns() >= deadline:
                    raise TimeoutError("the call timed out")
            finally:
                try:
                    idle.remove(w)
                except ValueError:
                    pass

    def _wake_done_waiters(self) -> None:
        """A future completed: wake the idle ``RpcFuture.result`` waiters
        whose future it was (their events are their own)."""
        for w in self._idle:
            if type(w) is _DoneWaiter and w.future.done() and w.event is not None:
                w.event.set()

    def _pass_role(self) -> None:
        """Wake one waiter that still needs a reply: it takes the role."""
        for w in list(self._idle):
            if not w.ready and w.event is not None:
                w.event.set()
                return

    def _read(self, w: Any, deadline: int) -> None:
        """Read replies, handing each to its waiter, until ``w.ready``.
        Called with the reader role held.

        A lone synchronous call reads one reply at a time.  With
        other calls pending, replies are taken up to ``_BATCH`` per ring
        call: each C call releases the GIL, and another thread of this
        process (one submitting, say) then takes it, so fewer calls mean
        fewer switches between threads.
        """
        recv = self._recv
        recv_many = self._recv_many
        pending = self._pending
        deliveries = self._deliveries
        dispatch = self._dispatch
        try:
            while not w.ready:
                try:
                    if len(pending) > 1:
                        block = not deliveries
                        try:
                            if block and deadline:
                                msgs = recv_many(_BATCH, True, _left(deadline))
                            else:
                                msgs = recv_many(_BATCH, block)
                        except Empty:
                            if block:
                                raise
                            self._flush()
                            continue
                        for m in msgs:
                            dispatch(m)
                        continue
                    if deliveries:
                        self._flush()
                    # get() rather than get_into() a reused buffer: faster
                    # for small replies, and large ones are copied anyway.
                    data = recv(True, _left(deadline)) if deadline else recv()
                except Empty:
                    raise TimeoutError("the call timed out") from None
                except (ShutDown, ValueError):
                    self._fail_all()
                    return
                dispatch(data)
        finally:
            if deliveries:
                self._flush()

    def _dispatch(self, m: Any) -> None:
        """Hand one reply to whoever waits for it: bytes, or (tcp://) the
        frames ``[head, pickle, buffer, ...]``."""
        frames = type(m) is list
        head = m[0] if frames else m
        if len(head) < _REPLY_SIZE:
            return  # not a reply: ignore it
        kind, _, nbufs, rid = _unpack_reply(head)
        if kind >= _FRAGMENT and not frames:
            # A piece of a reply larger than the ring (fragments.py).
            incoming = getattr(self._t, "incoming", None)
            whole = incoming.feed(m, len(m)) if incoming is not None else None
            if whole is None or len(whole) < _REPLY_SIZE or whole[0] >= _FRAGMENT:
                return
            m = head = whole
            kind, _, nbufs, rid = _unpack_reply(head)
            owned = True  # arrays may view the reassembled buffer: it is theirs alone
        else:
            owned = False
        pending = self._pending
        entry = pending.get(rid)
        if entry is None:
            return  # a call nobody waits for any more
        if kind == _END:
            value = None
        else:
            try:
                if frames:
                    value = _decode_frames(m, nbufs)
                else:
                    value = _decode_body(memoryview(m), _REPLY_SIZE, len(m), nbufs, owned)
            except BaseException as exc:
                kind, value = _ERROR, P.unpicklable_error(exc, "reply")
            else:
                if kind == _ERROR:
                    value = P.decode_error(value)
        if kind == _STREAM:
            pending[rid] = _StreamState(value if isinstance(value, int) else 1)
        elif kind != _ITEM and kind != _END and not isinstance(entry, _StreamState):
            del pending[rid]
        entry.complete(self, rid, kind, value)

    def _flush(self) -> None:
        """Hand the acall results read so far to their event loops."""
        batches = self._deliveries
        for loop in list(batches):
            batch = batches.pop(loop)
            try:
                loop.call_soon_threadsafe(_resolve, batch)
            except RuntimeError:
                pass  # that loop is closed: nobody waits

    def _fail_all(self) -> None:
        """The reply ring is shut down: the server is gone (or we closed)."""
        if self._closed:
            exc: BaseException = ValueError("the rpc Client was closed")
        else:
            exc = ServerGone("the server closed the connection, exited or was killed")
        if self._gone is None:
            self._gone = exc
        for rid in list(self._pending):
            entry = self._pending.pop(rid, None)
            if entry is not None:
                err = ServerGone(str(exc)) if isinstance(exc, ServerGone) else ValueError(str(exc))
                entry.complete(self, rid, _ERROR, err)
                if isinstance(entry, _StreamState):
                    self._pending.pop(rid, None)

    # ---- the pump ---------------------------------------------------------

    def _wake_pump(self) -> None:
        if self._pump is None:
            self._pump = threading.Thread(target=self._pump_main, name="pyipc-rpc-pump",
                                          daemon=True)
            self._pump_asleep = False
            self._pump.start()
        elif self._pump_asleep:
            self._pump_asleep = False
            self._pump_event.set()

    def _pump_main(self) -> None:
        waiter = self._pump_waiter
        event = self._pump_event
        while not self._closed and not self._forked:
            if not self._async:
                self._pump_asleep = True
                if not self._async:  # a submit between the test and the flag
                    event.wait()
                event.clear()
                self._pump_asleep = False
                continue
            try:
                self._wait(waiter, 0)
            except BaseException:
                pass
            if self._gone is not None:
                return

    # ---- lifetime ---------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._closed

    def close(self) -> None:
        """Disconnect (idempotent).  Calls still waiting in other threads
        raise ``ValueError``; the server drops what was queued."""
        if self._closed:
            return
        self._closed = True
        if self._forked:
            self._t.abandon()
            return
        self._t.close()
        self._pump_event.set()
        self._fail_all()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> Tuple[Callable[..., "Client"], Tuple[Any, ...]]:
        # By address: the receiving process connects anew (with the same
        # keys, for tcp://: a client pickled carries its secret key).
        if self._net:
            return (_connect_with, (self.address, self._net))
        return (connect, (self.address,))

    def __repr__(self) -> str:
        return f"<pyipc.rpc.Client {self.address!r}{' closed' if self._closed else ''}>"


def connect(address: Union[str, Sequence[str]], timeout: Optional[float] = None, *,
            server_key: Any = None, secret_key: Any = None,
            heartbeat: Optional[float] = None) -> Client:
    """Connect to the server at ``address`` (a name or an absolute path).

    ``timeout`` bounds the connection and its handshake (``TimeoutError``).
    Raises ``FileNotFoundError`` or ``ConnectionRefusedError`` when no
    server is there, ``PermissionError`` when the server refuses this
    user.

    ``tcp://host:port`` (the ``net`` extra), or a list of such addresses
    to spread calls over several servers, connects over ZeroMQ with
    CurveZMQ: ``server_key`` is the server's public key and
    ``secret_key`` this client's secret key (key files made by ``pyipc
    keygen``, or key bytes).  It returns once a server has completed the
    handshake; ``PermissionError`` if the server refuses this client's key
    or ``server_key`` is not the server's, ``ConnectionRefusedError`` if
    no server answered within ``timeout`` (default: the heartbeat).  A
    server silent for ``heartbeat`` seconds (default 5) makes its calls
    raise ``ServerGone``; calls made once it is back succeed.
    """
    net: Dict[str, Any] = {}
    if server_key is not None:
        net["server_key"] = server_key
    if secret_key is not None:
        net["secret_key"] = secret_key
    if heartbeat is not None:
        net["heartbeat"] = heartbeat
    return Client(address, timeout, **net)


def _connect_with(address: Any, net: Dict[str, Any]) -> Client:
    """Unpickle a tcp:// client: connect anew with the same keys."""
    return Client(address, None, **net)
