"""The exceptions of ``pyipc.rpc``.

They mix in the builtins callers already catch: ``ServerGone`` is a
``ConnectionError``, ``NoSuchMethod`` an ``AttributeError``.
"""
from __future__ import annotations

from ..errors import IPCError

__all__ = ["RemoteTraceback", "RemoteError", "NoSuchMethod", "ServerGone"]


class RemoteTraceback(Exception):
    """The server's formatted traceback, set as ``__cause__`` of a remote
    exception re-raised in the caller.  ``str()`` is the traceback text."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class RemoteError(IPCError):
    """A remote exception that could not travel as itself (it or its
    arguments do not pickle, or its type cannot be imported here).

    ``type_name`` is the remote type's qualified name, ``message`` its
    ``str()``, ``traceback`` the server's formatted traceback.
    """

    def __init__(self, type_name: str, message: str, traceback: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback = traceback

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        return (RemoteError, (self.type_name, self.message, self.traceback))


class NoSuchMethod(IPCError, AttributeError):
    """The server has no method registered under that name."""


class ServerGone(IPCError, ConnectionError):
    """The server exited, was killed or closed while the call was in flight
    (or before it was sent)."""
