"""Small helpers shared by the Python layer: names, deadlines, argument checks."""
from __future__ import annotations

import math
import operator
import time
from typing import Any, Optional

# Deadlines cross into C as absolute CLOCK_MONOTONIC nanoseconds (the clock
# behind time.monotonic_ns on Linux).  Two values are special:
NOWAIT = 0  # never wait: fail with EAGAIN at once
FOREVER = -1  # no deadline (C still returns every slice so Ctrl-C works)

MAX_NAME_LEN = 200

# A timeout this long (about 146 years) or longer, infinity included, is
# "wait for ever": its deadline would not fit the C side's int64 anyway.
_FOREVER_NS = 1 << 62


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


def format_size(size: int) -> str:
    """``65536`` -> ``"64 KiB"``; sizes that are not whole KiB stay in bytes."""
    if size >= 1 << 20 and size % (1 << 20) == 0:
        return f"{size >> 20} MiB"
    if size >= 1024 and size % 1024 == 0:
        return f"{size >> 10} KiB"
    return f"{size} B"


def check_int(value: Any, what: str, lo: int, hi: Optional[int] = None) -> int:
    """Return ``value`` as an int if ``lo <= value <= hi`` (no upper bound
    when ``hi`` is None).

    Raises ``TypeError`` for anything that is not an integer (a float, a
    str) and ``ValueError`` for an integer out of range, however large: the
    checks happen here, before C could raise ``OverflowError``.
    """
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, not {type(value).__name__}") from None
    if v < lo or (hi is not None and v > hi):
        bounds = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
        raise ValueError(f"{what} must be {bounds}, not {v}")
    return v


def check_mode(mode: Any) -> int:
    """Permission bits for a file, queue or segment pyipc creates: an int
    from 0 to 0o7777, applied exactly.  ``TypeError`` / ``ValueError``
    otherwise."""
    try:
        return check_int(mode, "mode", 0, 0o7777)
    except ValueError:
        raise ValueError(f"mode must be permission bits (0 to 0o7777), not {mode!r}") from None


def timeout_ns(timeout: Any) -> Optional[int]:
    """A non-negative timeout in seconds as nanoseconds; None for one so long
    (``float("inf")`` included) that it means "wait for ever".

    Raises ``ValueError`` for a negative timeout or NaN, ``TypeError`` for
    something that is not a number.
    """
    try:
        if timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        seconds = float(timeout)
    except TypeError:
        raise TypeError(f"'timeout' must be a number, not {type(timeout).__name__}") from None
    if math.isnan(seconds):
        raise ValueError("'timeout' must be a number, not NaN")
    if seconds * 1e9 >= _FOREVER_NS:
        return None
    return int(seconds * 1e9)


def deadline(block: bool, timeout: Optional[float]) -> int:
    """Turn ``queue``-style ``block``/``timeout`` into a C deadline."""
    if not block:
        return NOWAIT
    if timeout is None:
        return FOREVER
    ns = timeout_ns(timeout)
    if ns is None:
        return FOREVER
    # max(1, ...) so that timeout=0 means "now", not NOWAIT's special value.
    return max(1, time.monotonic_ns() + ns)


def channel_deadline(timeout: Optional[float]) -> int:
    """Turn a ``socket``-style timeout (None: forever, 0: never wait)."""
    if timeout is None:
        return FOREVER
    ns = timeout_ns(timeout)
    if ns is None:
        return FOREVER
    if ns == 0:
        return NOWAIT
    return time.monotonic_ns() + ns
