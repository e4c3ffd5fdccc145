"""The local transport: a UNIX socket to connect, shared memory to call.

A client connects to the server's UNIX socket; the server checks its
credentials (``SO_PEERCRED``), creates two rings for it in ``/dev/shm`` (a
request ring the client puts to and a reply ring it gets from) and sends
their names.  The client attaches to both and removes the names at once,
then acknowledges; the server removes them too (whichever comes first
wins).  From then on the calls travel through the rings, with no system
call while both sides are busy, and the socket carries only control
messages (cancel, stream credit) and liveness: its end of file is how each
side learns that the other is gone, and a ring's ``shutdown()`` is how a
waiter blocked on it is woken.

The names exist only between creation and the client's attach, so a
process killed at any other instant leaves nothing in ``/dev/shm`` (only
a server killed in the microseconds between creating a client's rings and
sending their names would).

Nothing in this module knows what a call is: it moves opaque messages.
"""
from __future__ import annotations

import asyncio
import errno
import itertools
import json
import os
import secrets
import stat
import threading
from typing import Any, Callable, Iterable, List, Optional, Set, Tuple

from ..errors import Full, MessageTooLarge, ShutDown
from ..ring import RingBuffer
from ..usock import SocketChannel, UnixListener, unix_connect
from . import protocol as P
from .errors import ServerGone
from .fragments import Reassembler, abort_message, fragments

__all__ = [
    "DEFAULT_CAPACITY",
    "resolve_address",
    "runtime_dir",
    "LocalListener",
    "LocalConnection",
    "LocalClientTransport",
]

# Bytes of each ring of a connection: a request or reply up to a little less
# is one ring message, a larger one travels in pieces (fragments.py).  Pages
# of /dev/shm are only allocated as they are touched.
DEFAULT_CAPACITY = 4 << 20
_SUN_PATH_MAX = 107
_ABANDONED: List[Any] = []  # see LocalClientTransport.abandon
_VERSION = 1
_HANDSHAKE_MAX = 4096
SHM_DIR = "/dev/shm"


def runtime_dir(create: bool = True) -> str:
    """The per-user directory for named servers' sockets.

    ``$XDG_RUNTIME_DIR/pyipc`` when that variable names a directory, else
    ``/tmp/pyipc-<uid>``; made with mode 0700.  An existing one must be a
    real directory owned by this user and closed to everyone else
    (``PermissionError`` otherwise: someone else could have put it there
    to intercept the connections).
    """
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isabs(base) and os.path.isdir(base):
        path = os.path.join(base, "pyipc")
    else:
        path = f"/tmp/pyipc-{os.geteuid()}"
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        else:
            os.chmod(path, 0o700)  # the umask may have narrowed it; never widened
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise PermissionError(
            errno.EACCES,
            "not a directory owned by this user with mode 0700; refusing to use it",
            path,
        )
    return path


def resolve_address(address: str, create_dir: bool = False) -> str:
    """The socket path for ``address``: an absolute path as it is, a name
    inside ``runtime_dir()``.  ``ValueError`` for anything else."""
    if not isinstance(address, str):
        raise TypeError(f"address must be a str, not {type(address).__name__}")
    if "://" in address:  # tcp:// is routed to pyipc.rpc.tcp before this
        raise ValueError(f"unknown address scheme: {address!r}")
    if os.path.isabs(address):
        path = address
    else:
        if not address or "/" in address or "\0" in address or address in (".", ".."):
            raise ValueError(
                f"an address is a name (no '/') or an absolute path, not {address!r}"
            )
        path = os.path.join(runtime_dir(create=create_dir), address)
    if "\0" in path:
        raise ValueError("an address must not contain NUL characters")
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise ValueError(f"socket path is longer than {_SUN_PATH_MAX} bytes: {path!r}")
    return path


bye = P.encode_control(P.BYE, 0)


def _ring_name() -> str:
    """A fresh ring name that says whose it is (``pyipc ls``, leak checks)."""
    return f"pyipc-rpc-{os.getpid()}-{secrets.token_hex(8)}"


def _unlink_shm(name: str) -> None:
    try:
        RingBuffer_unlink(name)
    except FileNotFoundError:
        pass


def RingBuffer_unlink(name: str) -> None:
    """Remove a ring's name without attaching to it (what ``unlink()`` does)."""
    os.unlink(os.path.join(SHM_DIR, name))


# --------------------------------------------------------------------------
# Messages larger than a ring (see fragments.py)
# --------------------------------------------------------------------------


# How long a sender stopped half-way waits for room for its ABORT.
_ABORT_WAIT = 5.0
_ABORTS: Set["asyncio.Task[None]"] = set()  # ABORTs waiting for room in the background


def put_fragments(ring: RingBuffer, msg_id: int, data: Any) -> None:
    """Put ``data`` as fragments, each written in place (one copy), waiting
    for room as long as it takes: the receiver is draining, or gone
    (``ShutDown``).  Stopped half-way (an exception, KeyboardInterrupt
    say), it tells the receiver to drop the pieces sent so far."""
    sent = False
    try:
        for head, piece in fragments(msg_id, data, ring.max_message_size):
            with ring.reserve(len(head) + len(piece)) as buf:
                buf[: len(head)] = head
                buf[len(head) :] = piece
            sent = True
    except BaseException:
        if sent:
            try:
                ring.put(abort_message(msg_id), timeout=_ABORT_WAIT)
            except Exception:
                pass  # no room for that long, or gone: the pieces go with the connection
        raise


async def _put_abort(ring: RingBuffer, msg_id: int) -> None:
    try:
        await ring.put_async(abort_message(msg_id), timeout=_ABORT_WAIT)
    except Exception:
        pass  # no room for that long, or gone: the pieces go with the connection


async def put_fragments_async(ring: RingBuffer, msg_id: int, data: Any) -> None:
    """``put_fragments`` from an event loop.  Stopped half-way (cancelled),
    it tells the receiver to drop the pieces sent so far: at once if there
    is room, else from a task that waits for room."""
    sent = False
    try:
        for head, piece in fragments(msg_id, data, ring.max_message_size):
            await ring.put_async(b"".join((head, piece)))
            sent = True
    except BaseException:
        if sent:
            try:
                ring.put_nowait(abort_message(msg_id))
            except Full:
                task = asyncio.ensure_future(_put_abort(ring, msg_id))
                _ABORTS.add(task)
                task.add_done_callback(_ABORTS.discard)
            except Exception:
                pass  # gone: the pieces go with the connection
        raise


# --------------------------------------------------------------------------
# Server side
# --------------------------------------------------------------------------


class LocalConnection:
    """The server's end of one client: its rings and its socket.

    Several threads may call ``recv_request`` at once (the ring has any
    number of consumers) and ``send_reply`` at once.
    """

    def __init__(
        self,
        channel: SocketChannel,
        pid: int,
        uid: int,
        requests: RingBuffer,
        replies: RingBuffer,
        names: Tuple[str, str],
    ) -> None:
        self.channel = channel
        self.pid = pid
        self.uid = uid
        self.requests = requests
        self.replies = replies
        self.max_message_size = min(requests.max_message_size, replies.max_message_size)
        self._names: Optional[Tuple[str, str]] = names
        self.acknowledged = False
        # Bound for the lanes' loops.
        self.recv_request: Callable[..., bytes] = requests.get
        self.send_reply: Callable[..., None] = replies.put
        self.send_reply_async = replies.put_async
        # Requests larger than the ring arrive in fragments (fragments.py).
        self.incoming = Reassembler(requests.max_message_size)
        self._large_ids = itertools.count(1)

    def send_large_reply(self, data: Any) -> None:
        """Put a reply larger than the ring, in fragments."""
        put_fragments(self.replies, next(self._large_ids), data)

    async def send_large_reply_async(self, data: Any) -> None:
        """``send_large_reply`` from the server's event loop."""
        await put_fragments_async(self.replies, next(self._large_ids), data)

    def fileno(self) -> int:
        return self.channel.fileno()

    def forget_names(self) -> None:
        """Remove the rings' names (the client attached, or is gone)."""
        names, self._names = self._names, None
        if names:
            for name in names:
                _unlink_shm(name)

    def shutdown(self) -> None:
        """Wake every thread blocked on this connection's rings: waiting
        gets and puts raise ``ShutDown``; the client's waiting gets drain
        the replies already sent, then raise ``ShutDown``."""
        self.forget_names()
        for ring, immediate in ((self.requests, True), (self.replies, False)):
            try:
                ring.shutdown(immediate)
            except ValueError:
                pass

    def close(self) -> None:
        """Shut down and detach everything (idempotent)."""
        self.shutdown()
        self.channel.close()
        self.requests.close()
        self.replies.close()


class LocalListener:
    """The server's UNIX socket, with the handshake that sets up a client.

    ``accept()`` runs in the server's control thread and never blocks:
    it checks the peer's uid, creates its rings and sends their names; the
    connection is ready once ``acknowledged(conn)`` sees the client's
    reply.
    """

    def __init__(
        self,
        path: str,
        mode: int = 0o600,
        allow_uids: Optional[Iterable[int]] = None,
        capacity: int = DEFAULT_CAPACITY,
    ) -> None:
        self.path = path
        self.capacity = capacity
        self.uids = {os.geteuid(), *(int(u) for u in (allow_uids or ()))}
        self._listener = self._listen(path, mode)

    @staticmethod
    def _listen(path: str, mode: int) -> UnixListener:
        try:
            return UnixListener(path, mode=mode)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
        # The path is taken.  A live server answers; a socket left by a
        # killed one refuses, and is replaced.
        try:
            unix_connect(path, timeout=1.0).close()
        except ConnectionRefusedError:
            try:
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)
            except FileNotFoundError:
                pass
            try:
                return UnixListener(path, mode=mode)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
        except (OSError, ValueError):
            pass
        raise FileExistsError(errno.EEXIST, "address in use", path)

    def fileno(self) -> int:
        return self._listener.fileno()

    def accept(self) -> Optional[LocalConnection]:
        """Accept one waiting connection (None if none waits, or if it was
        refused: refused peers are told why and dropped)."""
        try:
            ch = self._listener.accept(timeout=0)
        except (TimeoutError, ValueError):
            return None
        except OSError:
            return None  # the peer gave up already (ECONNABORTED and kin)
        try:
            pid, uid, _ = ch.peer_credentials()
            if uid not in self.uids:
                self._refuse(ch, "PermissionError", f"uid {uid} may not connect to this server")
                return None
            names = (_ring_name(), _ring_name())
            requests = RingBuffer(names[0], create=True, capacity=self.capacity, mode=0o600)
            try:
                replies = RingBuffer(names[1], create=True, capacity=self.capacity, mode=0o600)
            except BaseException:
                requests.unlink()
                requests.close()
                raise
            conn = LocalConnection(ch, pid, uid, requests, replies, names)
            try:
                if uid != os.geteuid():
                    # The client must be able to open the segments by name.
                    # Only a privileged server can give them to another uid;
                    # passing them as descriptors would lift that limit.
                    for name in names:
                        os.chown(os.path.join(SHM_DIR, name), uid, -1)
                hello = {"v": _VERSION, "requests": names[0], "replies": names[1],
                         "pid": os.getpid()}
                ch.send(b"H" + json.dumps(hello).encode(), timeout=1.0)
            except PermissionError:
                conn.forget_names()
                self._refuse(ch, "PermissionError",
                             f"this server (uid {os.geteuid()}) cannot share memory with uid {uid}")
                requests.close()
                replies.close()
                return None
            except BaseException:
                conn.forget_names()
                requests.close()
                replies.close()
                raise
            return conn
        except (OSError, ValueError, EOFError):
            ch.close()
            return None

    @staticmethod
    def _refuse(ch: SocketChannel, kind: str, message: str) -> None:
        try:
            ch.send(b"E" + json.dumps({"type": kind, "message": message}).encode(), timeout=0.5)
        except (OSError, ValueError):
            pass
        ch.close()

    def close(self) -> None:
        """Stop listening and remove the socket file (idempotent)."""
        self._listener.close()


# --------------------------------------------------------------------------
# Client side
# --------------------------------------------------------------------------


class LocalClientTransport:
    """The client's end: rings to put requests and get replies, the socket
    for control messages, and a thread that waits for the socket's end of
    file to wake the reply reader with ``ServerGone``."""

    def __init__(self, address: str, timeout: Optional[float] = None) -> None:
        self.path = resolve_address(address)
        d = None if timeout is None else timeout
        ch = unix_connect(self.path, timeout=d)  # FileNotFoundError, ConnectionRefusedError
        self.channel = ch
        self.gone = False
        self._closed = False
        try:
            try:
                first = ch.recv(timeout=d)
            except EOFError:
                raise ServerGone("the server closed the connection during the handshake") from None
            if len(first) > _HANDSHAKE_MAX or first[:1] not in (b"H", b"E"):
                raise ServerGone("the server answered the handshake with something else")
            info = json.loads(first[1:].decode())
            if first[:1] == b"E":
                if info.get("type") == "PermissionError":
                    raise PermissionError(errno.EACCES, str(info.get("message")), self.path)
                raise ConnectionRefusedError(errno.ECONNREFUSED, str(info.get("message")), self.path)
            if info.get("v") != _VERSION:
                raise ServerGone(f"the server speaks protocol version {info.get('v')!r}, not {_VERSION}")
            self.server_pid = int(info["pid"])
            names = (str(info["requests"]), str(info["replies"]))
            try:
                self.requests = RingBuffer(names[0])
                self.replies = RingBuffer(names[1])
            finally:
                # Attached (or failed): either way the names have done their job.
                for name in names:
                    _unlink_shm(name)
            ch.send(b"A", timeout=d)
        except BaseException:
            ch.close()
            raise
        self.max_message_size = min(self.requests.max_message_size, self.replies.max_message_size)
        # Replies larger than the ring arrive in fragments (fragments.py).
        self.incoming = Reassembler(self.replies.max_message_size)
        self._large_ids = itertools.count(1)
        self.recv_reply: Callable[..., bytes] = self.replies.get
        self.recv_replies: Callable[..., Any] = self.replies.get_many
        self._watcher = threading.Thread(target=self._watch, name="pyipc-rpc-watch", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        """Wait for the socket's end of file (the server exited, was killed
        or closed us), then wake the reply reader."""
        ch = self.channel
        while True:
            try:
                ch.recv()
            except (EOFError, OSError):
                break
            except ValueError:  # closed by close()
                return
        self.gone = True
        try:
            # Replies already sent are still read; then gets raise ShutDown.
            self.replies.shutdown()
        except ValueError:
            pass

    def send_request(self, data: Any, block: bool = True, timeout: Optional[float] = None) -> None:
        """Put one request of any size.  ``ServerGone`` if the server is
        gone, ``Full`` when ``block`` is false or the timeout expires (for
        a request larger than the ring, at once: see below)."""
        try:
            try:
                self.requests.put(data, block, timeout)
            except MessageTooLarge:
                # Larger than the ring: in fragments, which wait for room
                # as long as it takes (a non-blocking send cannot promise
                # to put them all, so it sends none).
                if not block or timeout is not None:
                    raise Full from None
                put_fragments(self.requests, next(self._large_ids), data)
        except ShutDown:
            raise ServerGone("the server closed the connection") from None
        except ValueError:
            if self.requests.closed:
                raise ValueError("operation on a closed rpc Client") from None
            raise

    async def send_request_async(self, data: Any) -> None:
        """``send_request`` that waits for room without blocking the loop."""
        try:
            try:
                await self.requests.put_async(data)
            except MessageTooLarge:
                await put_fragments_async(self.requests, next(self._large_ids), data)
        except ShutDown:
            raise ServerGone("the server closed the connection") from None

    def send_control(self, data: bytes) -> None:  # noqa: D401
        """Send a control message (cancel, credit); silently dropped if the
        server is gone (there is nothing left to tell)."""
        try:
            self.channel.send(data, timeout=1.0)
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        """Tell the server we are leaving and detach (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            # The server runs what is queued (a notify sent just before
            # close() is delivered), then its lane threads leave; the
            # goodbye tells it that the end of file is no crash.
            self.requests.shutdown(False)
            self.replies.shutdown(True)  # wakes our own blocked readers
        except ValueError:
            pass
        self.send_control(bye)
        self.channel.close()
        if self._watcher is not threading.current_thread():
            self._watcher.join(1.0)
        self.requests.close()
        self.replies.close()

    def abandon(self) -> None:
        """In a forked child: give up this process's copy of the connection
        without telling the server anything (the parent still uses it).

        Nothing is closed: a handle that a parent's thread was inside when
        it forked arrives with that thread's in-call count, and closing it
        would wait for a thread that does not exist here.  The copies are
        kept alive for good instead, so that collection never closes them.
        """
        self._closed = True
        _ABANDONED.append(self)

