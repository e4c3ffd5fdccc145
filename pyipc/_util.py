"""Small helpers shared by the Python layer: names and deadlines."""
from __future__ import annotations

import time
from typing import Optional

# Deadlines cross into C as absolute CLOCK_MONOTONIC nanoseconds (the clock
# behind time.monotonic_ns on Linux).  Two values are special:
NOWAIT = 0  # never wait: fail with EAGAIN at once
FOREVER = -1  # no deadline (C still returns every slice so Ctrl-C works)

MAX_NAME_LEN = 200


def shm_name(name: str, what: str = "name") -> str:
    """Validate a POSIX IPC object name and return it without the leading '/'.

    As in ``multiprocessing.shared_memory``, the leading '/' is optional; any
    other '/' (or a NUL, or an empty name, or one over 200 characters) is a
    ``ValueError`` raised before any system call.
    """
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, not {type(name).__name__}")
    bare = name[1:] if name.startswith("/") else name
    if not bare:
        raise ValueError(f"{what} must not be empty")
    if "/" in bare:
        raise ValueError(f"{what} may contain '/' only as its first character: {name!r}")
    if "\0" in bare:
        raise ValueError(f"{what} must not contain NUL characters: {name!r}")
    if len(bare) > MAX_NAME_LEN:
        raise ValueError(f"{what} is longer than {MAX_NAME_LEN} characters")
    if bare in (".", ".."):
        raise ValueError(f"{what} must not be {bare!r}")
    return bare


def deadline(block: bool, timeout: Optional[float]) -> int:
    """Turn ``queue``-style ``block``/``timeout`` into a C deadline."""
    if not block:
        return NOWAIT
    if timeout is None:
        return FOREVER
    if timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")
    # max(1, ...) so that timeout=0 means "now", not NOWAIT's special value.
    return max(1, time.monotonic_ns() + int(timeout * 1e9))


def channel_deadline(timeout: Optional[float]) -> int:
    """Turn a ``socket``-style timeout (None: forever, 0: never wait)."""
    if timeout is None:
        return FOREVER
    if timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")
    if timeout == 0:
        return NOWAIT
    return time.monotonic_ns() + int(timeout * 1e9)
