"""pyipc: fast, crash-safe inter-process communication for Python.

Shared memory: ``RingBuffer`` (bytes) and ``Queue`` (objects) over a
lock-protected ring in a named POSIX shared-memory segment.  Message passing:
``pipe()``, UNIX sockets and ``MessageQueue`` behind one ``Channel`` protocol.
Broadcast: ``Publisher``/``Subscriber``, a topic whose every message goes to
every subscriber.
"""
try:
    from ._core import lib as _lib  # noqa: F401 - the compiled C core, which all below need
except ModuleNotFoundError as _exc:  # pragma: no cover - depends on how it was installed
    if _exc.name != __name__ + "._core":
        raise
    # A source checkout on sys.path (the current directory, say) shadows the
    # installed package, and the checkout's C core was never built.
    raise ImportError(
        f"pyipc was imported from {__path__[0]}, a source tree whose C core is not built."
        " Build it there with `pip install -e .`, or run Python from another directory"
        " to use the installed pyipc."
    ) from None
del _lib
from .errors import CorruptedError, Empty, Full, IPCError, MessageTooLarge, ShutDown
from .channel import Channel
from .mqueue import MessageQueue
from .pipe import open_fifo, pipe
from .queue import Queue
from .ring import RingBuffer
from .topic import Publisher, Subscriber
from .usock import UnixListener, socketpair, unix_connect

__version__ = "0.1.0"

__all__ = [
    "IPCError",
    "Empty",
    "Full",
    "ShutDown",
    "MessageTooLarge",
    "CorruptedError",
    "RingBuffer",
    "Queue",
    "Publisher",
    "Subscriber",
    "Channel",
    "pipe",
    "open_fifo",
    "socketpair",
    "UnixListener",
    "unix_connect",
    "MessageQueue",
]
