"""The ring, side by side with the baselines (``pytest benches/bench_ring.py
--benchmark-only``; needs the ``bench`` extra).

Groups per size: ``local-<size>``, put then get in one process (the cost of
the calls themselves); ``throughput-<size>``, a producer in a pinned child
(see conftest.py); ``roundtrip-64 B``, ping-pong with an echo server.
"""
from __future__ import annotations

from typing import Any

import pytest
from conftest import cross_process, roundtrip

import pyipc
from pyipc._util import format_size

SIZES = [64, 4096, 65536, 1 << 20]
CROSS = ["ring", "ring-batch", "mp-queue", "mp-pipe", "faster-fifo", "zmq", "iceoryx2"]
ROUNDTRIP = ["ring", "mp-queue", "mp-pipe", "faster-fifo", "zmq", "iceoryx2"]


@pytest.mark.parametrize("size", SIZES, ids=format_size)
def test_local_put_get(benchmark: Any, size: int) -> None:
    """put then get of one message in one process."""
    benchmark.group = f"local-{format_size(size)}"
    msg = b"\x5a" * size
    with pyipc.RingBuffer(None, create=True, capacity=max(1 << 20, 4 * size)) as ring:
        try:
            put, get = ring.put, ring.get

            def one() -> None:
                put(msg)
                get()

            benchmark(one)
        finally:
            ring.unlink()


@pytest.mark.parametrize("size", [65536, 1 << 20], ids=format_size)
def test_local_put_get_into(benchmark: Any, size: int) -> None:
    """put then get_into a reused buffer, in one process."""
    benchmark.group = f"local-{format_size(size)}"
    msg = b"\x5a" * size
    buf = bytearray(size)
    with pyipc.RingBuffer(None, create=True, capacity=4 * size) as ring:
        try:
            put, get_into = ring.put, ring.get_into

            def one() -> None:
                put(msg)
                get_into(buf)

            benchmark(one)
        finally:
            ring.unlink()


@pytest.mark.parametrize("size", SIZES, ids=format_size)
@pytest.mark.parametrize("name", CROSS)
def test_cross_process(benchmark: Any, pinned: None, name: str, size: int) -> None:
    """Receive a round of messages from a producer in a pinned child process."""
    benchmark.group = f"throughput-{format_size(size)}"
    cross_process(benchmark, name, size)


@pytest.mark.parametrize("name", ROUNDTRIP)
def test_roundtrip(benchmark: Any, pinned: None, name: str) -> None:
    """One ping-pong round trip of a 64 B message with an echo server in a pinned child."""
    benchmark.group = "roundtrip-64 B"
    roundtrip(benchmark, name)
