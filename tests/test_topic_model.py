"""Topics against a model: a deque per subscriber (hypothesis stateful test).

The model keeps every message that is still in the ring (the longest run of
the newest records whose sizes fit the capacity), and a deque per
subscriber of what it has yet to read.  A "block" topic refuses a publish
that would overwrite what the slowest subscriber has not read; an
"overwrite" topic takes it and the subscribers that lose messages count
them as missed.
"""
from __future__ import annotations

import os
import uuid
from collections import deque
from typing import Deque, Dict, List

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pyipc import Empty, Full, IPCError, MessageTooLarge, Publisher, Subscriber

CAPACITY = 4096
MAX_SUBS = 3


def record(n: int) -> int:
    return 16 + (n + 7) // 8 * 8


class TopicModel(RuleBasedStateMachine):
    """Every operation on a real topic matches the same operation on the model."""

    def __init__(self) -> None:
        super().__init__()
        self.name = f"pyipc-test-tmodel-{os.getpid()}-{uuid.uuid4().hex[:10]}"
        self.pub: Publisher
        self.overwrite = False
        self.retained: Deque[bytes] = deque()  # what the ring still holds, oldest first
        self.subs: Dict[int, Subscriber] = {}
        self.model: Dict[int, Deque[bytes]] = {}
        self.missed: Dict[int, int] = {}
        self.next_id = 0

    @initialize(overwrite=st.booleans())
    def make(self, overwrite: bool) -> None:
        self.overwrite = overwrite
        self.pub = Publisher(self.name, create=True, capacity=CAPACITY, max_subscribers=MAX_SUBS,
                             overflow="overwrite" if overwrite else "block")

    def used_by(self, i: int) -> int:
        return sum(record(len(m)) for m in self.model[i])

    def fits(self, data: bytes) -> bool:
        if self.overwrite:
            return True
        return all(self.used_by(i) + record(len(data)) <= CAPACITY for i in self.model)

    def published(self, data: bytes) -> None:
        self.retained.append(data)
        while sum(record(len(m)) for m in self.retained) > CAPACITY:
            self.retained.popleft()
        for i, q in self.model.items():
            q.append(data)
            while len(q) > len(self.retained):
                q.popleft()
                self.missed[i] += 1

    @rule(data=st.binary(max_size=1500))
    def publish(self, data: bytes) -> None:
        try:
            self.pub.publish(data, block=False)
        except Full:
            assert not self.fits(data)
        else:
            assert self.fits(data)
            self.published(data)

    @rule(items=st.lists(st.binary(max_size=600), max_size=6))
    def publish_many(self, items: List[bytes]) -> None:
        n = self.pub.publish_many(items, block=False)
        expect = 0
        for item in items:
            if not self.fits(item):
                break
            self.published(item)
            expect += 1
        assert n == expect

    @rule()
    def publish_too_large(self) -> None:
        with pytest.raises(MessageTooLarge):
            self.pub.publish(b"x" * (CAPACITY - 15), block=False)

    @rule(oldest=st.booleans())
    def subscribe(self, oldest: bool) -> None:
        try:
            s = Subscriber(self.name, start="oldest" if oldest else "next")
        except IPCError:
            assert len(self.subs) == MAX_SUBS
            return
        assert len(self.subs) < MAX_SUBS
        i = self.next_id
        self.next_id += 1
        self.subs[i] = s
        self.model[i] = deque(self.retained) if oldest else deque()
        self.missed[i] = 0

    @precondition(lambda self: bool(self.subs))
    @rule(data=st.data())
    def unsubscribe(self, data: st.DataObject) -> None:
        i = data.draw(st.sampled_from(sorted(self.subs)))
        self.subs.pop(i).close()
        del self.model[i], self.missed[i]

    @precondition(lambda self: bool(self.subs))
    @rule(data=st.data())
    def recv(self, data: st.DataObject) -> None:
        i = data.draw(st.sampled_from(sorted(self.subs)))
        try:
            got = self.subs[i].recv(block=False)
        except Empty:
            assert not self.model[i]
        else:
            assert got == self.model[i].popleft()

    @precondition(lambda self: bool(self.subs))
    @rule(data=st.data(), k=st.integers(min_value=1, max_value=8))
    def recv_many(self, data: st.DataObject, k: int) -> None:
        i = data.draw(st.sampled_from(sorted(self.subs)))
        q = self.model[i]
        try:
            got = self.subs[i].recv_many(k, block=False)
        except Empty:
            assert not q
        else:
            assert got == [q.popleft() for _ in range(min(k, len(q)))]

    @precondition(lambda self: bool(self.subs))
    @rule(data=st.data())
    def view(self, data: st.DataObject) -> None:
        i = data.draw(st.sampled_from(sorted(self.subs)))
        try:
            with self.subs[i].view(block=False) as v:
                assert bytes(v) == self.model[i][0]
        except Empty:
            assert not self.model[i]
        else:
            self.model[i].popleft()

    @invariant()
    def counts_agree(self) -> None:
        if not hasattr(self, "pub"):
            return
        for i, s in self.subs.items():
            assert s.pending == len(self.model[i])
            assert s.missed == self.missed[i]
        assert self.pub.subscribers == len(self.subs)

    def teardown(self) -> None:
        try:
            for s in self.subs.values():
                s.close()
            if hasattr(self, "pub"):
                assert self.pub.check() == len(self.retained)
        finally:
            if hasattr(self, "pub"):
                self.pub.unlink()
                self.pub.close()


TestTopicModel = TopicModel.TestCase
TestTopicModel.settings = settings(max_examples=120, stateful_step_count=50, deadline=None)
TestTopicModel = pytest.mark.timeout(300)(TestTopicModel)
