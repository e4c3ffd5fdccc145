"""``MessageQueue``: a POSIX message queue (``mq_open``) as a channel.

On Linux a queue descriptor is a file descriptor, so ``fileno()`` works with
``select``, ``selectors`` and ``asyncio``.  Each send and receive is one
timed system call in C, waiting in bounded slices (see ``csrc/mq.c``).
"""
from __future__ import annotations

import errno
from typing import Any, Optional, Tuple

from ._core import ffi, lib
from ._util import FOREVER, channel_deadline, check_int, check_mode, shm_name
from .channel import ChannelBase, _closed_error, new_handle, readable
from .errors import RC_EMSGSIZE as _EMSGSIZE
from .errors import MessageTooLarge, error_from

__all__ = ["MessageQueue"]

_PROC = "/proc/sys/fs/mqueue/"
PRIO_MAX = int(lib.PYIPC_MQ_PRIO_MAX)  # priorities are 0 .. PRIO_MAX - 1
_INT64_MAX = (1 << 63) - 1

_mq_send = lib.pyipc_mq_send
_mq_recv = lib.pyipc_mq_recv


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

    __slots__ = ("name",)

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
        """Messages queued now (a snapshot), the one a too small
        ``recv_into`` left held by this handle included."""
        return self._attr()[2] + self.pending()

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
        held by this handle (the next receive returns it first; the
        descriptor does not show it)."""
        return super().pending()

    # ---- send / receive ----

    def send(self, data: Any, timeout: Optional[float] = None, priority: int = 0) -> None:
        """Send one message with ``priority`` (0 lowest, below 32768).
        Raises ``MessageTooLarge`` if it is longer than
        ``max_message_size``, ``TimeoutError`` if the queue stayed full
        (``timeout=0`` never waits), ``ValueError`` if closed or for a
        priority out of range, ``TypeError`` for data that is not a
        contiguous bytes-like object or a priority that is not an int."""
        # The hot path, as ChannelBase.send's: one C call, no closure.
        if priority.__class__ is not int or not 0 <= priority < PRIO_MAX:
            priority = check_int(priority, "priority", 0, PRIO_MAX - 1)
        dl = FOREVER if timeout is None else channel_deadline(timeout)
        h = self._tx
        try:
            rc = _mq_send(h, data, len(data), priority, dl)
        except TypeError:  # not bytes, or closed (see ChannelBase.send)
            h = self._check(True, "send")
            data = readable(data)
            rc = _mq_send(h, data, len(data), priority, dl)
        if rc:
            self._send_prio_again(rc, h, data, priority, dl)

    def _send_prio_again(self, rc: int, h: Any, p: Any, prio: int, dl: int) -> None:
        if rc == _EMSGSIZE:
            raise MessageTooLarge(
                f"message of {len(p)} bytes is longer than max_message_size={self._bufsize}"
            )
        self._retry(rc, lambda: int(_mq_send(h, p, len(p), prio, dl)), dl, 1)

    def recv_with_priority(self, timeout: Optional[float] = None) -> Tuple[bytes, int]:
        """Like ``recv``, and also return the message's priority."""
        h = self._check(self._rfd >= 0, "receive")
        prio = ffi.new("unsigned *")
        slot = self._slot
        if slot is None:
            slot = self._new_slot()
        else:
            self._slot = None
        dl = channel_deadline(timeout)
        buf = slot[0]
        n = _mq_recv(h, buf, self._bufsize, prio, dl)
        if n < 0:
            n = self._retry(n, lambda: int(_mq_recv(h, buf, self._bufsize, prio, dl)), dl, 0)
        data: bytes = slot[1][:n]
        self._slot = slot
        return data, int(prio[0])

    async def send_async(self, data: Any, priority: int = 0) -> None:
        """Send one message, awaiting room with the event loop."""
        h = self._check(self._wfd >= 0, "send")
        prio = check_int(priority, "priority", 0, PRIO_MAX - 1)
        p = readable(data)
        await self._async_call(lambda: int(_mq_send(h, p, len(p), prio, 0)), 1)

    def __repr__(self) -> str:
        return f"<MessageQueue {self.name!r}{' closed' if self._h is None else ''}>"
