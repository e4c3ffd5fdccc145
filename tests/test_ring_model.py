"""RingBuffer against a model (hypothesis stateful test): a deque of records.

The model is the ring's records in order, from the oldest whose space is not
yet free to the newest, each a message or a skip record (an aborted
reservation) and each queued, held in an open view, or taken.  Consumers
pass skip records; producers may use the space before the oldest open view
(or the consumers' position when none is open).  Every operation on a real
ring must agree with the same operation on the model, and so must the
ring's own accounting (queued messages, bytes in use, open views).
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import List, Optional

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pyipc import Empty, Full, MessageTooLarge, RingBuffer

CAPACITY = 4096  # the smallest ring, so random sizes wrap around the end all the time


def record(n: int) -> int:
    return 8 + (n + 7) // 8 * 8


@dataclass
class Rec:
    size: int
    data: Optional[bytes]  # None: a skip record
    state: str = "queued"  # "queued", "viewing" or "taken"


class RingModel(RuleBasedStateMachine):
    """Every operation on a real ring matches the same operation on the model."""

    def __init__(self) -> None:
        super().__init__()
        self.name = f"pyipc-test-model-{os.getpid()}-{uuid.uuid4().hex[:10]}"
        self.ring = RingBuffer(self.name, create=True, capacity=CAPACITY)
        self.recs: List[Rec] = []
        self.held: List[tuple] = []  # (context manager, memoryview, Rec)

    # ---- the model -------------------------------------------------------

    def take_index(self) -> int:
        """Index of the first record not yet taken (or viewed)."""
        for i, r in enumerate(self.recs):
            if r.state == "queued":
                return i
        return len(self.recs)

    def compact(self) -> None:
        """Forget records whose space is free: those before the oldest open
        view, or before the consumers' position when none is open."""
        first_view = next((i for i, r in enumerate(self.recs) if r.state == "viewing"), None)
        cut = first_view if first_view is not None else self.take_index()
        del self.recs[:cut]

    def used(self) -> int:
        return sum(r.size for r in self.recs)

    def queued(self) -> List[Rec]:
        return [r for r in self.recs[self.take_index() :] if r.data is not None]

    def pass_skips(self) -> None:
        i = self.take_index()
        while i < len(self.recs) and self.recs[i].data is None:
            self.recs[i].state = "taken"
            i += 1
        self.compact()

    def take_next(self, state: str) -> Optional[Rec]:
        """A consumer's next message (passing skip records), or None."""
        self.pass_skips()
        i = self.take_index()
        if i == len(self.recs):
            return None
        rec = self.recs[i]
        assert rec.data is not None
        rec.state = state
        self.compact()
        return rec

    def fits(self, n: int) -> bool:
        return self.used() + record(n) <= CAPACITY

    # ---- producers -------------------------------------------------------

    @rule(data=st.binary(max_size=CAPACITY))
    def put(self, data: bytes) -> None:
        if len(data) > self.ring.max_message_size:
            with pytest.raises(MessageTooLarge):
                self.ring.put_nowait(data)
            return
        fits = self.fits(len(data))
        try:
            self.ring.put_nowait(data)
        except Full:
            assert not fits
        else:
            assert fits
            self.recs.append(Rec(record(len(data)), data))

    @rule(items=st.lists(st.binary(max_size=900), max_size=8))
    def put_many(self, items: List[bytes]) -> None:
        n = self.ring.put_many(items, block=False)
        expect = 0
        for item in items:
            if not self.fits(len(item)):
                break
            self.recs.append(Rec(record(len(item)), item))
            expect += 1
        assert n == expect

    @rule(data=st.binary(max_size=2000))
    def reserve_commit(self, data: bytes) -> None:
        fits = self.fits(len(data))
        try:
            with self.ring.reserve(len(data), block=False) as buf:
                buf[:] = data
        except Full:
            assert not fits
        else:
            assert fits
            self.recs.append(Rec(record(len(data)), data))

    @rule(size=st.integers(min_value=0, max_value=2000))
    def reserve_abort(self, size: int) -> None:
        fits = self.fits(size)
        try:
            with self.ring.reserve(size, block=False) as buf:
                buf[:] = bytes(size)
                raise ZeroDivisionError
        except Full:
            assert not fits
        except ZeroDivisionError:
            assert fits
            self.recs.append(Rec(record(size), None))
            # The aborting producer passes the skip records at the
            # consumers' end (its own, if nothing is queued before it).
            self.pass_skips()

    # ---- consumers -------------------------------------------------------

    @rule()
    def get(self) -> None:
        try:
            got = self.ring.get_nowait()
        except Empty:
            assert self.take_next("taken") is None
        else:
            rec = self.take_next("taken")
            assert rec is not None and got == rec.data

    @rule(k=st.integers(min_value=1, max_value=10))
    def get_many(self, k: int) -> None:
        try:
            got = self.ring.get_many(k, block=False)
        except Empty:
            assert self.take_next("taken") is None
        else:
            expect = []
            for _ in range(k):
                rec = self.take_next("taken")
                if rec is None:
                    break
                expect.append(rec.data)
            assert got == expect

    @precondition(lambda self: bool(self.queued()))
    @rule(size=st.integers(min_value=0, max_value=CAPACITY))
    def get_into(self, size: int) -> None:
        buf = bytearray(size)
        head = self.queued()[0].data
        assert head is not None
        try:
            n = self.ring.get_into(buf, block=False)
        except MessageTooLarge:
            assert len(head) > size
            self.pass_skips()  # a get passes skip records even when it fails after them
        else:
            rec = self.take_next("taken")
            assert rec is not None and bytes(buf[:n]) == rec.data

    @precondition(lambda self: len(self.held) < 8)
    @rule()
    def view_hold(self) -> None:
        cm = self.ring.view(block=False)
        try:
            msg = cm.__enter__()
        except Empty:
            assert self.take_next("viewing") is None
        else:
            rec = self.take_next("viewing")
            assert rec is not None and bytes(msg) == rec.data
            self.held.append((cm, msg, rec))

    @precondition(lambda self: bool(self.held))
    @rule(which=st.integers(min_value=0, max_value=7))
    def view_release(self, which: int) -> None:
        cm, msg, rec = self.held.pop(which % len(self.held))
        assert bytes(msg) == rec.data  # never overwritten while held
        cm.__exit__(None, None, None)
        rec.state = "taken"
        self.compact()

    # ---- the ring's own accounting -----------------------------------------

    @invariant()
    def sizes_agree(self) -> None:
        info = self.ring.info()
        assert info["messages"] == len(self.queued())
        assert self.ring.empty() == (not self.queued())
        assert info["views"] == len(self.held)
        assert info["bytes_used"] == self.used()

    def teardown(self) -> None:
        try:
            for cm, _, _ in self.held:
                cm.__exit__(None, None, None)
            assert self.ring.check() == len(self.queued())
        finally:
            self.ring.unlink()
            self.ring.close()


TestRingModel = RingModel.TestCase
TestRingModel.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
TestRingModel = pytest.mark.timeout(300)(TestRingModel)
