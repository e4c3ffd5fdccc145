"""pyipc: fast, crash-safe inter-process communication for Python.

Shared memory: ``RingBuffer`` (bytes) and ``Queue`` (objects) over a
lock-protected ring in a named POSIX shared-memory segment.  Message passing:
``pipe()``, UNIX sockets and ``MessageQueue`` behind one ``Channel`` protocol.
"""
from .errors import CorruptedError, Empty, Full, IPCError, MessageTooLarge, ShutDown
from .queue import Queue
from .ring import RingBuffer

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
]
