"""``pipe()`` and named FIFOs: message channels over ``pipe(2)``.

Messages are framed in C (an 8-byte header, see ``csrc/stream.c``),
so they keep their boundaries and may be far larger than the pipe's kernel
buffer.  Writing to a pipe whose reader is gone raises ``BrokenPipeError``;
SIGPIPE is blocked in the writing thread around the write and a pending one
consumed, so it never kills the process and the process's signal
dispositions are never changed.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

from ._core import ffi, lib
from ._util import channel_deadline, check_mode
from .channel import ChannelBase, new_handle
from .errors import RC_EEXIST, error_from

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
    other = ffi.new("pyipc_chan **")
    first = new_handle(lambda out: lib.pyipc_pipe_open(int(bool(duplex)), out, other))
    second = ffi.gc(other[0], lib.pyipc_chan_free)
    return PipeChannel(first), PipeChannel(second)


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
    first makes the FIFO with permission bits exactly ``mode`` (0 to
    0o7777; an existing FIFO is fine; the caller removes it with
    ``os.unlink`` when done).  The reader opens at once; its ``recv`` waits
    for a writer and raises ``EOFError`` once a writer has come and gone.
    The writer waits up to ``timeout`` for a reader (``TimeoutError``).

    Raises ``ValueError`` for a bad path, direction or mode,
    ``FileNotFoundError`` if it does not exist, ``OSError(EINVAL)`` if the
    path is not a FIFO.
    """
    if direction not in ("r", "w"):
        raise ValueError("direction must be 'r' or 'w'")
    p = _fifo_path(path)
    bits = check_mode(mode)
    for_write = int(direction == "w")
    dl = channel_deadline(timeout)
    name = os.fsdecode(p)
    if create:
        rc = lib.pyipc_fifo_make(p, bits)
        if rc < 0 and rc != RC_EEXIST:  # an existing FIFO is fine
            raise error_from(rc, name)
    h = new_handle(lambda out: lib.pyipc_fifo_open(p, for_write, dl, out), name)
    return PipeChannel(h, name)
