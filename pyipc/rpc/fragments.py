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
    __slots__ = ("buf", "claimed", "done", "pieces")

    def __init__(self, total: int, pieces: int) -> None:
        self.buf = bytearray(total)
        self.claimed = bytearray(pieces)  # 1 once a thread took piece i to copy
        self.done = 0  # pieces copied in
        self.pieces = pieces


class Reassembler:
    """The receiver's half: slices in, whole messages out.  Thread-safe.

    ``max_message_size`` is the ring's, the sender's too, so the receiver
    knows where every piece of a message must start and how long it is.  A
    fragment is untrusted input like any message: one that is not where a
    piece must be, has the wrong length, comes twice, or names another total
    drops what was gathered for that id and is ignored; so is a piece of a
    message that was aborted or completed (the last ``_ENDED_KEPT`` ids are
    remembered), and a message that cannot be allocated (``MemoryError``).
    """

    _ENDED_KEPT = 1024

    def __init__(self, max_message_size: int) -> None:
        self._chunk = chunk_size(max_message_size)
        self._partial: Dict[int, _Partial] = {}
        self._ended: Dict[int, None] = {}  # insertion-ordered, bounded
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Messages begun and not yet complete."""
        return len(self._partial)

    def _drop(self, msg_id: int) -> None:
        # Lock held.  A piece of it still in flight is ignored from now on.
        self._partial.pop(msg_id, None)
        self._ended[msg_id] = None
        if len(self._ended) > self._ENDED_KEPT:
            del self._ended[next(iter(self._ended))]

    def feed(self, view: Any, n: int) -> Optional[bytearray]:
        """Take one fragment or abort message (``view[:n]``); return the
        whole message once its last piece arrived, else None."""
        if n < HEADER.size:
            return None
        kind, _, msg_id, total, off = HEADER.unpack_from(view)
        size, chunk = n - HEADER.size, self._chunk
        pieces = -(-total // chunk)
        index = off // chunk
        with self._lock:
            if msg_id in self._ended:
                return None
            part = self._partial.get(msg_id)
            if kind != FRAGMENT or total == 0 or off % chunk or off >= total or \
                    size != min(chunk, total - off) or (part is not None and len(part.buf) != total):
                self._drop(msg_id)  # ABORT, or a piece that does not fit
                return None
        if part is None:
            try:
                fresh = _Partial(total, pieces)  # outside the lock: it zero-fills
            except (MemoryError, OverflowError, ValueError):
                with self._lock:
                    self._drop(msg_id)
                return None
            with self._lock:
                part = self._partial.setdefault(msg_id, fresh)
                if msg_id in self._ended or len(part.buf) != total:
                    self._drop(msg_id)
                    return None
        with self._lock:
            if self._partial.get(msg_id) is not part or part.claimed[index]:
                self._drop(msg_id)  # dropped meanwhile, or a piece that came twice
                return None
            part.claimed[index] = 1
        # Copy outside the lock, so that other lanes place their pieces
        # meanwhile; count a piece only once it is in place, so the thread
        # that counts the last one hands on a whole message.
        part.buf[off : off + size] = memoryview(view)[HEADER.size : n]
        with self._lock:
            if self._partial.get(msg_id) is not part:
                return None  # aborted meanwhile
            part.done += 1
            if part.done < part.pieces:
                return None
            del self._partial[msg_id]
            self._drop(msg_id)  # ended: a piece that comes again is ignored
            return part.buf

    def clear(self) -> None:
        """Drop everything (the connection is gone)."""
        with self._lock:
            self._partial.clear()
            self._ended.clear()
