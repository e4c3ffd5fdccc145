"""``pyipc.rpc``: remote procedure calls between processes.

A ``Server`` exposes functions at an address (a name in a per-user
directory, or an absolute path); ``connect(address)`` returns a ``Client``
whose ``call``, ``proxy``, ``submit``, ``acall`` and ``notify`` run them.
Connections are made over a UNIX socket (peer credentials checked); calls
travel through two shared-memory rings per client.

``tcp://host:port`` addresses (the ``net`` extra) carry the same calls
between hosts over ZeroMQ, encrypted and authenticated with CurveZMQ keys
(``secret_key=``/``allowed_keys=`` on the server, ``server_key=``/
``secret_key=`` on the client; ``pyipc keygen NAME`` makes them).

    server = pyipc.rpc.Server("calc")

    @server.register
    def add(a, b):
        return a + b

    server.start()
    with pyipc.rpc.connect("calc") as client:
        assert client.call("add", 1, 2) == 3
        assert client.proxy.add(1, b=2) == 3
"""
from .client import Client, RemoteIterator, connect
from .errors import NoSuchMethod, RemoteError, RemoteTraceback, ServerGone
from .server import Server

__all__ = [
    "Server",
    "Client",
    "connect",
    "RemoteIterator",
    "RemoteError",
    "RemoteTraceback",
    "NoSuchMethod",
    "ServerGone",
]
