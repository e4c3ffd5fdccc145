"""``check()``, ``repair()`` and ``pyipc repair`` on rings a process wrote over.

Each test makes a ring, queues self-checking messages (after traffic that
moved the cursors past the end of the ring, so records wrap), damages one
thing with a raw write into the segment, and then proves: the damage is seen
(``CorruptedError``, or attach refused), ``check()`` changes no byte,
``repair()`` returns how many messages it dropped, the survivors come out
intact and in order, and the ring works again for handles attached before
the damage and after the repair.
"""
from __future__ import annotations

import errno
import os
import random
import struct
import subprocess
import sys
import time
from typing import Callable, Iterator, List, Tuple

import pytest

from crash_helpers import LOCKS, Segment, message, parse
from pyipc import CorruptedError, Empty, Full, RingBuffer, ShutDown
from pyipc._core import lib

CAP = 1 << 16
HDR_SIZE = 4096
REC = struct.Struct("<II")  # a record header: length, ~length
OFF_TAKE, OFF_FREE = lib.PYIPC_OFF_CONS_TAKE, lib.PYIPC_OFF_CONS_FREE
OFF_CLAIM, OFF_TAIL = lib.PYIPC_OFF_PROD_CLAIM, lib.PYIPC_OFF_PROD_TAIL
SHUT_DRAIN = 0x53485554


def rec_size(n: int) -> int:
    return 8 + ((n + 7) & ~7)


class Damaged:
    """A ring with traffic behind it and ``n`` self-checking messages queued;
    ``old`` is a second handle attached (and used) before any damage."""

    def __init__(self, name: str, n: int = 20, seed: int = 0) -> None:
        rng = random.Random(seed)
        self.name = name
        self.ring = RingBuffer(name, create=True, capacity=CAP)
        self.old = RingBuffer(name)
        # Move the cursors past the end of the ring once, so records wrap.
        for i in range(3 * CAP // 1000):
            self.old.put(bytes(992))
            self.ring.get()
        self.msgs = [message(1, i, os.urandom(rng.randrange(0, 1500))) for i in range(n)]
        for m in self.msgs:
            self.ring.put(m)
        self.seg = Segment(name)
        self.take = self.seg.u64(OFF_TAKE)
        # Where each queued record starts (free-running position).
        self.pos: List[int] = []
        p = self.take
        for m in self.msgs:
            self.pos.append(p)
            p += rec_size(len(m))
        assert p == self.seg.u64(OFF_TAIL) == self.seg.u64(OFF_CLAIM)

    def at(self, pos: int) -> int:
        """The file offset of free-running position ``pos``."""
        return HDR_SIZE + pos % CAP

    def write_record(self, k: int, data: bytes) -> None:
        """Write over record k's header (wrapping as the ring does)."""
        for i, b in enumerate(data):
            self.seg.map[self.at(self.pos[k] + i)] = b

    def close(self) -> None:
        self.seg.close()
        self.old.close()
        self.ring.close()


@pytest.fixture
def damaged(shm_name: Callable[[], str]) -> Iterator[Callable[..., Damaged]]:
    made: List[Damaged] = []

    def make(**kw: object) -> Damaged:
        d = Damaged(shm_name(), **kw)  # type: ignore[arg-type]
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


def assert_check_read_only(d: Damaged) -> None:
    """check() either counts or raises CorruptedError, and changes no byte."""
    before = d.seg.snapshot()
    try:
        d.old.check()
    except CorruptedError:
        pass
    assert d.seg.snapshot() == before, "check() changed the segment"


def assert_works(d: Damaged, start: int, kept: int) -> None:
    """After repair: ``kept`` messages from ``start`` on come out whole and in
    order (alternating old and new handles), and both kinds of handle then
    put and get; the counters agree."""
    assert d.ring.check() == kept
    with RingBuffer(d.name) as new:
        handles = (d.old, new, d.ring)
        got = [parse(handles[i % 3].get(timeout=5)) for i in range(kept)]
        assert got == [(1, s) for s in range(start, start + kept)]
        for h in (new, d.old):
            with pytest.raises(Empty):
                h.get_nowait()
        for src, dst in ((new, d.old), (d.old, new), (d.ring, new)):
            probe = os.urandom(100)
            src.put(probe, timeout=5)
            assert dst.get(timeout=5) == probe
        with new.reserve(10, timeout=5) as w:
            w[:] = b"0123456789"
        with d.old.view(timeout=5) as v:
            assert bytes(v) == b"0123456789"
    assert d.ring.check() == 0
    info = d.ring.info()
    assert info["puts"] == info["gets"] and info["messages"] == 0 and info["shutdown"] == 0, info


# ---- damaged records --------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("k", [0, 1, 7, 19])
@pytest.mark.parametrize("how", ["length", "check", "too-long", "random"])
def test_repair_scribbled_record(damaged: Callable[..., Damaged], k: int, how: str) -> None:
    """A queued record whose header was written over: gets deliver what comes before it and then
    raise CorruptedError; repair() drops it and everything after it, returning the count."""
    d = damaged(seed=k)
    length = len(d.msgs[k])
    new_hdr = {
        "length": REC.pack(length ^ 0x40, ~length & 0xFFFFFFFF),
        "check": REC.pack(length, (~length ^ 1) & 0xFFFFFFFF),
        "too-long": REC.pack(CAP, ~CAP & 0xFFFFFFFF),  # consistent, but larger than the ring
        "random": os.urandom(8),
    }[how]
    d.write_record(k, new_hdr)
    assert_check_read_only(d)
    with pytest.raises(CorruptedError):
        d.old.check()
    # The good ones before the damage are delivered, then it is reported.
    got = []
    with pytest.raises(CorruptedError):
        for _ in range(k + 1):
            got.append(parse(d.old.get(timeout=5)))
    assert got == [(1, s) for s in range(k)]
    assert d.ring.repair() == len(d.msgs) - k
    assert_works(d, k, 0)


@pytest.mark.timeout(60)
def test_repair_keeps_everything_before_the_damage(damaged: Callable[..., Damaged]) -> None:
    """Without any get first, repair() keeps the records before the damaged one, in order."""
    d = damaged(seed=3)
    d.write_record(12, b"\xff" * 8)
    assert d.ring.repair() == len(d.msgs) - 12
    assert_works(d, 0, 12)


@pytest.mark.timeout(60)
def test_repair_healthy_ring_changes_nothing_visible(damaged: Callable[..., Damaged]) -> None:
    """repair() of a healthy ring drops nothing and keeps every message in order."""
    d = damaged(seed=4)
    assert_check_read_only(d)
    assert d.ring.repair() == 0
    assert_works(d, 0, len(d.msgs))


# ---- damaged words of the header -------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("value", [1, 0xFFFFFFFF, 0x53485555, 0x4E4F5720])
def test_repair_scribbled_shutdown_word(damaged: Callable[..., Damaged], value: int) -> None:
    """A shutdown word that is neither open nor a real shutdown reads as corruption (not a
    shutdown for ever); repair() puts it right and drops nothing."""
    d = damaged(seed=5)
    d.seg.set_u32(lib.PYIPC_OFF_SHUTDOWN, value)
    assert_check_read_only(d)
    for call in (lambda: d.old.put(b"x", timeout=1), lambda: d.old.get(timeout=1), d.old.check):
        with pytest.raises(CorruptedError):
            call()
    assert d.old.info()["shutdown"] == 3
    assert d.old.repair() == 0
    assert_works(d, 0, len(d.msgs))


@pytest.mark.timeout(60)
def test_repair_keeps_a_real_shutdown(damaged: Callable[..., Damaged]) -> None:
    """repair() is not a way back from shutdown(): a ring really shut down stays shut down."""
    d = damaged(seed=6)
    d.ring.shutdown()
    assert d.ring.repair() == 0
    with pytest.raises(ShutDown):
        d.old.put(b"x")
    assert [parse(d.old.get(timeout=5)) for _ in d.msgs] == [(1, s) for s in range(len(d.msgs))]
    with pytest.raises(ShutDown):
        d.old.get(timeout=5)


CURSORS = {
    # name: (offset, change, (start, kept) after repair: None means "some contiguous run")
    "take+8": (OFF_TAKE, lambda v: v + 8, (0, 0)),
    "take+4": (OFF_TAKE, lambda v: v + 4, (0, 0)),
    "take-8": (OFF_TAKE, lambda v: v - 8, (0, 0)),
    "take+cap": (OFF_TAKE, lambda v: v + CAP, None),
    "take=garbage": (OFF_TAKE, lambda v: 0x0123456789ABCDEF, None),
    "free-cap": (OFF_FREE, lambda v: v - 2 * CAP, (0, 20)),
    "free+8": (OFF_FREE, lambda v: v + 8, (0, 20)),
    "free=garbage": (OFF_FREE, lambda v: 0xFEDCBA9876543210, (0, 20)),
    "claim+8": (OFF_CLAIM, lambda v: v + 8, (0, 20)),
    "claim-8": (OFF_CLAIM, lambda v: v - 8, (0, 19)),
    "claim+2cap": (OFF_CLAIM, lambda v: v + 2 * CAP, (0, 20)),
    "claim=garbage": (OFF_CLAIM, lambda v: 0x5555555555555555, (0, 20)),
    "tail-8": (OFF_TAIL, lambda v: v - 8, (0, 20)),
    "tail+cap": (OFF_TAIL, lambda v: v + CAP, (0, 20)),
    "tail=0": (OFF_TAIL, lambda v: 0, (0, 20)),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("which", list(CURSORS))
def test_repair_scribbled_cursor(damaged: Callable[..., Damaged], which: str) -> None:
    """repair() brings back a ring whose cursor was written over, keeping what validates (a
    contiguous run of the queued messages, all of them where the damage spared them), and the
    count it returns plus what it kept is what was queued."""
    d = damaged(seed=7)
    off, change, expect = CURSORS[which]
    d.seg.set_u64(off, change(d.seg.u64(off)))
    assert_check_read_only(d)
    dropped = d.ring.repair()
    kept = d.ring.check()
    assert dropped + kept == len(d.msgs), (dropped, kept)
    if expect is not None:
        assert kept == expect[1], (which, kept)
        assert_works(d, expect[0], kept)
    elif kept:
        first = parse(d.ring.get(timeout=5))[1]
        assert_works(d, first + 1, kept - 1)
    else:
        assert_works(d, 0, 0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("field", ["puts", "gets"])
def test_repair_scribbled_counter(damaged: Callable[..., Damaged], field: str) -> None:
    """A message counter written over: repair() keeps every valid record and puts the count right."""
    d = damaged(seed=8)
    off = lib.PYIPC_OFF_PROD_COUNT if field == "puts" else lib.PYIPC_OFF_CONS_COUNT
    d.seg.set_u64(off, d.seg.u64(off) + 12345678)
    assert d.ring.repair() == 0
    assert_works(d, 0, len(d.msgs))


# ---- damaged shared geometry and the command ----------------------------------------


def pyipc_cmd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pyipc", *args], capture_output=True, text=True, timeout=60)


def assert_one_error_line(p: subprocess.CompletedProcess[str], code: int, words: str) -> None:
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyipc: "), p.stderr
    assert words in lines[0], p.stderr
    assert p.stdout == ""


GEOMETRY = {
    "capacity": (lib.PYIPC_OFF_CAPACITY, 8, lambda v: v * 2),
    "hdr_size": (lib.PYIPC_OFF_HDR_SIZE, 8, lambda v: v + 4096),
    "max_msg": (lib.PYIPC_OFF_MAX_MSG, 8, lambda v: v - 8),
    "max_messages": (lib.PYIPC_OFF_MAX_MESSAGES, 8, lambda v: 1 << 40),
    "kind": (lib.PYIPC_OFF_KIND, 4, lambda v: 99),
    "version": (lib.PYIPC_OFF_VERSION, 4, lambda v: 7),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("field", list(GEOMETRY))
def test_pyipc_repair_scribbled_geometry(damaged: Callable[..., Damaged], field: str) -> None:
    """A shared geometry field written over: new handles cannot attach (CorruptedError), old ones
    see check() fail; `pyipc repair NAME` puts it right (exit 0) and every handle works."""
    d = damaged(seed=9)
    off, size, change = GEOMETRY[field]
    get, put = (d.seg.u64, d.seg.set_u64) if size == 8 else (d.seg.u32, d.seg.set_u32)
    put(off, change(get(off)))
    with pytest.raises(CorruptedError):
        RingBuffer(d.name)
    assert_check_read_only(d)
    with pytest.raises(CorruptedError):
        d.old.check()
    p = pyipc_cmd("repair", d.name)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"repaired {d.name}: dropped 0 messages, {len(d.msgs)} still queued"
    assert_works(d, 0, len(d.msgs))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("field,value,words", [
    ("magic", 0x1122334455667788, "not a pyipc segment"),
    ("version", 1, "layout version 1"),
    ("kind", lib.PYIPC_KIND_TOPIC, "topic"),
])
def test_repair_what_the_command_refuses(damaged: Callable[..., Damaged], field: str, value: int, words: str) -> None:
    """A segment that no longer says it is a pyipc ring of this layout is refused by `pyipc repair`
    (exit 1, one line); repair() from a handle attached before puts it right."""
    d = damaged(seed=10)
    off = {"magic": lib.PYIPC_OFF_MAGIC, "version": lib.PYIPC_OFF_VERSION, "kind": lib.PYIPC_OFF_KIND}[field]
    (d.seg.set_u64 if field == "magic" else d.seg.set_u32)(off, value)
    assert_one_error_line(pyipc_cmd("repair", d.name), 1, words)
    assert d.old.repair() == 0
    assert_works(d, 0, len(d.msgs))


@pytest.mark.timeout(60)
def test_pyipc_repair_drops_scribbled_records(damaged: Callable[..., Damaged]) -> None:
    """`pyipc repair NAME` on a ring with a damaged record says how many it dropped and kept."""
    d = damaged(seed=11)
    d.write_record(5, os.urandom(8))
    p = pyipc_cmd("repair", "/" + d.name)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"repaired /{d.name}: dropped {len(d.msgs) - 5} messages, 5 still queued"
    assert_works(d, 0, 5)


@pytest.mark.timeout(60)
def test_pyipc_repair_exit_codes(shm_name: Callable[[], str], tmp_path: object) -> None:
    """pyipc repair: 1 for a missing name or something that is not a ring, 2 for a bad name,
    each with one 'pyipc: ...' line and no traceback; --help exits 0."""
    assert pyipc_cmd("repair", "--help").returncode == 0
    assert_one_error_line(pyipc_cmd("repair", shm_name()), 1, "no ring named")
    junk = shm_name()
    with open(f"/dev/shm/{junk}", "wb") as f:
        f.write(b"not a ring" * 500)
    assert_one_error_line(pyipc_cmd("repair", junk), 1, "not a pyipc segment")
    assert_one_error_line(pyipc_cmd("repair", "a/b"), 2, "invalid ring name")
    assert_one_error_line(pyipc_cmd("repair", "x" * 300), 2, "invalid ring name")
    assert_one_error_line(pyipc_cmd("repair", str(tmp_path)), 1, "directory")
    p = pyipc_cmd("repair")
    assert p.returncode == 2 and "Traceback" not in p.stderr


@pytest.mark.timeout(60)
def test_pyipc_repair_ring_in_a_file(tmp_path: object) -> None:
    """pyipc repair takes a ring in a file by its path."""
    path = os.path.join(str(tmp_path), "ring")
    with RingBuffer(path=path, create=True, capacity=CAP) as ring:
        ring.put(b"a")
        with open(path, "r+b") as f:
            f.seek(lib.PYIPC_OFF_SHUTDOWN)
            f.write(b"\x01\x00\x00\x00")
        with pytest.raises(CorruptedError):
            ring.get(timeout=1)
        p = pyipc_cmd("repair", path)
        assert p.returncode == 0, p.stderr
        assert ring.get(timeout=5) == b"a"


# ---- check() is read-only ----------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("damage", ["none", "record", "cursor", "shutdown", "geometry", "lease"])
def test_check_changes_nothing(damaged: Callable[..., Damaged], damage: str) -> None:
    """check() leaves every byte of the segment as it was, on a healthy ring (with an open view)
    and on damaged ones."""
    d = damaged(seed=12)
    with d.ring.view() as v:  # an open lease the walk must leave alone
        first = bytes(v)
        if damage == "record":
            d.write_record(3, b"\x00" * 8)
        elif damage == "cursor":
            d.seg.set_u64(OFF_TAKE, d.seg.u64(OFF_TAKE) + 8)
        elif damage == "shutdown":
            d.seg.set_u32(lib.PYIPC_OFF_SHUTDOWN, 7)
        elif damage == "geometry":
            d.seg.set_u64(lib.PYIPC_OFF_CAPACITY, 3)
        elif damage == "lease":
            d.seg.write(lib.PYIPC_OFF_VIEWS + lib.PYIPC_LEASE_SIZE, os.urandom(lib.PYIPC_LEASE_SIZE))
        for h in (d.ring, d.old):
            before = d.seg.snapshot()
            try:
                n = h.check()
                assert damage == "none" and n == len(d.msgs) - 1, (damage, n)
            except CorruptedError:
                assert damage != "none"
            assert d.seg.snapshot() == before, "check() changed the segment"
    assert parse(first) == (1, 0)


# ---- lock words written over ---------------------------------------------------


def _call(d: Damaged, side: str, block: bool = True, timeout: float = 0.05) -> Tuple[int, int]:
    """One call on ``side`` through the old handle: a put of the next
    message, or a get of the first.  Returns (first, kept) of the queued
    messages afterwards, for assert_works."""
    if side == "prod":
        d.old.put(message(1, len(d.msgs), b"next"), block, timeout)
        return 0, len(d.msgs) + 1
    assert parse(d.old.get(block, timeout)) == (1, 0)
    return 1, len(d.msgs) - 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("side", ["prod", "cons"])
@pytest.mark.parametrize("word", [0x80000000, 0x00001234, 0x80001234])
def test_forged_lock_word_naming_nobody_is_taken(damaged: Callable[..., Damaged], side: str, word: int) -> None:
    """A lock word written over so that it names no live handle (no id at all, or an id nobody
    holds) is taken over by the next call, even a non-blocking one; nothing is lost."""
    d = damaged(seed=13)
    d.seg.set_u32(LOCKS[side], word)
    before = d.ring.info()["recoveries"]
    first, kept = _call(d, side, block=False)
    assert d.ring.info()["recoveries"] == before + 1
    assert d.seg.u32(LOCKS[side]) == 0
    assert_works(d, first, kept)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("side", ["prod", "cons"])
def test_forged_lock_word_naming_live_handle(damaged: Callable[..., Damaged], side: str) -> None:
    """A lock word written over with a live handle's id is never taken from it: calls with
    timeouts return Full/Empty in time, check() says the consumers' lock is held; once that
    handle is closed, the next call takes the lock over and nothing is lost."""
    d = damaged(seed=14)
    named = RingBuffer(d.name)
    d.seg.set_u32(LOCKS[side], named.info()["owner"])
    for block in (True, False):
        t0 = time.monotonic()
        with pytest.raises(Full if side == "prod" else Empty):
            _call(d, side, block, 0.05)
        assert time.monotonic() - t0 < 5
    if side == "cons":
        with pytest.raises(TimeoutError, match="consumers' lock stayed held"):
            d.old.check()
    else:
        assert d.old.check() == len(d.msgs)
    assert d.ring.info()["recoveries"] == 0
    named.close()
    first, kept = _call(d, side, True, 5)
    assert d.ring.info()["recoveries"] == 1
    assert_works(d, first, kept)


def _unchanged_part(raw: bytes) -> bytes:
    """A segment's bytes but for what waiting on a lock and attaching change:
    the locks' waiter bits and the owner id counter."""
    b = bytearray(raw)
    for off in LOCKS.values():
        b[off + 3] &= 0x7F
    b[lib.PYIPC_OFF_OWNER_SEQ : lib.PYIPC_OFF_OWNER_SEQ + 4] = bytes(4)
    return bytes(b)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("side", ["prod", "cons"])
def test_repair_refuses_with_forged_live_holder(damaged: Callable[..., Damaged], side: str) -> None:
    """While a lock word names a live handle, repair() gives up with OSError(EBUSY) within a bound
    and changes nothing, `pyipc repair` says so in one line (exit 1), and once that handle is
    closed repair() brings the ring back."""
    d = damaged(seed=15)
    named = RingBuffer(d.name)
    d.seg.set_u32(LOCKS[side], named.info()["owner"])
    d.seg.set_u32(lib.PYIPC_OFF_SHUTDOWN, 7)  # something for repair() to put right
    before = d.seg.snapshot()
    t0 = time.monotonic()
    with pytest.raises(OSError) as e:
        d.old.repair()
    assert e.value.errno == errno.EBUSY
    assert time.monotonic() - t0 < 10
    assert _unchanged_part(d.seg.snapshot()) == _unchanged_part(before), "repair() changed the segment"
    assert_one_error_line(pyipc_cmd("repair", d.name), 1, "held")
    assert _unchanged_part(d.seg.snapshot()) == _unchanged_part(before)
    named.close()
    assert d.old.repair() == 0
    assert_works(d, 0, len(d.msgs))


# ---- counts that only cache the lease tables ------------------------------------------


def _lease_count_offset(ring: RingBuffer, seg: Segment, side: str) -> int:
    """Where a side's count of open leases is: right after its lock word (layout.h),
    checked by opening a lease (on an empty ring) and seeing the count go to 1."""
    off = LOCKS[side] + 4
    assert seg.u32(off) == 0
    if side == "prod":
        with ring.reserve(1) as w:
            w[:] = b"r"
            assert seg.u32(off) == 1
        assert ring.get() == b"r"
    else:
        ring.put(b"v")
        with ring.view() as v:
            assert bytes(v) == b"v" and seg.u32(off) == 1
    assert seg.u32(off) == 0
    return off


@pytest.mark.timeout(60)
@pytest.mark.parametrize("side", ["prod", "cons"])
@pytest.mark.parametrize("value", [1, 5, 0xFFFFFFFF])
@pytest.mark.parametrize("bound", [0, 4])
def test_lease_count_written_over_kills_nothing(shm_name: Callable[[], str], side: str, value: int, bound: int) -> None:
    """A side's count of open leases is only a cache of its lease table: written over, it never
    stops messages from being published or their space from coming back (no repair needed)."""
    name = shm_name()
    with RingBuffer(name, create=True, capacity=4096, max_messages=bound) as ring, RingBuffer(name) as other:
        seg = Segment(name)
        try:
            off = _lease_count_offset(ring, seg, side)
            seg.set_u32(off, value)
            # Many laps of the ring: published, taken, and the space reused.
            for i in range(300):
                m = (b"%d" % i) * 40
                ring.put(m, timeout=2)
                assert other.get(timeout=2) == m
            with ring.reserve(3, timeout=2) as w:
                w[:] = b"abc"
            with other.view(timeout=2) as v:
                assert bytes(v) == b"abc"
            assert ring.check() == 0
            info = ring.info()
            assert info["reserves"] == info["views"] == 0, info
        finally:
            seg.close()
