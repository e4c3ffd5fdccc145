"""pyipc's exceptions, and the one helper that turns a C return code into one.

The hierarchy is deliberately tiny and mixes in the builtins that callers of
``queue`` and ``socket`` already catch: ``pyipc.Empty`` *is* a
``queue.Empty``, ``MessageTooLarge`` *is* a ``ValueError``.
"""
from __future__ import annotations

import errno
import os
import queue
from typing import Dict, Optional, Type

__all__ = [
    "IPCError",
    "Empty",
    "Full",
    "ShutDown",
    "MessageTooLarge",
    "CorruptedError",
    "error_from",
]


class IPCError(Exception):
    """Base class of pyipc's own errors."""


class Empty(IPCError, queue.Empty):
    """A non-blocking get found nothing, or a get's timeout expired."""


class Full(IPCError, queue.Full):
    """A non-blocking put found no room, or a put's timeout expired."""


# queue.ShutDown exists from Python 3.13; mix it in where it does.
_shutdown_bases: tuple[type, ...] = (IPCError,)
if hasattr(queue, "ShutDown"):
    _shutdown_bases += (queue.ShutDown,)  # pragma: no cover - depends on Python


class ShutDown(*_shutdown_bases):  # type: ignore[misc]
    """The ring was shut down: no more puts, and gets once it is drained."""


class MessageTooLarge(IPCError, ValueError):
    """A message can never fit, or a receive buffer is too small for it."""


class CorruptedError(IPCError):
    """A segment is not a valid pyipc ring (bad magic, version or header)."""


# The C core returns -errno; these are the codes the Python layer tests for,
# bound once so hot paths compare against module globals.
RC_EINTR = -errno.EINTR
RC_EAGAIN = -errno.EAGAIN
RC_ETIMEDOUT = -errno.ETIMEDOUT
RC_EMSGSIZE = -errno.EMSGSIZE
RC_EBADF = -errno.EBADF
RC_EBUSY = -errno.EBUSY
RC_EPIPE = -errno.EPIPE
RC_ECONNRESET = -errno.ECONNRESET
RC_EBADMSG = -errno.EBADMSG
RC_ESHUTDOWN = -errno.ESHUTDOWN
RC_ENOTRECOVERABLE = -errno.ENOTRECOVERABLE
RC_EEXIST = -errno.EEXIST

# C return codes with a meaning of pyipc's own; everything else is an OSError.
_SPECIAL: Dict[int, Type[Exception]] = {
    errno.EMSGSIZE: MessageTooLarge,
    errno.EBADMSG: CorruptedError,
    errno.ESHUTDOWN: ShutDown,
}


def error_from(rc: int, name: Optional[str] = None) -> Exception:
    """Return the exception for a negative C return code ``rc``.

    ``OSError(errno, strerror, name)`` already picks the right builtin
    subclass (``FileExistsError``, ``TimeoutError``, ``BrokenPipeError`` ...).
    The caller raises it, so tracebacks point at the call site.
    """
    code = -rc
    special = _SPECIAL.get(code)
    if special is not None:
        text = os.strerror(code)
        return special(f"{text}: {name!r}" if name else text)
    if name is None:
        return OSError(code, os.strerror(code))
    return OSError(code, os.strerror(code), name)
