"""pyipc: fast, crash-safe inter-process communication for Python.

Shared memory: ``RingBuffer`` (bytes) and ``Queue`` (objects) over a
lock-protected ring in a named POSIX shared-memory segment.  Message passing:
``pipe()``, UNIX sockets and ``MessageQueue`` behind one ``Channel`` protocol.
Broadcast: ``Publisher``/``Subscriber``, a topic whose every message goes to
every subscriber.
"""
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
