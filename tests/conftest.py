"""Fixtures shared by the test suite: unique names, removed even on failure."""
from __future__ import annotations

import os
import uuid
from typing import Callable, Iterator

import pytest


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
