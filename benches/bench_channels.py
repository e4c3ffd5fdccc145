"""pyipc's channels against the same kernel primitive driven from Python
(``pytest benches/bench_channels.py --benchmark-only``).

Each group is one size and one primitive: the pyipc channel, its batched
form (``send_many``/``recv_many``, 64 per call) and the baseline, measured
in the same run with a producer in a pinned child (see conftest.py):

* ``pipe``: ``os.pipe``, ``os.writev`` of a length prefix and the payload,
  a buffered reader (``raw-pipe``);
* ``stream``: a socketpair, ``sendmsg`` of prefix and payload, a
  ``makefile("rb")`` reader (``raw-socket``);
* ``seqpacket``/``dgram``: ``socket.send``/``socket.recv(size)``;
* ``mqueue``: ``posix_ipc.MessageQueue`` (skipped if not installed);

and ``multiprocessing.Pipe`` next to the pipes.  ``pyipc bench`` prints the
ratios of the same rows in its last section.
"""
from __future__ import annotations

from typing import Any

import pytest
from conftest import cross_process, roundtrip

from pyipc._util import format_size

SIZES = [64, 4096]
GROUPS = {
    "pipe": ["pipe", "pipe-batch", "raw-pipe", "mp-pipe"],
    "stream": ["socket-stream", "socket-stream-batch", "raw-socket"],
    "seqpacket": ["socket-seqpacket", "socket-seqpacket-batch", "raw-seqpacket"],
    "dgram": ["socket-dgram", "socket-dgram-batch", "raw-dgram"],
    "mqueue": ["mqueue", "mqueue-batch", "posix-ipc"],
}
CASES = [(group, name) for group, names in GROUPS.items() for name in names]


@pytest.mark.parametrize("size", SIZES, ids=format_size)
@pytest.mark.parametrize("group,name", CASES, ids=[name for _, name in CASES])
def test_channel_throughput(benchmark: Any, pinned: None, group: str, name: str,
                            size: int) -> None:
    """Receive a round of messages from a producer in a pinned child process."""
    benchmark.group = f"{group}-{format_size(size)}"
    cross_process(benchmark, name, size)


@pytest.mark.parametrize("name", ["pipe", "raw-pipe", "socket-stream", "raw-socket",
                                  "socket-seqpacket", "raw-seqpacket", "mqueue", "posix-ipc"])
def test_channel_roundtrip(benchmark: Any, pinned: None, name: str) -> None:
    """One ping-pong round trip of a 64 B message with an echo server in a pinned child."""
    benchmark.group = "channel-roundtrip-64 B"
    roundtrip(benchmark, name)
