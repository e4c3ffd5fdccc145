"""Fixtures shared by the test suite: unique names, removed even on failure."""
from __future__ import annotations

import os
import uuid
from typing import Callable, Iterator, List

import pytest

# The quick subset (pytest -m quick): what .ci/run runs again on every other
# Python the package claims, where what differs is the build, the syntax and
# typing the package may use, and the standard library (pickling,
# multiprocessing, asyncio, queue).  Kept to about a minute: these modules
# whole, plus the tests marked @pytest.mark.quick where they are; the C
# programs, the crash and corruption stress and the benchmark runs, which
# do not depend on the Python version, are not in it.
QUICK_MODULES = {
    "test_typing.py",
    "test_ring.py",
    "test_ring_model.py",
    "test_queue.py",
    "test_queue_mp.py",
    "test_examples.py",
    "test_channel_common.py",
    "test_channel_pipe.py",
    "test_channel_usock.py",
    "test_channel_mq.py",
}


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    for item in items:
        if item.path.name in QUICK_MODULES and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.quick)


@pytest.fixture
def shm_name() -> Iterator[Callable[[], str]]:
    """Make unique shared-memory names and unlink every one after the test."""
    made: list[str] = []

    def make() -> str:
        name = f"pyipc-test-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        made.append(name)
        return name

    yield make
    for name in made:
        try:
            os.unlink(f"/dev/shm/{name}")
        except FileNotFoundError:
            pass
