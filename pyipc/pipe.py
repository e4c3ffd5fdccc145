"""``pipe()`` and named FIFOs: message channels over ``pipe(2)``.

Messages are framed in C (an 8-byte header, see ``csrc/internal_chan.h``),
so they keep their boundaries and may be far larger than the pipe's kernel
buffer.  Writing to a pipe whose reader is gone raises ``BrokenPipeError``;
SIGPIPE is blocked in the writing thread around the write and a pending one
consumed, so it never kills the process and the process's signal
dispositions are never changed.
"""
from __future__ import annotations

import errno
import os
from typing import Optional, Tuple

from ._core import ffi, lib
from ._util import FOREVER, channel_deadline
from .channel import PIPE, ChannelBase, _close_fds
from .errors import error_from
from .errors import RC_EINTR as _EINTR

__all__ = ["PipeChannel", "pipe", "open_fifo"]



class PipeChannel(ChannelBase):
    """One end of a pipe or FIFO (see ``pipe()`` and ``open_fifo()``)."""

    __slots__ = ()


def pipe(duplex: bool = False) -> Tuple[PipeChannel, PipeChannel]:
    """Return ``(reader, writer)`` over ``pipe(2)``, in ``os.pipe()`` order.

    With ``duplex=True`` two pipes make two ends that both send and receive
    (``fileno()`` is the descriptor each receives on).  The descriptors are
    close-on-exec and inherited across ``fork``.  Raises ``OSError`` (e.g.
    ``EMFILE``) if the pipes cannot be made.
    """
    fds = ffi.new("int[2]")
    rc = lib.pyipc_pipe_make(fds)
    if rc < 0:
        raise error_from(rc)
    r1, w1 = fds[0], fds[1]
    if not duplex:
        try:
            reader = PipeChannel(r1, -1, PIPE)
        except BaseException:
            _close_fds(w1)
            raise
        return reader, PipeChannel(-1, w1, PIPE)
    rc = lib.pyipc_pipe_make(fds)
    if rc < 0:
        _close_fds(r1, w1)
        raise error_from(rc)
    r2, w2 = fds[0], fds[1]
    try:
        a = PipeChannel(r1, w2, PIPE)
    except BaseException:
        _close_fds(r2, w1)
        raise
    return a, PipeChannel(r2, w1, PIPE)


def _fifo_path(path: "str | os.PathLike[str]") -> bytes:
    p = os.fsencode(path)
    if not p:
        raise ValueError("FIFO path must not be empty")
    if b"\0" in p:
        raise ValueError(f"FIFO path must not contain NUL characters: {path!r}")
    return p


def open_fifo(
    path: "str | os.PathLike[str]",
    direction: str,
    *,
    create: bool = False,
    mode: int = 0o600,
    timeout: Optional[float] = None,
) -> PipeChannel:
    """Open one end of a named FIFO, for unrelated processes.

    ``direction`` is ``"r"`` (receive) or ``"w"`` (send).  ``create=True``
    first makes the FIFO with permission bits exactly ``mode`` (an existing
    FIFO is fine; the caller removes it with ``os.unlink`` when done).  The
    reader opens at once; its ``recv`` waits for a writer and raises
    ``EOFError`` once a writer has come and gone.  The writer waits up to
    ``timeout`` for a reader (``TimeoutError``).

    Raises ``ValueError`` for a bad path or direction, ``FileNotFoundError``
    if it does not exist, ``OSError(EINVAL)`` if the path is not a FIFO.
    """
    if direction not in ("r", "w"):
        raise ValueError("direction must be 'r' or 'w'")
    p = _fifo_path(path)
    for_write = direction == "w"
    dl = FOREVER if timeout is None else channel_deadline(timeout)
    if create:
        rc = lib.pyipc_fifo_make(p, mode)
        if rc < 0 and rc != -errno.EEXIST:  # an existing FIFO is fine
            raise error_from(rc, os.fsdecode(p))
    fd = ffi.new("int *")
    rc = lib.pyipc_fifo_open(p, for_write, dl, fd)
    while rc == _EINTR:  # a slice ended: Python runs signal handlers
        rc = lib.pyipc_fifo_open(p, for_write, dl, fd)
    if rc < 0:
        if rc == -errno.EAGAIN:  # timeout=0 and no reader
            rc = -errno.ETIMEDOUT
        raise error_from(rc, os.fsdecode(p))
    if for_write:
        return PipeChannel(-1, fd[0], PIPE, os.fsdecode(p))
    return PipeChannel(fd[0], -1, PIPE, os.fsdecode(p))
