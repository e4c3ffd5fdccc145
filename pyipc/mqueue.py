"""``MessageQueue``: a POSIX message queue (``mq_open``) as a channel.

On Linux a queue descriptor is a file descriptor, so ``fileno()`` works with
``select``, ``selectors`` and ``asyncio``.  Each send and receive is one
timed system call in C, waiting in bounded slices (see ``csrc/mq.c``).
"""
from __future__ import annotations

import errno
from typing import Any, List, Optional, Tuple

from ._core import ffi, lib
from ._util import FOREVER, channel_deadline, check_int, check_mode, shm_name
from .channel import ChannelBase, _closed_error, new_handle, readable
from .errors import MessageTooLarge, error_from

__all__ = ["MessageQueue"]

_PROC = "/proc/sys/fs/mqueue/"
PRIO_MAX = int(lib.PYIPC_MQ_PRIO_MAX)  # priorities are 0 .. PRIO_MAX - 1
_INT64_MAX = (1 << 63) - 1

_mq_send = lib.pyipc_mq_send
_mq_recv = lib.pyipc_mq_recv
_unpack = ffi.unpack


def _limit(name: str) -> str:
    try:
        with open(_PROC + name, encoding="ascii") as f:
            return f.read().strip()
    except OSError:  # pragma: no cover - no /proc
        return "?"


class MessageQueue(ChannelBase):
    """A POSIX message queue ``/name`` (the leading ``/`` is optional).

    ``create=True`` makes a new queue (``FileExistsError`` if the name is
    taken) of ``max_messages`` messages of at most ``max_message_size``
    bytes, with permission bits exactly ``mode`` (0 to 0o7777);
    ``create=False`` opens an existing one (``FileNotFoundError``).  Going
    over a system limit raises ``ValueError`` (or ``OSError``) naming it
    (``/proc/sys/fs/mqueue/*``).  ``recv`` returns the oldest message of the
    highest priority.  The queue lives until ``unlink()``.
    """

    __slots__ = ("name", "_stash", "_prio")

    def __init__(
        self,
        name: str,
        *,
        create: bool = False,
        max_messages: int = 10,
        max_message_size: int = 8192,
        mode: int = 0o600,
    ) -> None:
        self._h: Any = None
        bare = shm_name(name)
        bits = check_mode(mode)
        maxmsg = check_int(max_messages, "max_messages", 1, _INT64_MAX)
        msgsize = check_int(max_message_size, "max_message_size", 1, _INT64_MAX)
        full = "/" + bare
        try:
            h = new_handle(lambda out: lib.pyipc_mq_open(full.encode(), int(bool(create)), bits,
                                                         maxmsg, msgsize, out), full)
        except OSError as exc:
            raise self._open_error(exc, full, create, maxmsg, msgsize) from None
        self.name = full
        self._stash: Optional[Tuple[bytes, int]] = None
        self._prio = ffi.new("unsigned *")
        super().__init__(h, full)

    @staticmethod
    def _open_error(exc: OSError, name: str, create: bool, maxmsg: int, msgsize: int) -> BaseException:
        if create and exc.errno == errno.EINVAL:
            return ValueError(
                f"cannot create message queue {name!r} with max_messages={maxmsg},"
                f" max_message_size={msgsize}: over the system limits"
                f" {_PROC}msg_max={_limit('msg_max')} or"
                f" {_PROC}msgsize_max={_limit('msgsize_max')}"
                " (a privileged process may go up to 65536 and 16 MiB)"
            )
        if create and exc.errno == errno.ENOSPC:
            return OSError(
                errno.ENOSPC,
                f"too many message queues: the system limit"
                f" {_PROC}queues_max={_limit('queues_max')} is reached",
                name,
            )
        if create and exc.errno == errno.EMFILE:
            return OSError(
                errno.EMFILE,
                "out of message queue memory (RLIMIT_MSGQUEUE, `ulimit -q`) or of"
                " file descriptors",
                name,
            )
        return exc

    # ---- attributes ----

    def _attr(self) -> Tuple[int, int, int]:
        h = self._check(True, "")
        a, b, c = ffi.new("int64_t *"), ffi.new("int64_t *"), ffi.new("int64_t *")
        rc = lib.pyipc_mq_attr(h, a, b, c)
        if rc < 0:
            self._fail(rc, 0)
        return int(a[0]), int(b[0]), int(c[0])

    @property
    def max_messages(self) -> int:
        """How many messages the queue holds at most."""
        return self._attr()[0]

    @property
    def max_message_size(self) -> int:
        """The largest message, in bytes."""
        return self._attr()[1]

    def qsize(self) -> int:
        """Messages queued now (a snapshot)."""
        return self._attr()[2] + (self._stash is not None)

    @property
    def current_messages(self) -> int:
        """Messages queued now (same as ``qsize()``)."""
        return self.qsize()

    def __len__(self) -> int:
        return self.qsize()

    def unlink(self) -> None:
        """Remove the queue's name (open handles keep working).  A second
        unlink raises ``FileNotFoundError``."""
        rc = lib.pyipc_mq_unlink(self.name.encode())
        if rc < 0:
            raise error_from(rc, self.name)

    def pending(self) -> bool:
        """True if a message refused by a too small ``recv_into`` buffer is
        held by this handle (``recv`` returns it first)."""
        self._check(True, "")
        return self._stash is not None

    # ---- send / receive ----

    def send(self, data: Any, timeout: Optional[float] = None, priority: int = 0) -> None:
        """Send one message with ``priority`` (0 lowest, below 32768).
        Raises ``MessageTooLarge`` if it is longer than
        ``max_message_size``, ``TimeoutError`` if the queue stayed full
        (``timeout=0`` never waits), ``ValueError`` if closed or for a
        priority out of range, ``TypeError`` for data that is not a
        contiguous bytes-like object or a priority that is not an int."""
        h = self._tx
        if h is None:
            raise _closed_error()
        if priority.__class__ is not int or not 0 <= priority < PRIO_MAX:
            priority = check_int(priority, "priority", 0, PRIO_MAX - 1)
        p = data if type(data) is bytes else readable(data)
        dl = FOREVER if timeout is None else channel_deadline(timeout)
        rc = _mq_send(h, p, len(p), priority, dl)
        if rc:
            if rc == -errno.EMSGSIZE:
                raise MessageTooLarge(
                    f"message of {len(p)} bytes is longer than max_message_size={self._bufsize}"
                )
            self._retry(rc, lambda: int(_mq_send(h, p, len(p), priority, dl)), dl, 1)

    def recv(self, timeout: Optional[float] = None) -> bytes:
        """Receive the oldest message of the highest priority.  Raises
        ``TimeoutError`` if none came in time (``timeout=0`` never waits),
        ``ValueError`` if closed."""
        if self._stash is None:
            return ChannelBase.recv(self, timeout)
        return self._unstash()[0]

    def _unstash(self) -> Tuple[bytes, int]:
        self._check(True, "")
        stash = self._stash
        assert stash is not None
        self._stash = None
        return stash

    def recv_with_priority(self, timeout: Optional[float] = None) -> Tuple[bytes, int]:
        """Like ``recv``, and also return the message's priority."""
        if self._stash is not None:
            return self._unstash()
        h = self._check(True, "receive")
        prio = ffi.new("unsigned *")
        pool = self._pool
        buf = pool.pop() if pool else self._new_buf(0)
        dl = channel_deadline(timeout)
        n = _mq_recv(h, buf, len(buf), prio, dl)
        if n < 0:
            n = self._retry(n, lambda: int(_mq_recv(h, buf, len(buf), prio, dl)), dl, 0)
        data: bytes = _unpack(buf, n)
        pool.append(buf)
        return data, int(prio[0])

    def recv_into(self, buffer: Any, timeout: Optional[float] = None) -> int:
        """Receive into a writable buffer; return the length.  A buffer too
        small raises ``MessageTooLarge`` and the message is kept for the
        next receive on this handle.  Raises what ``recv`` raises."""
        try:
            m = memoryview(buffer).cast("B")
        except (TypeError, BufferError):
            raise TypeError("recv_into needs a writable, contiguous bytes-like object") from None
        if m.readonly:
            raise TypeError("recv_into needs a writable buffer")
        if self._stash is None and len(m) >= self._bufsize:
            return super().recv_into(m, timeout)
        # The kernel wants room for max_message_size whatever the message:
        # take it into our buffer and copy, or keep it if it does not fit.
        data, prio = self.recv_with_priority(timeout)
        if len(data) > len(m):
            self._stash = (data, prio)
            raise MessageTooLarge(
                f"message of {len(data)} bytes does not fit in a buffer of {len(m)};"
                " it is kept for the next receive"
            )
        m[: len(data)] = data
        return len(data)

    def recv_many(self, max_messages: int, timeout: Optional[float] = None) -> List[bytes]:
        """Wait for one message, then return up to ``max_messages`` of those
        queued (highest priority first), with one C call.  Raises what
        ``recv`` raises."""
        if self._stash is None:
            return super().recv_many(max_messages, timeout)
        check_int(max_messages, "max_messages", 1)
        return [self._unstash()[0]]

    async def send_async(self, data: Any, priority: int = 0) -> None:
        """Send one message, awaiting room with the event loop."""
        h = self._check(self._wfd >= 0, "send")
        prio = check_int(priority, "priority", 0, PRIO_MAX - 1)
        p = readable(data)
        await self._async_call(lambda: int(_mq_send(h, p, len(p), prio, 0)), 1)

    async def recv_async(self) -> bytes:
        """Receive one message, awaiting it with the event loop."""
        if self._stash is not None:
            return self._unstash()[0]
        return await super().recv_async()

    def __repr__(self) -> str:
        return f"<MessageQueue {self.name!r}{' closed' if self._h is None else ''}>"
