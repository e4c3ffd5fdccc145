"""Messages larger than a connection's ring, sent in pieces.

A local connection's rings hold messages up to their ``max_message_size``
(a little less than the ring's 4 MiB by default).  A request or reply
larger than that (a big NumPy array, say) travels as **fragments**: each
one a ring message of its own, with a header naming the whole message (an
id unique to the sender), its total length and the fragment's offset, and
then that slice of the message.  Fragments of one message are put in
order by one thread; other threads' messages may come between them, and
several receiving threads (a server's lanes) may take them, so the
receiver places each slice by its offset and hands the message on once
every byte has arrived.  A sender that stops half-way (an ``acall``
cancelled while it waited for room) sends ``ABORT`` for the id, and the
receiver drops what it had.

The first byte of a fragment is a kind that no request or reply uses, so
the receivers' existing dispatch on the kind finds it at no cost to whole
messages.  Nothing in this module knows what a call is.
"""
from __future__ import annotations

import struct
import threading
from typing import Any, Dict, Iterator, List, Optional

__all__ = ["FRAGMENT", "ABORT", "HEADER", "fragments", "abort_message", "Reassembler"]

FRAGMENT = 0xF0  # a slice of a larger message
ABORT = 0xF1  # the sender gave up on a message: drop its slices

# kind, reserved, message id, total length, offset of this slice: 32 bytes.
HEADER = struct.Struct("<BxxxIQQQ")


def chunk_size(max_message_size: int) -> int:
    """Bytes of message per fragment: a little under half a ring's largest
    message, so that two fragments fit in the ring (a sender writes one
    while the receiver copies the one before) and an ``ABORT`` still fits
    behind them."""
    return max(1, max_message_size // 2 - 2 * HEADER.size)


def fragments(msg_id: int, data: Any, max_message_size: int) -> Iterator[List[Any]]:
    """The fragments of ``data``, in order, each as ``[header, slice]``
    (joined, or written into a reservation, by the sender)."""
    view = memoryview(data).cast("B")
    total = view.nbytes
    step = chunk_size(max_message_size)
    for off in range(0, total, step):
        yield [HEADER.pack(FRAGMENT, 0, msg_id, total, off), view[off : off + step]]


def abort_message(msg_id: int) -> bytes:
    """The message that tells the receiver to drop ``msg_id``'s slices."""
    return HEADER.pack(ABORT, 0, msg_id, 0, 0)


class _Partial:
    __slots__ = ("buf", "got")

    def __init__(self, total: int) -> None:
        self.buf = bytearray(total)
        self.got = 0


class Reassembler:
    """The receiver's half: slices in, whole messages out.  Thread-safe.

    A fragment is untrusted input like any message: one whose header does
    not add up (a slice outside its message, a total that changed, more
    bytes than the total) drops what was gathered for that id and is
    ignored.  A message that cannot be allocated (``MemoryError``) is
    dropped the same way.
    """

    def __init__(self) -> None:
        self._partial: Dict[int, _Partial] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Messages begun and not yet complete."""
        return len(self._partial)

    def feed(self, view: Any, n: int) -> Optional[bytearray]:
        """Take one fragment or abort message (``view[:n]``); return the
        whole message once its last slice arrived, else None."""
        if n < HEADER.size:
            return None
        kind, _, msg_id, total, off = HEADER.unpack_from(view)
        size = n - HEADER.size
        partial = self._partial
        with self._lock:
            part = partial.get(msg_id)
            if kind != FRAGMENT:
                partial.pop(msg_id, None)  # ABORT, or nonsense: drop it
                return None
            if part is None:
                try:
                    part = _Partial(total)
                except (MemoryError, OverflowError, ValueError):
                    return None
                partial[msg_id] = part
            if len(part.buf) != total or off + size > total:
                del partial[msg_id]
                return None
        # Copy outside the lock, so that other lanes place their slices
        # meanwhile; count the bytes only once they are in place, so the
        # thread that counts the last ones hands on a whole message.
        part.buf[off : off + size] = memoryview(view)[HEADER.size : n]
        with self._lock:
            if partial.get(msg_id) is not part:
                return None  # aborted meanwhile
            part.got += size
            if part.got < total:
                return None
            del partial[msg_id]
            return part.buf if part.got == total else None

    def clear(self) -> None:
        """Drop everything (the connection is gone)."""
        with self._lock:
            self._partial.clear()
