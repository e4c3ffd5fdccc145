"""``MessageQueue``: a POSIX message queue (``mq_open``) as a channel.

On Linux a queue descriptor is a file descriptor, so ``fileno()`` works with
``select``, ``selectors`` and ``asyncio``.  Each send and receive is one
timed system call in C, waiting in bounded slices (see ``csrc/mq.c``).
"""
from __future__ import annotations

import errno
from typing import Any, Optional, Tuple

from ._core import ffi, lib
from ._util import FOREVER, channel_deadline, shm_name
from .channel import MQ, ChannelBase, _closed_error, _send
from .errors import MessageTooLarge, error_from

__all__ = ["MessageQueue"]

_PROC = "/proc/sys/fs/mqueue/"


def _limit(name: str) -> str:
    try:
        with open(_PROC + name, encoding="ascii") as f:
            return f.read().strip()
    except OSError:  # pragma: no cover - no /proc
        return "?"


_base_recv = ChannelBase.recv


class MessageQueue(ChannelBase):
    """A POSIX message queue ``/name`` (the leading ``/`` is optional).

    ``create=True`` makes a new queue (``FileExistsError`` if the name is
    taken) of ``max_messages`` messages of at most ``max_message_size``
    bytes, with permission bits exactly ``mode``; ``create=False`` opens an
    existing one (``FileNotFoundError``).  Going over a system limit raises
    ``ValueError`` (or ``OSError``) naming it (``/proc/sys/fs/mqueue/*``).
    ``recv`` returns the oldest message of the highest priority.  The queue
    lives until ``unlink()``.
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
        if len(bare) > 254:
            raise ValueError("a message queue name has at most 254 characters")
        if create:
            if max_messages < 1:
                raise ValueError("max_messages must be at least 1")
            if max_message_size < 1:
                raise ValueError("max_message_size must be at least 1")
        full = "/" + bare
        fd = ffi.new("int *")
        rc = lib.pyipc_mq_open(full.encode(), int(create), mode, max_messages, max_message_size, fd)
        if rc < 0:
            raise self._open_error(rc, full, create, max_messages, max_message_size)
        self.name = full
        self._stash: Optional[Tuple[bytes, int]] = None
        self._prio = ffi.new("unsigned *")
        super().__init__(fd[0], fd[0], MQ, full)
        a, b, c = ffi.new("int64_t *"), ffi.new("int64_t *"), ffi.new("int64_t *")
        rc = lib.pyipc_mq_attr(self._h, a, b, c)
        if rc < 0:  # pragma: no cover - a fresh descriptor
            self.close()
            raise error_from(rc, full)
        self._bufsize = int(lib.pyipc_chan_bufsize(self._h))

    @staticmethod
    def _open_error(rc: int, name: str, create: bool, maxmsg: int, msgsize: int) -> BaseException:
        if create and rc == -errno.EINVAL:
            return ValueError(
                f"cannot create message queue {name!r} with max_messages={maxmsg},"
                f" max_message_size={msgsize}: over the system limits"
                f" {_PROC}msg_max={_limit('msg_max')} or"
                f" {_PROC}msgsize_max={_limit('msgsize_max')}"
                " (a privileged process may go up to 65536 and 16 MiB)"
            )
        if create and rc == -errno.ENOSPC:
            return OSError(
                errno.ENOSPC,
                f"too many message queues: the system limit"
                f" {_PROC}queues_max={_limit('queues_max')} is reached",
                name,
            )
        if create and rc == -errno.EMFILE:
            return OSError(
                errno.EMFILE,
                "out of message queue memory (RLIMIT_MSGQUEUE, `ulimit -q`) or of"
                " file descriptors",
                name,
            )
        return error_from(rc, name)

    # ---- attributes ----

    def _attr(self) -> Tuple[int, int, int]:
        h = self._check(True, "")
        a, b, c = ffi.new("int64_t *"), ffi.new("int64_t *"), ffi.new("int64_t *")
        rc = lib.pyipc_mq_attr(h, a, b, c)
        if rc < 0:
            raise self._error(rc, h, 0)
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
        """Send one message with ``priority`` (0 lowest, below
        ``/proc/sys/fs/mqueue``'s 32768).  Raises ``MessageTooLarge`` if it
        is longer than ``max_message_size``, ``TimeoutError`` if the queue
        stayed full (``timeout=0`` never waits), ``ValueError`` if closed or
        for a bad priority, ``TypeError`` for data that is not bytes-like."""
        h = self._tx
        if h is None:
            raise _closed_error()
        p = data if type(data) is bytes else ffi.from_buffer("char[]", data)
        n = len(p)
        dl = FOREVER if timeout is None else channel_deadline(timeout)
        rc = _send(h, p, n, priority, dl)
        if rc:
            if rc == -errno.EINVAL and not 0 <= priority < 32768:
                raise ValueError("priority must be between 0 and 32767")
            if rc == -errno.EMSGSIZE:
                raise MessageTooLarge(
                    f"message of {n} bytes is longer than max_message_size={self._bufsize}"
                )
            self._send_slow(rc, h, p, n, priority, dl)

    def recv(self, timeout: Optional[float] = None) -> bytes:
        """Receive the oldest message of the highest priority.  Raises
        ``TimeoutError`` if none came in time (``timeout=0`` never waits),
        ``ValueError`` if closed."""
        if self._stash is not None:
            return self._unstash()[0]
        return _base_recv(self, timeout)

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
        dl = FOREVER if timeout is None else channel_deadline(timeout)
        n = lib.pyipc_chan_recv(h, buf, len(buf), prio, dl)
        if n >= 0:
            data: bytes = ffi.unpack(buf, n)
            pool.append(buf)
        else:
            data = self._recv_slow(n, h, buf, dl, prio)
        return data, int(prio[0])

    def recv_into(self, buffer: Any, timeout: Optional[float] = None) -> int:
        """Receive into a writable buffer; return the length.  A buffer too
        small raises ``MessageTooLarge`` and the message is kept for the
        next receive on this handle.  Raises what ``recv`` raises."""
        m = memoryview(buffer).cast("B")
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

    async def send_async(self, data: Any, priority: int = 0) -> None:
        """Send one message, awaiting room with the event loop."""
        await self._send_async(data, priority)

    async def recv_async(self) -> bytes:
        """Receive one message, awaiting it with the event loop."""
        if self._stash is not None:
            return self._unstash()[0]
        data, _ = await self._recv_async(ffi.NULL)
        return data

    def __repr__(self) -> str:
        return f"<MessageQueue {self.name!r}{' closed' if self._h is None else ''}>"
