"""The ``tcp://`` transport: the same calls carried by ZeroMQ, with CurveZMQ.

Imported only when a ``tcp://`` address is used (pyzmq is the ``net``
extra).  Like ``local.py`` it moves opaque messages; ``protocol.py`` says
what is in them.

Sockets, and why:

* **A ROUTER on the server, a DEALER per server on the client.**  The
  server's ROUTER names each client connection (a fresh routing id per
  connection, so a client that reconnects is a new client and never
  receives replies meant for its previous connection);
  ``ZMQ_ROUTER_MANDATORY`` turns a reply to a client that is gone into an
  error rather than a message dropped in silence.  The client must know
  where each call went, so that a server that dies takes only its own
  calls with it: one DEALER spreading messages round-robin over several
  servers would not say to whom, so each server address gets a DEALER of
  its own, and each call goes to the connected one with the fewest calls
  in flight.  ``ZMQ_IMMEDIATE`` keeps messages off connections that have
  not finished their handshake and drops those of a lost connection (a
  request queued while the server is away must not reach it when it
  comes back, after its caller was told ``ServerGone``).  Queues are
  unbounded (``SNDHWM=0``): a ROUTER drops what does not fit, and a
  dropped reply would be a call that never returns; memory is bounded by
  the calls in flight instead.
* **CurveZMQ, always.**  Pickle executes code, so a server without a
  secret key refuses to start, and a ZAP handler (bound on the server's
  own context before its ROUTER binds: a socket with no handler would
  accept everyone) answers 200 only for the public keys in
  ``allowed_keys``.  The client pins the server's public key; a wrong one
  fails the handshake.  The client's socket monitor reports failed
  handshakes (``HANDSHAKE_FAILED_AUTH`` when the server refused our key,
  ``_NO_DETAIL`` when the server could not read our hello, which is what
  a wrong server key looks like), turned into ``PermissionError``.
* **Heartbeats.**  ``ZMQ_HEARTBEAT_IVL``/``_TIMEOUT``/``_TTL`` make both
  ends drop a connection that has been silent for ``heartbeat`` seconds
  (a vanished host, a cut network, a stopped process); the monitor's
  ``DISCONNECTED`` then fails that server's calls with ``ServerGone``,
  and ZeroMQ reconnects by itself, so calls made once the server is back
  succeed.
* **One socket, many threads.**  ZeroMQ sockets are not thread-safe, but
  a mutex makes them safe to share (the docs ask for a full barrier
  between threads).  Any thread sends under the lock; a reader takes
  messages under the lock without waiting, and otherwise waits on the
  socket's descriptor with the lock released.  That descriptor is edge
  triggered and any call on the socket (a send, a probe) may consume its
  signal, so whoever makes one while a reader waits checks
  ``ZMQ_EVENTS`` and wakes the reader through a pipe if a message is
  there (``_Shared.touched``).  The alternative, a thread that owns the
  socket, would add two thread hand-offs to every call (10-30 us each on
  a small VM, more than the rest of a call).

Wire format.  A message is the protocol's single frame (header and pickle)
when every buffer of its pickle is small, else the header, the pickle and
each out-of-band buffer as frames of one multipart message: the buffers
go to ZeroMQ without a copy (``copy=False``), and arrive as frames whose
memory the unpickled objects use directly (writable NumPy arrays, no
copy).  Requests carry their deadline as the nanoseconds left, not as a
time: two hosts share no monotonic clock.  The server counts the deadline
from the request's arrival, so the time on the wire is not counted.
"""
from __future__ import annotations

import errno
import itertools
import os
import pickle
import select
import socket as _socket
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Set, Tuple, Union

from . import keys as K
from . import protocol as P
from .errors import ServerGone
from ..errors import Empty, Full, ShutDown

K.require_zmq()
import zmq  # noqa: E402
from zmq.utils.monitor import parse_monitor_message  # noqa: E402

__all__ = [
    "DEFAULT_HEARTBEAT",
    "encode_request",
    "encode_reply",
    "TcpClientTransport",
    "TcpListener",
    "TcpPeer",
]

DEFAULT_HEARTBEAT = 5.0
_ZAP_ENDPOINT = "inproc://zeromq.zap.01"
_ZAP_DOMAIN = b"pyipc"
_monitor_ids = itertools.count()

# Plain ints: pyzmq's enums cost ~1 us per use in `&` and `|` on the hot path.
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_POLLIN = int(zmq.POLLIN)
_EVENTS = int(zmq.EVENTS)
_Again = zmq.Again
_ZMQError = zmq.ZMQError
_REQ = P.REQUEST_HEADER
_REPLY = P.REPLY_HEADER
_REQ_SIZE = P.REQUEST_HEADER.size
_COPY_MAX = 64 * 1024
# What a reader knows of a socket's queue (see _Shared.recv).
_UNKNOWN, _QUIET, _SIGNALLED = object(), object(), object()
_CONTROL_SIZE = P.CONTROL.size
_CALL = P.CALL
_FINAL = frozenset((P.RESULT, P.ERROR, P.END))
_monotonic_ns = time.monotonic_ns
_dumps = pickle.dumps

Message = Union[bytes, List[Any]]


# ---- frames ----------------------------------------------------------------------


def encode_request(kind: int, rid: int, deadline: int, method: str, args: Any,
                   kwargs: Any) -> Message:
    """A request: one frame, or ``[head, pickle, buffer, ...]`` when its
    pickle has large buffers.  The deadline (absolute monotonic ns, 0 for
    none) goes as the nanoseconds left, at least 1: a call that expired
    before it was sent still has a deadline, one that has passed."""
    if deadline:
        deadline = max(1, deadline - _monotonic_ns())
    body = (method, args, kwargs)
    try:
        return _REQ.pack(kind, 0, 0, rid, deadline) + _dumps(
            body, P.PROTOCOL, buffer_callback=P._in_band)
    except P._HasLargeBuffer:
        pass
    pickled, bufs = P._pickle(body)
    return [_REQ.pack(kind, 0, len(bufs), rid, deadline), pickled, *bufs]


def encode_reply(kind: int, rid: int, value: Any = None) -> Message:
    """A RESULT, STREAM, ITEM or END reply, framed as ``encode_request``."""
    try:
        return _REPLY.pack(kind, 0, 0, rid) + _dumps(value, P.PROTOCOL, buffer_callback=P._in_band)
    except P._HasLargeBuffer:
        pass
    pickled, bufs = P._pickle(value)
    return [_REPLY.pack(kind, 0, len(bufs), rid), pickled, *bufs]


# ---- a socket shared by threads -----------------------------------------------------


class _Shared:
    """ZeroMQ sockets that any thread may use (see "One socket, many
    threads" in the module docstring): the server's ROUTER, or the
    client's DEALERs (one per server), under one lock.

    ``recv`` returns ``(tag, first frame, later frames)``: the tag is the
    routing id for a ROUTER, the socket's index for DEALERs.  ``send`` and
    ``recv`` raise ``ShutDown`` once ``shutdown()`` was called.
    """

    def __init__(self, socks: List["zmq.Socket[Any]"], routed: bool) -> None:
        self.socks = socks
        self.routed = routed
        self.lock = threading.Lock()
        self.fds: List[int] = [int(s.getsockopt(zmq.FD)) for s in socks]
        # Kept open until collection: a reader may be about to poll them.
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.waiting = 0  # threads waiting on the descriptors
        self.closed = False
        # Per socket: what is known of its queue (see recv).
        self.quiet: List[object] = [_UNKNOWN] * len(socks)
        self._next = 0
        self._polls = threading.local()

    def wake(self) -> None:
        """Make every waiting ``recv`` look at the sockets again."""
        try:
            os.write(self.wake_w, b"x")
        except OSError:
            pass  # a full pipe wakes them just as well

    def send_locked(self, sock: "zmq.Socket[Any]", peer: Optional[bytes], msg: Message,
                    track: bool) -> Any:
        """Send ``msg`` (to ``peer`` through a ROUTER) with ``lock`` held;
        returns the tracker to wait on outside the lock, or None.

        ``zmq.Again`` from a DEALER with no connection (``ZMQ_IMMEDIATE``),
        ``EHOSTUNREACH`` from a ROUTER whose peer is gone.  Large
        out-of-band buffers go without a copy; with ``track`` the caller
        waits until ZeroMQ is done with them (and may then change them),
        without they are copied."""
        if self.closed:
            raise ShutDown("the socket is closed")
        tracker = None
        # Sending may process the socket's commands, a new message's among
        # them, after which its descriptor no longer signals that message.
        self.quiet[self.socks.index(sock) if len(self.socks) > 1 else 0] = _UNKNOWN
        try:
            if peer is not None:
                sock.send(peer, _SNDMORE | _NOBLOCK)
                flags = 0
            else:
                flags = _NOBLOCK  # only the first frame can fail
            if type(msg) is list:
                last = len(msg) - 1
                for i, part in enumerate(msg):
                    more = 0 if i == last else _SNDMORE
                    if i < 2:
                        # The header, and the pickle: bytes, which never change.
                        sock.send(part, flags | more, copy=i == 0)
                    elif track:
                        tracker = sock.send(part, more, copy=False, track=True)
                    else:
                        sock.send(part, more)
                    flags = 0
            else:
                # Small ones are copied: pyzmq's zero-copy path costs more there.
                sock.send(msg, flags, copy=len(msg) < _COPY_MAX)  # type: ignore[arg-type]
        finally:
            self.touched(sock)
        return tracker

    def touched(self, sock: "zmq.Socket[Any]") -> None:
        """After any call on ``sock`` other than a receive (with ``lock``
        held): that call may have taken the descriptor's signal of a
        message that came meanwhile, which a waiting reader would then
        never see.  Wake it if a message is there.

        A descriptor still readable was not taken: the reader sees it.
        Looking first (one zero-timeout poll) spares most calls the
        ``ZMQ_EVENTS`` and, with a burst of ``submit`` while replies come
        in, a wake-up of the reader per call (libzmq processes commands on
        a send at most about once a millisecond)."""
        if not self.waiting:
            return
        k = self.socks.index(sock) if len(self.socks) > 1 else 0
        probes = getattr(self._polls, "probes", None)
        if probes is None:
            probes = self._polls.probes = []
            for fd in self.fds:
                p = select.poll()
                p.register(fd, select.POLLIN)
                probes.append(p)
        if probes[k].poll(0):
            return
        if sock.getsockopt(_EVENTS) & _POLLIN:  # type: ignore[operator]
            self.wake()

    def recv(self, timeout: Optional[float]) -> Optional[Tuple[Any, bytes, List[Any]]]:
        """The next message, or None when ``timeout`` (seconds, None for
        ever, 0 for no wait) expires first or ``wake()`` was called (the
        caller looks at what it waits for, and calls again).

        A socket's descriptor signals only messages that come after the
        socket was found empty.  So a socket is asked (``ZMQ_EVENTS``, a
        third of the price of a failed non-blocking receive and its
        exception) unless it was found empty and not used since
        (``_QUIET``), and read at once when its descriptor has just
        signalled (``_SIGNALLED``: a message is there but for a rare
        other command).
        """
        socks = self.socks
        state = self.quiet
        nsocks = len(socks)
        end = None
        ready: List[int] = []
        polled = woken = False
        while True:
            with self.lock:
                if polled:
                    self.waiting -= 1
                    for fd in ready:
                        if fd in self.fds:
                            state[self.fds.index(fd)] = _SIGNALLED
                    polled = False
                    ready.clear()
                if self.closed:
                    raise ShutDown("the socket is closed")
                start = self._next
                for i in range(nsocks):
                    k = (start + i) % nsocks if nsocks > 1 else 0
                    s = state[k]
                    if s is _QUIET:
                        continue
                    sock = socks[k]
                    if s is _SIGNALLED:
                        state[k] = _UNKNOWN
                        try:
                            head = sock.recv(_NOBLOCK, copy=False)
                        except _Again:
                            state[k] = _QUIET
                            continue
                    elif sock.getsockopt(_EVENTS) & _POLLIN:  # type: ignore[operator]
                        head = sock.recv(copy=False)
                    else:
                        state[k] = _QUIET
                        continue
                    if nsocks > 1:
                        self._next = k + 1  # fair to every server
                    tag: Any = k
                    if self.routed:
                        tag = head.bytes
                        head = sock.recv(copy=False)
                    first = head.bytes
                    rest: List[Any] = []
                    while head.more:
                        head = sock.recv(copy=False)
                        rest.append(head.buffer)
                    return tag, first, rest
                if woken or timeout == 0:
                    # Woken by a sender whose send took a message's signal,
                    # or for a lost connection: the caller looks at its
                    # state and calls again.
                    return None
                self.waiting += 1
                polled = True
            try:
                if timeout is None:
                    ms = None
                else:
                    if end is None:
                        end = time.monotonic() + timeout
                    ms = max(0, int((end - time.monotonic()) * 1000) + 1)
                    if ms <= 1:
                        timeout = 0  # one last look, then None
                poll = getattr(self._polls, "poll", None)
                if poll is None:
                    poll = self._polls.poll = select.poll()
                    for fd in self.fds:
                        poll.register(fd, select.POLLIN)
                    poll.register(self.wake_r, select.POLLIN)
                for fd, _ in poll.poll(ms):
                    if fd == self.wake_r:
                        woken = True
                        try:
                            os.read(self.wake_r, 4096)
                        except OSError:
                            pass
                    else:
                        ready.append(fd)
            except BaseException:
                with self.lock:
                    self.waiting -= 1
                raise

    def drain(self, max_messages: int, out: List[Tuple[Any, bytes, List[Any]]]) -> None:
        """Append to ``out`` up to ``max_messages`` messages already here,
        without waiting, under one hold of the lock.  Messages come in
        bursts here (replies to pipelined calls), so each socket is read
        until it is empty rather than asked first: one failed receive per
        burst instead of a ``ZMQ_EVENTS`` per message."""
        socks = self.socks
        state = self.quiet
        routed = self.routed
        with self.lock:
            if self.closed:
                raise ShutDown("the socket is closed")
            for k, sock in enumerate(socks):
                if state[k] is _QUIET:
                    continue
                while len(out) < max_messages:
                    try:
                        head = sock.recv(_NOBLOCK, copy=False)
                    except _Again:
                        state[k] = _QUIET
                        break
                    tag: Any = k
                    if routed:
                        tag = head.bytes
                        head = sock.recv(copy=False)
                    first = head.bytes
                    rest: List[Any] = []
                    while head.more:
                        head = sock.recv(copy=False)
                        rest.append(head.buffer)
                    out.append((tag, first, rest))
                else:
                    state[k] = _UNKNOWN

    def shutdown(self) -> None:
        """Make every ``send`` and ``recv``, now and later, raise ``ShutDown``."""
        with self.lock:
            self.closed = True
        self.wake()

    def close(self, linger: int = 0) -> None:
        """Shut down and close the sockets (idempotent); ``linger`` ms for
        what is still queued to go."""
        self.shutdown()
        with self.lock:
            for sock in self.socks:
                if not sock.closed:
                    sock.close(linger)

    def __del__(self) -> None:
        for fd in (self.wake_r, self.wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


def _heartbeat_options(sock: "zmq.Socket[Any]", heartbeat: float) -> None:
    """Drop a connection silent for ``heartbeat`` seconds: a PING every
    quarter, the connection dropped three quarters after one goes
    unanswered (so at most ``heartbeat`` after the last sign of life),
    and the peer told to do the same (TTL)."""
    if not heartbeat > 0:
        raise ValueError("'heartbeat' must be a positive number of seconds")
    ms = int(heartbeat * 1000)
    sock.setsockopt(zmq.HEARTBEAT_IVL, max(1, ms // 4))
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(1, ms - ms // 4))
    sock.setsockopt(zmq.HEARTBEAT_TTL, min(6553500, max(100, ms)))
    sock.setsockopt(zmq.HANDSHAKE_IVL, max(100, ms))


def _common_options(sock: "zmq.Socket[Any]", heartbeat: float) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    if sock.type == zmq.ROUTER:
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    _heartbeat_options(sock, heartbeat)


def _parse_tcp(address: str) -> Tuple[str, int]:
    if not isinstance(address, str) or not address.startswith("tcp://"):
        raise ValueError(f"not a tcp:// address: {address!r}")
    hostport = address[len("tcp://"):]
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"a tcp:// address is tcp://host:port, not {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _resolve(address: str) -> Tuple[str, bool]:
    """``tcp://IP:port`` for ``address`` and whether it is IPv6.  Host names
    are resolved once, here: the monitor reports events by the endpoint
    string, which must stay the same across reconnections."""
    host, port = _parse_tcp(address)
    if port == 0:
        raise ValueError(f"a client connects to a port, not 0: {address!r}")
    try:
        infos = _socket.getaddrinfo(host, port, type=_socket.SOCK_STREAM)
    except _socket.gaierror as exc:
        raise ConnectionRefusedError(errno.ECONNREFUSED,
                                     f"cannot resolve {host!r}: {exc}", address) from None
    family, _, _, _, sockaddr = infos[0]
    if family == _socket.AF_INET6:
        return f"tcp://[{sockaddr[0]}]:{port}", True
    return f"tcp://{sockaddr[0]}:{port}", False


# ---- client ------------------------------------------------------------------------


class _Server:
    """What the client knows of one server address, and its socket."""

    __slots__ = ("address", "endpoint", "index", "sock", "monitor", "up", "ever_up", "refused",
                 "calls")

    def __init__(self, address: str, endpoint: str, index: int) -> None:
        self.address = address
        self.endpoint = endpoint
        self.index = index
        self.sock: Any = None
        self.monitor: Any = None
        self.up = False  # handshake done, connection alive
        self.ever_up = False
        self.refused: Optional[PermissionError] = None
        self.calls: Set[int] = set()  # ids of calls in flight there


class TcpClientTransport:
    """The client's end: a DEALER per server address, and a thread reading
    their socket monitors.

    A DEALER per server rather than one socket for all: the client must
    know where each call went, so that a server that dies takes only its
    own calls with it.  (A ROUTER naming each connection would do that
    too, but libzmq gives a connection its name only without
    ``ZMQ_IMMEDIATE``, and without it a request queued while the
    connection is down would reach the server when it comes back, after
    its caller was told ``ServerGone``.)

    The reader (``recv_reply``, ``recv_replies``) raises ``ShutDown`` once
    closed; calls of a server whose connection is lost come back as
    ``ServerGone`` error replies, after every reply already received.
    """

    encode_request = staticmethod(encode_request)

    def __init__(self, address: Union[str, Sequence[str]], timeout: Optional[float] = None, *,
                 server_key: Optional[K.KeyArg] = None, secret_key: Optional[K.KeyArg] = None,
                 heartbeat: float = DEFAULT_HEARTBEAT) -> None:
        addresses = [address] if isinstance(address, str) else list(address)
        if not addresses:
            raise ValueError("no address to connect to")
        if server_key is None or secret_key is None:
            raise ValueError(
                "a tcp:// client needs server_key= (the server's public key file or bytes) "
                "and secret_key= (this client's .key_secret file or bytes); "
                "make key pairs with `pyipc keygen NAME`")
        if timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        self.path: Union[str, List[str]] = address if isinstance(address, str) else addresses
        self.heartbeat = float(heartbeat)
        server_public = K.public_key(server_key)
        public, secret = K.secret_key(secret_key)
        servers = []
        for i, a in enumerate(addresses):
            endpoint, ipv6 = _resolve(a)
            servers.append(_Server(a, endpoint, i))
        self._servers = servers
        self._where: Dict[int, _Server] = {}  # call id -> the server it went to
        self._ready: Deque[Message] = deque()  # replies taken early, and failures
        self._failed: List[Tuple[_Server, List[int]]] = []  # set by the monitor thread
        self._turn = 0
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._pid = os.getpid()

        ctx: Any = zmq.Context.instance()
        events = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
                  | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                  | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_MONITOR_STOPPED)
        try:
            for server in servers:
                sock = server.sock = ctx.socket(zmq.DEALER)
                _common_options(sock, self.heartbeat)
                # Messages only for connections that finished the handshake,
                # and dropped with a connection that is lost.
                sock.setsockopt(zmq.IMMEDIATE, 1)
                sock.setsockopt(zmq.RECONNECT_IVL, 100)
                sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
                sock.setsockopt(zmq.CURVE_SERVERKEY, server_public)
                sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
                sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
                if server.endpoint.startswith("tcp://["):
                    sock.setsockopt(zmq.IPV6, 1)
                server.monitor = sock.get_monitor_socket(
                    events, f"inproc://pyipc-rpc-monitor-{os.getpid()}-{next(_monitor_ids)}")
        except BaseException:
            for server in servers:
                for sk in (server.monitor, server.sock):
                    if sk is not None:
                        sk.close(0)
            raise
        self._shared = _Shared([srv.sock for srv in servers], routed=False)
        self._watcher = threading.Thread(target=self._watch, name="pyipc-rpc-net-watch",
                                         daemon=True)
        self._watcher.start()
        try:
            for server in servers:
                with self._shared.lock:
                    server.sock.connect(server.endpoint)
            self._await_server(self.heartbeat if timeout is None else timeout, connecting=True)
        except BaseException:
            self.close()
            raise

    # ---- the monitor thread ------------------------------------------------

    def _watch(self) -> None:
        poller = zmq.Poller()
        monitors = {srv.monitor: srv for srv in self._servers}
        for m in monitors:
            poller.register(m, zmq.POLLIN)
        try:
            while monitors:
                for m, _ in poller.poll():
                    try:
                        event = parse_monitor_message(m.recv_multipart(_NOBLOCK))
                    except _Again:
                        continue
                    except _ZMQError:
                        return
                    kind = event["event"]
                    if kind == zmq.EVENT_MONITOR_STOPPED:
                        poller.unregister(m)
                        del monitors[m]
                    else:
                        self._on_event(monitors[m], kind, event["value"])
        finally:
            for srv in self._servers:
                srv.monitor.close(0)

    def _on_event(self, server: _Server, kind: int, value: int) -> None:
        shared = self._shared
        with self._cond:
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                # Under the socket lock too: a sender that saw it down and
                # one that sees it up never straddle the change.
                with shared.lock:
                    server.up = True
                server.ever_up = True
                server.refused = None
            elif kind == zmq.EVENT_DISCONNECTED:
                with shared.lock:
                    was_up, server.up = server.up, False
                    if was_up and server.calls:
                        # Its calls fail, after whatever it answered already:
                        # the reader drains the socket before it reports them.
                        self._failed.append((server, list(server.calls)))
                        for rid in server.calls:
                            self._where.pop(rid, None)
                        server.calls.clear()
                if was_up:
                    shared.wake()
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                server.refused = PermissionError(
                    errno.EACCES,
                    f"the server refused this client's key (ZAP status {value})",
                    server.address)
            elif not server.ever_up:
                # The server could not read our hello and hung up (EPIPE,
                # ECONNRESET): it has another key than server_key.  Else
                # the handshake did not finish in time, or the peer is no
                # CurveZMQ server.
                why = errno.errorcode.get(value, str(value))
                server.refused = PermissionError(
                    errno.EACCES,
                    f"the CurveZMQ handshake failed ({why}): the server's key is not "
                    "server_key, or the server did not complete the handshake",
                    server.address)
            self._cond.notify_all()

    def _await_server(self, timeout: Optional[float], connecting: bool = False) -> None:
        """Wait until a server is connected.  ``PermissionError`` if every
        server refused us; ``ConnectionRefusedError`` (at connect) or
        ``ServerGone`` (later) if none answered within ``timeout``."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._closed:
                    raise ValueError("operation on a closed rpc Client")
                if any(s.up for s in self._servers):
                    return
                refused = [s.refused for s in self._servers if s.refused is not None]
                if len(refused) == len(self._servers):
                    raise refused[0]
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(left)
        names = ", ".join(s.address for s in self._servers)
        if refused:
            raise refused[0]
        if connecting:
            raise ConnectionRefusedError(
                errno.ECONNREFUSED, f"no pyipc server answered within {timeout:g} s", names)
        raise ServerGone(f"no server reachable at {names} for {timeout:g} s")

    # ---- sending -----------------------------------------------------------

    def _pick(self) -> Optional[_Server]:
        servers = self._servers
        if len(servers) == 1:
            s = servers[0]
            return s if s.up else None
        best = None
        n = len(servers)
        self._turn = start = (self._turn + 1) % n
        for i in range(n):
            s = servers[(start + i) % n]
            if s.up and (best is None or len(s.calls) < len(best.calls)):
                best = s
        return best

    def send_request(self, data: Message, block: bool = True,
                     timeout: Optional[float] = None) -> None:
        """Send one request to the connected server with the fewest calls in
        flight, waiting up to the heartbeat for one to be connected
        (``ServerGone`` then, ``PermissionError`` if refused).  With
        ``block`` false, ``Full`` instead of waiting."""
        head: bytes = data if type(data) is bytes else data[0]  # type: ignore[assignment]
        kind, _, _, rid, _ = _REQ.unpack_from(head)
        shared = self._shared
        end = 0.0
        while True:
            server = self._pick()
            if server is None:
                if self._closed:
                    raise ValueError("operation on a closed rpc Client")
                if not block:
                    raise Full("no server connected")
                if not end:
                    end = time.monotonic() + self.heartbeat
                self._await_server(max(0.0, end - time.monotonic()))
                continue
            try:
                with shared.lock:
                    if not server.up:
                        continue
                    tracker = shared.send_locked(server.sock, None, data, block)
                    if kind == _CALL:
                        # Under the lock: no reader sees the reply before this.
                        server.calls.add(rid)
                        self._where[rid] = server
                if tracker is not None:
                    tracker.wait()
                return
            except ShutDown:
                raise ValueError("operation on a closed rpc Client") from None
            except _Again:
                pass
            # The monitor saw the handshake before the socket attached the
            # connection, or the connection just died: look again shortly.
            if not end:
                end = time.monotonic() + self.heartbeat
            if time.monotonic() > end:
                raise ServerGone(f"the server at {server.address} is unreachable")
            time.sleep(0.001)

    async def send_request_async(self, data: Message) -> None:
        """``send_request`` waiting for a connected server without blocking
        the event loop."""
        import asyncio

        end = time.monotonic() + self.heartbeat
        while True:
            try:
                self.send_request(data, False)
                return
            except Full:
                if time.monotonic() > end:
                    self._await_server(0)
                await asyncio.sleep(0.01)

    def send_control(self, data: bytes) -> None:
        """Send a control message (cancel, credit, bye) to the server that
        has the call; dropped where there is nobody to tell."""
        msg = P.decode_control(data)
        if msg is None:
            return
        kind, rid, _ = msg
        shared = self._shared
        with shared.lock:
            if kind == P.BYE:
                targets = [s for s in self._servers if s.up]
            else:
                server = self._where.get(rid)
                if kind == P.CANCEL and server is not None:
                    # Nobody waits for it now; the server may never answer.
                    del self._where[rid]
                    server.calls.discard(rid)
                targets = [server] if server is not None else []
            for s in targets:
                try:
                    shared.send_locked(s.sock, None, data, False)
                except (ShutDown, _ZMQError):
                    pass

    # ---- receiving ---------------------------------------------------------

    def _take(self, block: bool, timeout: Optional[float]) -> None:
        """Move at least one reply (or failure) into ``_ready``: raises
        ``Empty`` when none comes in time, ``ShutDown`` once closed."""
        shared = self._shared
        end = None if not block or timeout is None else time.monotonic() + timeout
        while not self._ready:
            if self._failed:
                self._report_failures()
                continue
            left = 0.0 if not block else (None if end is None else end - time.monotonic())
            if left is not None and left < 0:
                raise Empty
            got = shared.recv(left)
            if got is None:
                if left is None or (left > 0 and time.monotonic() < end):  # type: ignore[operator]
                    continue  # woken: look again
                if self._failed:
                    continue
                raise Empty
            self._accept(*got)

    def _accept(self, index: int, first: bytes, rest: List[Any]) -> None:
        if len(first) < _REPLY.size:
            return  # not a reply
        kind, _, _, rid = _REPLY.unpack_from(first)
        if kind in _FINAL:
            with self._shared.lock:
                server = self._where.pop(rid, None)
                if server is not None:
                    server.calls.discard(rid)
        self._ready.append([first, *rest] if rest else first)

    def _report_failures(self) -> None:
        """A connection was lost: take what it sent before it went, then
        fail its calls with ``ServerGone``."""
        shared = self._shared
        while True:
            got = shared.recv(0)
            if got is None:
                break
            self._accept(*got)
        with shared.lock:
            failed, self._failed = self._failed, []
        for server, rids in failed:
            err = ServerGone(f"the connection to the server at {server.address} was lost "
                             f"(it exited, was killed, or was silent for {self.heartbeat:g} s)")
            for rid in rids:
                self._ready.append(P.encode_error(rid, err))

    def recv_reply(self, block: bool = True, timeout: Optional[float] = None) -> Message:
        """The next reply: bytes, or ``[head, pickle, buffer, ...]``."""
        if not self._ready:
            self._take(block, timeout)
        return self._ready.popleft()

    def recv_replies(self, max_messages: int, block: bool = True,
                     timeout: Optional[float] = None) -> List[Message]:
        """At least one reply (waiting as ``recv_reply``), then up to
        ``max_messages`` of those already here."""
        ready = self._ready
        if not ready:
            self._take(block, timeout)
        if len(ready) < max_messages and not self._failed:
            got: List[Tuple[Any, bytes, List[Any]]] = []
            self._shared.drain(max_messages - len(ready), got)
            if got:
                self._accept_many(got)
        n = min(max_messages, len(ready))
        return [ready.popleft() for _ in range(n)]

    def _accept_many(self, got: List[Tuple[Any, bytes, List[Any]]]) -> None:
        """``_accept`` for a batch, the bookkeeping under one hold of the lock."""
        ready = self._ready
        where = self._where
        unpack = _REPLY.unpack_from
        size = _REPLY.size
        with self._shared.lock:
            for _, first, rest in got:
                if len(first) < size:
                    continue  # not a reply
                kind, _, _, rid = unpack(first)
                if kind in _FINAL:
                    server = where.pop(rid, None)
                    if server is not None:
                        server.calls.discard(rid)
                ready.append([first, *rest] if rest else first)

    # ---- lifetime ----------------------------------------------------------

    def close(self) -> None:
        """Tell the servers we leave, wake our readers, close (idempotent)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        if os.getpid() != self._pid:
            return
        self.send_control(P.encode_control(P.BYE, 0))
        shared = self._shared
        shared.shutdown()
        with shared.lock:
            for server in self._servers:
                try:
                    server.sock.disable_monitor()
                except _ZMQError:
                    pass
        if self._watcher is not threading.current_thread():
            self._watcher.join(2.0)
        # Linger: the goodbye, and a notify sent just before, still go.
        shared.close(int(min(self.heartbeat, 1.0) * 1000))

    def abandon(self) -> None:
        """In a forked child: leave the parent's connection alone (its
        ZeroMQ context has no threads here; touching it could hang)."""
        self._closed = True
        _ABANDONED.append(self)


_ABANDONED: List[Any] = []


# ---- server ------------------------------------------------------------------------


class TcpPeer:
    """The server's end of one client connection (a routing id): what a
    server lane sends replies through."""

    encode_reply = staticmethod(encode_reply)

    def __init__(self, listener: "TcpListener", peer: bytes) -> None:
        self.listener = listener
        self.peer = peer
        self.dead = False

    def send_reply(self, data: Message, block: bool = True, timeout: Optional[float] = None) -> None:
        """Send a reply; ``ShutDown`` once the client or the server is gone."""
        if self.dead:
            raise ShutDown("the client is gone")
        shared = self.listener.shared
        try:
            with shared.lock:
                tracker = shared.send_locked(shared.socks[0], self.peer, data, block)
            if tracker is not None:
                tracker.wait()
        except _ZMQError as exc:
            if exc.errno == errno.EHOSTUNREACH:
                raise ShutDown("the client is gone") from None
            raise

    async def send_reply_async(self, data: Message) -> None:
        self.send_reply(data, False)

    def shutdown(self) -> None:
        self.dead = True

    def close(self) -> None:
        self.dead = True


class TcpListener:
    """The server's ROUTER socket, its ZAP handler and its monitor.

    ``recv_request()`` may be called by several threads at once;
    ``serve_control()`` runs in the server's control thread: it answers the
    ZAP requests of connecting clients and reports lost connections.
    """

    def __init__(self, address: str, secret_key: Optional[K.KeyArg],
                 allowed_keys: Optional[Sequence[K.KeyArg]], heartbeat: float = DEFAULT_HEARTBEAT
                 ) -> None:
        if secret_key is None:
            raise ValueError(
                "a tcp:// server needs secret_key= (its .key_secret file or the key bytes) "
                "and allowed_keys= (the public keys of the clients it serves): pickle runs "
                "code, so a tcp:// server never serves unauthenticated clients. "
                "Make key pairs with `pyipc keygen NAME` (NAME.key is public, "
                "NAME.key_secret is secret)")
        if allowed_keys is None:
            raise ValueError(
                "a tcp:// server needs allowed_keys=[...]: the public keys (NAME.key files "
                "or bytes) of the clients it may serve; make them with `pyipc keygen NAME`")
        _parse_tcp(address)
        public, secret = K.secret_key(secret_key)
        self.allowed: Set[bytes] = set(K.public_keys(allowed_keys))
        self.heartbeat = float(heartbeat)
        self._control_lock = threading.Lock()
        self._closed = False
        # A context of its own: the ZAP endpoint is one per context.
        self.ctx = ctx = zmq.Context()
        sock = None
        try:
            self.zap = ctx.socket(zmq.REP)
            self.zap.setsockopt(zmq.LINGER, 0)
            self.zap.bind(_ZAP_ENDPOINT)  # before the ROUTER exists (see the docstring)
            sock = ctx.socket(zmq.ROUTER)
            _common_options(sock, self.heartbeat)
            sock.setsockopt(zmq.CURVE_SERVER, 1)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
            sock.setsockopt(zmq.ZAP_DOMAIN, _ZAP_DOMAIN)
            if ":" in address[len("tcp://"):].rpartition(":")[0]:
                sock.setsockopt(zmq.IPV6, 1)
            self.monitor = sock.get_monitor_socket(
                zmq.EVENT_DISCONNECTED | zmq.EVENT_MONITOR_STOPPED,
                f"inproc://pyipc-rpc-server-monitor-{next(_monitor_ids)}")
            try:
                sock.bind(address)
            except _ZMQError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise FileExistsError(errno.EADDRINUSE, "address in use", address) from None
                raise
            self.address: str = bytes(sock.getsockopt(zmq.LAST_ENDPOINT)).decode()
        except BaseException:
            if sock is not None:
                sock.close(0)
            ctx.destroy(0)
            raise
        self.shared = _Shared([sock], routed=True)

    def recv_request(self) -> Tuple[bytes, bytes, List[Any]]:
        """The next message from any client: ``(client, first frame,
        later frames)``; ``ShutDown`` once shut down."""
        recv = self.shared.recv
        while True:
            got = recv(None)
            if got is not None:
                return got

    def reachable(self, peer: bytes) -> bool:
        """Is the connection of routing id ``peer`` still there?  Sends it
        an empty frame, which clients ignore."""
        shared = self.shared
        with shared.lock:
            if shared.closed:
                return False
            sock = shared.socks[0]
            shared.quiet[0] = _UNKNOWN
            try:
                sock.getsockopt(_EVENTS)  # process the connections' comings and goings
                sock.send(peer, _SNDMORE | _NOBLOCK)
                sock.send(b"", _NOBLOCK)
            except _ZMQError:
                return False
            finally:
                shared.touched(sock)
            return True

    def _answer_zap(self) -> None:
        zap = self.zap
        while True:
            try:
                msg = zap.recv_multipart(_NOBLOCK)
            except _Again:
                return
            if len(msg) < 2:
                continue  # unanswerable; the REP socket drops it
            version, request_id = msg[0], msg[1]
            ok = (len(msg) >= 7 and version == b"1.0" and msg[5] == b"CURVE"
                  and len(msg[6]) == 32 and zmq.utils.z85.encode(msg[6]) in self.allowed)
            reply = [version, request_id, b"200" if ok else b"400",
                     b"OK" if ok else b"this key is not allowed", b"", b""]
            zap.send_multipart(reply)

    def _drain_monitor(self) -> bool:
        lost = False
        while True:
            try:
                event = parse_monitor_message(self.monitor.recv_multipart(_NOBLOCK))
            except _Again:
                return lost
            if event["event"] == zmq.EVENT_DISCONNECTED:
                lost = True

    def serve_control(self, stop_fd: int, stopped: Callable[[], bool],
                      lost: Callable[[], None]) -> None:
        """Answer ZAP requests and report lost connections (``lost()``, once
        at once and once a little later, when the socket has surely
        forgotten them) until ``stopped()`` or ``stop_fd`` is readable."""
        poll = select.poll()
        with self._control_lock:
            if self._closed:
                return
            zap_fd = int(self.zap.getsockopt(zmq.FD))
            mon_fd = int(self.monitor.getsockopt(zmq.FD))
        for fd in (zap_fd, mon_fd, stop_fd):
            poll.register(fd, select.POLLIN)
        recheck: Optional[float] = None
        while not stopped():
            with self._control_lock:
                if self._closed:
                    return
                self._answer_zap()
                gone = self._drain_monitor()
            now = time.monotonic()
            if gone:
                lost()
                recheck = now + 0.25
            elif recheck is not None and now >= recheck:
                recheck = None
                lost()
            ms = None if recheck is None else max(1, int((recheck - now) * 1000))
            for fd, _ in poll.poll(ms):
                if fd == stop_fd:
                    return

    def fileno(self) -> int:
        return self.shared.fds[0]

    def shutdown(self) -> None:
        """Wake every reader with ``ShutDown``."""
        self.shared.shutdown()

    def close(self) -> None:
        """Stop listening and close everything (idempotent)."""
        with self._control_lock:
            if self._closed:
                return
            self._closed = True
            shared = self.shared
            with shared.lock:
                if not shared.socks[0].closed:
                    try:
                        shared.socks[0].disable_monitor()
                    except _ZMQError:
                        pass
            shared.close()
            self.monitor.close(0)
            self.zap.close(0)
        self.ctx.term()
