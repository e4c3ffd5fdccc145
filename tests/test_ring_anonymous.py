"""Rings with no name: made on a sealed memfd and passed by descriptor (what pyipc.rpc uses)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from pyipc import RingBuffer

CHILD = r"""
import array, socket, sys
from pyipc import RingBuffer
sock = socket.socket(fileno=int(sys.argv[1]))
msg, anc, flags, addr = sock.recvmsg(16, socket.CMSG_SPACE(4))
fd = array.array("i", anc[0][2][:4])[0]
ring = RingBuffer._from_fd(fd)
ring.put(b"from the child: " + ring.get(timeout=10))
ring.close()
"""


@pytest.mark.timeout(60)
def test_anonymous_ring_passed_by_descriptor() -> None:
    """A ring with no name reaches another process over a UNIX socket, never appears in /dev/shm, and cannot be pickled or unlinked."""
    ring = RingBuffer._anonymous(capacity=1 << 16)
    with ring:
        assert ring.name is None and ring.path is None
        # A memfd: no name in /dev/shm or anywhere else.
        assert os.readlink(f"/proc/self/fd/{ring._share_fd()}").startswith("/memfd:pyipc-ring")
        a, b = socket.socketpair()
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(b.fileno())], pass_fds=[b.fileno()])
        b.close()
        socket.send_fds(a, [b"ring"], [ring._share_fd()])
        ring.put(b"hello")
        child.wait(30)
        assert child.returncode == 0
        # The child put its answer after taking ours (it may race us to it).
        assert ring.get(timeout=10) == b"from the child: hello"
        a.close()
        with pytest.raises(TypeError):
            import pickle

            pickle.dumps(ring)
        with pytest.raises(ValueError):
            ring.unlink()
        # The memfd is sealed: nobody can shrink it under the others.
        with pytest.raises(PermissionError):
            os.ftruncate(ring._share_fd(), 4096)


@pytest.mark.timeout(30)
def test_descriptor_of_something_else_is_refused(tmp_path) -> None:
    """A descriptor that is not a pyipc ring gives CorruptedError; a named ring has no descriptor to share."""
    from pyipc import CorruptedError

    f = tmp_path / "junk"
    f.write_bytes(b"x" * 10000)
    fd = os.open(f, os.O_RDWR)
    try:
        with pytest.raises(CorruptedError):
            RingBuffer._from_fd(fd)
    finally:
        os.close(fd)
    with RingBuffer(path=tmp_path / "named", create=True) as named:
        with pytest.raises(OSError):
            named._share_fd()
