"""Object queues: ``pyipc.Queue`` against ``multiprocessing.Queue`` and
``faster_fifo.Queue`` (``pytest benches/bench_queue.py --benchmark-only``).

A producer in a pinned child (see conftest.py) puts Python objects (a tuple
of five ints) or bytes; this process gets them.  Each group compares the
three in the same run; faster_fifo is skipped if it is not installed.
"""
from __future__ import annotations

from typing import Any

import pytest
from conftest import cross_process

from pyipc._util import format_size

OBJECTS = ["queue-obj", "mp-queue-obj", "faster-fifo-obj"]
BYTES = ["queue", "mp-queue", "faster-fifo"]


@pytest.mark.parametrize("name", OBJECTS)
def test_objects(benchmark: Any, pinned: None, name: str) -> None:
    """Get a round of tuples of five ints from a producer in a pinned child."""
    benchmark.group = "objects"
    cross_process(benchmark, name, 64)


@pytest.mark.parametrize("size", [64, 1 << 20], ids=format_size)
@pytest.mark.parametrize("name", BYTES)
def test_bytes(benchmark: Any, pinned: None, name: str, size: int) -> None:
    """Get a round of bytes objects from a producer in a pinned child."""
    benchmark.group = f"queue-bytes-{format_size(size)}"
    cross_process(benchmark, name, size)
