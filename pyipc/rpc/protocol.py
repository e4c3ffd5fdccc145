"""The RPC wire format, independent of any transport.

A transport moves opaque messages (a shared-memory ring here, ZeroMQ
frames for ``tcp://`` later); this module says what is in them.  Three
kinds of message, each a fixed little-endian header and a body:

* a **request** (client to server): kind, id, deadline, then the pickle of
  ``(method, args, kwargs)``;
* a **reply** (server to client): kind, id, then the pickle of a result, an
  error, or a stream item;
* a **control** message (client to server, out of band of the requests so
  that it overtakes queued calls): cancel a call or close a stream, grant a
  stream more items.

Bodies are pickle protocol 5.  Buffers of ``OOB_MIN`` bytes or more (NumPy
arrays, large ``bytes``) travel out of band: the header then counts them
and the message is laid out as

    header | pickle length | buffer lengths | pad | pickle | pad | buffer ...

with every part 16-byte aligned, so the receiver unpickles arrays over
writable copies of the buffers made straight from the message (one copy;
in-band they would cost the pickler's growing output and the unpickler's
copy again).

Deadlines are absolute ``CLOCK_MONOTONIC`` nanoseconds (``time.monotonic_ns``),
0 for none: every process on one host shares that clock, so a deadline
keeps counting while the call waits in the server's queue.  A transport
between hosts must translate them (see ``Codec.clock_offset``).
"""
from __future__ import annotations

import pickle
import struct
import traceback
from typing import Any, List, Optional, Tuple

from .errors import RemoteError, RemoteTraceback

__all__ = [
    "CALL",
    "NOTIFY",
    "RESULT",
    "ERROR",
    "STREAM",
    "ITEM",
    "END",
    "CANCEL",
    "CREDIT",
    "BYE",
    "encode_request",
    "decode_request_header",
    "decode_body",
    "encode_reply",
    "encode_error",
    "decode_reply_header",
    "decode_error",
    "encode_control",
    "decode_control",
    "REQUEST_HEADER",
    "REPLY_HEADER",
]

PROTOCOL = 5

# Request kinds.
CALL = 1  # run it, reply with RESULT, ERROR or STREAM
NOTIFY = 2  # run it, reply with nothing

# Reply kinds.
RESULT = 1  # body: the result
ERROR = 2  # body: see encode_error
STREAM = 3  # the call returned a generator; ITEMs follow, then END or ERROR
ITEM = 4  # body: one item of a stream
END = 5  # the stream is exhausted (no body)

# Control kinds.
CANCEL = 1  # drop the call if it has not started; cancel a coroutine; close a stream
CREDIT = 2  # the client consumed `n` items of stream `id`: the server may make more
BYE = 3  # the client is closing: run what it sent (notifications), then drop it

# kind, flags (reserved), nbufs, id, deadline: 24 bytes.
REQUEST_HEADER = struct.Struct("<BBxxIQq")
# kind, flags (reserved), nbufs, id: 16 bytes.
REPLY_HEADER = struct.Struct("<BBxxIQ")
# kind, n, id: 16 bytes.
CONTROL = struct.Struct("<BxxxIQ")

OOB_MIN = 64 * 1024  # buffers this large travel out of band
_ALIGN = 16
_ZEROS = bytes(_ALIGN)
_U64 = struct.Struct("<Q")

_dumps = pickle.dumps
_loads = pickle.loads


class _HasLargeBuffer(Exception):
    """Raised by the first pickling's buffer_callback: switch to framing."""


def _in_band(pb: pickle.PickleBuffer) -> bool:
    # Small buffers stay in the pickle; a large one aborts the pickling
    # before it is copied into the output.
    if pb.raw().nbytes >= OOB_MIN:
        raise _HasLargeBuffer
    return True


def _pickle(obj: Any) -> Tuple[bytes, List[memoryview]]:
    """Pickle ``obj``; return the pickle and its out-of-band buffers."""
    try:
        return _dumps(obj, PROTOCOL, buffer_callback=_in_band), []
    except _HasLargeBuffer:
        pass
    bufs: List[memoryview] = []

    def collect(pb: pickle.PickleBuffer) -> bool:
        raw = pb.raw()
        if raw.nbytes < OOB_MIN:
            return True
        bufs.append(raw)
        return False

    return _dumps(obj, PROTOCOL, buffer_callback=collect), bufs


def _framed(head: bytes, pickled: bytes, bufs: List[memoryview]) -> bytes:
    """Join a header, the pickle and its buffers (see the module docstring)."""
    lens = [m.nbytes for m in bufs]
    parts: List[Any] = [head, _U64.pack(len(pickled)), struct.pack(f"<{len(lens)}Q", *lens)]
    off = len(head) + 8 + 8 * len(lens)
    for part, size in [(pickled, len(pickled)), *zip(bufs, lens)]:
        pad = -off % _ALIGN
        parts.append(_ZEROS[:pad])
        parts.append(part)
        off += pad + size
    return b"".join(parts)


def decode_body(view: memoryview, start: int, end: int, nbufs: int, owned: bool = False) -> Any:
    """Unpickle the body of a message held in ``view[start:end]``.

    ``view`` may be a reused receive buffer: everything returned is copied
    out of it (out-of-band buffers into bytearrays of their own, so arrays
    made over them are writable).  ``owned``: ``view`` is a writable buffer
    of this message alone (one put together from fragments), and the
    out-of-band buffers are views of it instead of copies.  Raises
    ``pickle.UnpicklingError`` (or whatever unpickling raises) for a
    malformed body.
    """
    if nbufs == 0:
        return _loads(view[start:end])
    if end - start < 8 + 8 * nbufs:
        raise pickle.UnpicklingError("truncated out-of-band message")
    (plen,) = _U64.unpack_from(view, start)
    lens = struct.unpack_from(f"<{nbufs}Q", view, start + 8)
    off = start + 8 + 8 * nbufs
    off += -off % _ALIGN
    pstart = off
    off += plen
    buffers = []
    for n in lens:
        off += -off % _ALIGN
        if off + n > end:
            raise pickle.UnpicklingError("truncated out-of-band message")
        buffers.append(view[off : off + n] if owned else bytearray(view[off : off + n]))
        off += n
    if pstart + plen > end:
        raise pickle.UnpicklingError("truncated out-of-band message")
    return _loads(view[pstart : pstart + plen], buffers=buffers)


# ---- requests ----------------------------------------------------------------


def encode_request(kind: int, rid: int, deadline: int, method: str, args: Any, kwargs: Any) -> bytes:
    """One request message.  Raises what pickling raises for arguments that
    do not pickle, before anything is sent."""
    try:
        # The common case: small arguments, one pickle, one header.
        return REQUEST_HEADER.pack(kind, 0, 0, rid, deadline) + _dumps(
            (method, args, kwargs), PROTOCOL, buffer_callback=_in_band
        )
    except _HasLargeBuffer:
        pass
    pickled, bufs = _pickle((method, args, kwargs))
    return _framed(REQUEST_HEADER.pack(kind, 0, len(bufs), rid, deadline), pickled, bufs)


def decode_request_header(view: memoryview, n: int) -> Tuple[int, int, int, int, int]:
    """``(kind, flags, nbufs, id, deadline)`` of a request of ``n`` bytes;
    ``ValueError`` if it is too short to be one."""
    if n < REQUEST_HEADER.size:
        raise ValueError(f"a request of {n} bytes is shorter than its header")
    kind, flags, nbufs, rid, deadline = REQUEST_HEADER.unpack_from(view)
    return kind, flags, nbufs, rid, deadline


# ---- replies -----------------------------------------------------------------


def encode_reply(kind: int, rid: int, value: Any = None) -> bytes:
    """A RESULT, STREAM, ITEM or END reply.  Raises what pickling raises."""
    try:
        return REPLY_HEADER.pack(kind, 0, 0, rid) + _dumps(value, PROTOCOL, buffer_callback=_in_band)
    except _HasLargeBuffer:
        pass
    pickled, bufs = _pickle(value)
    return _framed(REPLY_HEADER.pack(kind, 0, len(bufs), rid), pickled, bufs)


def _qualname(tp: type) -> str:
    mod = getattr(tp, "__module__", None)
    name = getattr(tp, "__qualname__", tp.__name__)
    return name if mod in (None, "builtins") else f"{mod}.{name}"


def encode_error(rid: int, exc: BaseException) -> bytes:
    """An ERROR reply for ``exc``, carrying its formatted traceback.

    The body is ``(exc, traceback_text)`` when the exception pickles and
    unpickles here (a fair guess that it will in the client), else
    ``(None, (type name, message, traceback_text))``, which the client
    raises as ``RemoteError``.
    """
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        data = _dumps((exc, tb), PROTOCOL)
        _loads(data)  # an exception whose __init__ cannot take its args fails here
        return REPLY_HEADER.pack(ERROR, 0, 0, rid) + data
    except Exception:
        pass
    try:
        message = str(exc)
    except Exception:
        message = "<str() failed>"
    body = (None, (_qualname(type(exc)), message, tb))
    return REPLY_HEADER.pack(ERROR, 0, 0, rid) + _dumps(body, PROTOCOL)


def decode_reply_header(view: memoryview, n: int) -> Tuple[int, int, int, int]:
    """``(kind, flags, nbufs, id)`` of a reply of ``n`` bytes; ``ValueError``
    if it is too short to be one."""
    if n < REPLY_HEADER.size:
        raise ValueError(f"a reply of {n} bytes is shorter than its header")
    kind, flags, nbufs, rid = REPLY_HEADER.unpack_from(view)
    return kind, flags, nbufs, rid


def decode_error(body: Any) -> BaseException:
    """The exception to raise in the caller for an ERROR reply's body, with
    a ``RemoteTraceback`` as its ``__cause__``."""
    try:
        exc, tb = body
        if exc is None:
            type_name, message, tb = tb
            err: BaseException = RemoteError(str(type_name), str(message), str(tb))
        elif isinstance(exc, BaseException):
            err = exc
        else:
            raise TypeError("not an exception")
    except (TypeError, ValueError):
        return RemoteError("<unknown>", f"malformed error reply: {body!r:.200}", "")
    err.__cause__ = RemoteTraceback(str(tb))
    return err


def unpicklable_error(exc: BaseException, what: str) -> RemoteError:
    """The ``RemoteError`` for a reply body that failed to unpickle here."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return RemoteError(_qualname(type(exc)), f"cannot unpickle the {what}: {exc}", tb)


# ---- control -----------------------------------------------------------------


def encode_control(kind: int, rid: int, n: int = 0) -> bytes:
    """A CANCEL or CREDIT message."""
    return CONTROL.pack(kind, n, rid)


def decode_control(data: bytes) -> Optional[Tuple[int, int, int]]:
    """``(kind, id, n)``, or None for a message that is not a control one."""
    if len(data) != CONTROL.size:
        return None
    kind, n, rid = CONTROL.unpack(data)
    return kind, rid, n
