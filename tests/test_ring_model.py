"""RingBuffer against a collections.deque model (hypothesis stateful test)."""
from __future__ import annotations

import os
import uuid
from collections import deque

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pyipc import Empty, Full, MessageTooLarge, RingBuffer

CAPACITY = 4096  # the smallest ring, so random sizes wrap around the end all the time


def record(n: int) -> int:
    return 8 + (n + 7) // 8 * 8


class RingModel(RuleBasedStateMachine):
    """Every operation on a real ring matches the same operation on a deque."""

    def __init__(self) -> None:
        super().__init__()
        self.name = f"pyipc-test-model-{os.getpid()}-{uuid.uuid4().hex[:10]}"
        self.ring = RingBuffer(self.name, create=True, capacity=CAPACITY)
        self.model: deque[bytes] = deque()

    def used(self) -> int:
        return sum(record(len(m)) for m in self.model)

    @rule(data=st.binary(max_size=CAPACITY))
    def put(self, data: bytes) -> None:
        if len(data) > self.ring.max_message_size:
            try:
                self.ring.put_nowait(data)
            except MessageTooLarge:
                return
            raise AssertionError("oversized message accepted")
        fits = self.used() + record(len(data)) <= CAPACITY
        try:
            self.ring.put_nowait(data)
        except Full:
            assert not fits
        else:
            assert fits
            self.model.append(data)

    @rule(items=st.lists(st.binary(max_size=900), max_size=8))
    def put_many(self, items: list[bytes]) -> None:
        n = self.ring.put_many(items, block=False)
        expect = 0
        used = self.used()
        for item in items:
            if used + record(len(item)) > CAPACITY:
                break
            used += record(len(item))
            expect += 1
        assert n == expect
        self.model.extend(items[:n])

    @rule()
    def get(self) -> None:
        try:
            got = self.ring.get_nowait()
        except Empty:
            assert not self.model
        else:
            assert got == self.model.popleft()

    @rule(k=st.integers(min_value=1, max_value=10))
    def get_many(self, k: int) -> None:
        try:
            got = self.ring.get_many(k, block=False)
        except Empty:
            assert not self.model
        else:
            expect = [self.model.popleft() for _ in range(min(k, len(self.model)))]
            assert got == expect

    @precondition(lambda self: bool(self.model))
    @rule(size=st.integers(min_value=0, max_value=CAPACITY))
    def get_into(self, size: int) -> None:
        buf = bytearray(size)
        head = self.model[0]
        try:
            n = self.ring.get_into(buf, block=False)
        except MessageTooLarge:
            assert len(head) > size
        else:
            assert bytes(buf[:n]) == self.model.popleft()

    @invariant()
    def sizes_agree(self) -> None:
        assert self.ring.qsize() == len(self.model)
        assert self.ring.empty() == (not self.model)

    def teardown(self) -> None:
        try:
            assert self.ring.check() == len(self.model)
        finally:
            self.ring.unlink()
            self.ring.close()


TestRingModel = RingModel.TestCase
TestRingModel.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
TestRingModel = pytest.mark.timeout(300)(TestRingModel)
