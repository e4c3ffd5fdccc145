"""Corrupted segments: attach validates everything, and scribbling never crashes.

Attach tests make files in /dev/shm that are not valid rings and check that
``RingBuffer(name)`` raises ``CorruptedError`` (quickly, without hanging).
Scribbling tests run a victim process that attaches to a live ring and keeps
calling put/get/get_many/qsize/stats with short timeouts while this process
writes random bytes at random offsets of the segment; the victim must exit
normally, having seen only pyipc's exceptions or well-formed results.  A crash
shows up as a negative exit status of the victim, not as a dead test runner.
"""
from __future__ import annotations

import mmap
import os
import random
import struct
import subprocess
import sys
import time
from typing import Callable, Iterable, List, Tuple

import pytest

from pyipc import CorruptedError, RingBuffer
from pyipc._core import lib

# The header layout, as the build says it is (csrc/layout.h checks these
# numbers against the C structures): what the attach tests alter.
OFF_MAGIC, OFF_VERSION, OFF_KIND = lib.PYIPC_OFF_MAGIC, lib.PYIPC_OFF_VERSION, lib.PYIPC_OFF_KIND
OFF_HDR_SIZE, OFF_CAPACITY, OFF_MAX_MSG = lib.PYIPC_OFF_HDR_SIZE, lib.PYIPC_OFF_CAPACITY, lib.PYIPC_OFF_MAX_MSG
OFF_MAX_MESSAGES = lib.PYIPC_OFF_MAX_MESSAGES
HDR_PAGE = 4096
SIDES = (lib.PYIPC_OFF_PROD_LOCK, lib.PYIPC_OFF_CONS_LOCK)
# Each side's private line: its lock word, lease count and own cursor.
LOCK_WORDS = [(side, side + 16) for side in SIDES]
# Everything the header holds lies before this offset (the lease tables last).
FIELDS_END = lib.PYIPC_OFF_VIEWS + lib.PYIPC_MAX_LEASES * lib.PYIPC_LEASE_SIZE

VICTIM = r'''
import random, sys, time
from pyipc import CorruptedError, Empty, Full, MessageTooLarge, RingBuffer, ShutDown

name, seed, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rng = random.Random(seed)
ring = RingBuffer(name)
print("attached", flush=True)  # the scribbling starts after this line
cap, maxmsg = ring.capacity, ring.max_message_size
expected = (CorruptedError, Empty, Full, ShutDown, TimeoutError)
buf = bytearray(maxmsg)
counts = {}
end = time.monotonic() + duration
while time.monotonic() < end:
    op = rng.randrange(9)
    try:
        if op == 0:
            ring.put(bytes(rng.randrange(0, 300)), timeout=0.005)
        elif op == 1:
            ring.put_nowait(bytes(rng.randrange(0, maxmsg // 4)))
        elif op == 2:
            m = ring.get(timeout=0.005)
            assert isinstance(m, bytes) and len(m) <= maxmsg, len(m)
        elif op == 3:
            ms = ring.get_many(rng.randrange(1, 6), timeout=0.005)
            assert 1 <= len(ms) <= 5 and all(len(m) <= maxmsg for m in ms)
        elif op == 4:
            n = ring.get_into(buf, timeout=0.005)
            assert 0 <= n <= maxmsg
        elif op == 5:
            assert 0 <= ring.qsize() <= cap // 8
        elif op == 6:
            s = ring.stats()
            assert all(isinstance(v, int) and v >= 0 for v in s.values()), s
        elif op == 7:
            k = ring.put_many([bytes(rng.randrange(0, 100)) for _ in range(3)], timeout=0.005)
            assert 0 <= k <= 3
        else:
            ring.get_nowait()
        counts["ok"] = counts.get("ok", 0) + 1
    except expected as e:
        counts[type(e).__name__] = counts.get(type(e).__name__, 0) + 1
print(sorted(counts.items()))
'''


def scribble(
    name: str, seed: int, duration: float, ranges: List[Tuple[int, int]], avoid: Iterable[Tuple[int, int]] = ()
) -> None:
    """Run a victim on ring `name` while writing random bytes into `ranges`.

    Offsets inside any of `avoid` are never written.  Fails unless the
    victim exits with status 0.
    """
    rng = random.Random(seed)
    avoid = list(avoid)
    victim = subprocess.Popen(
        [sys.executable, "-c", VICTIM, name, str(seed), str(duration)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        # Attach must see the ring intact: scribbling starts once it has.
        assert victim.stdout is not None
        line = victim.stdout.readline()
        assert line == b"attached\n", f"seed {seed}: the victim did not attach: {line!r}"
        with open(f"/dev/shm/{name}", "r+b") as f:
            seg = mmap.mmap(f.fileno(), 0)
        try:
            # Now and then the header is put back as it was (but for `avoid`),
            # so the victim keeps going through healthy states as well as
            # broken ones, locks held or not, instead of one dead ring.
            pristine = bytes(seg[:HDR_PAGE])
            end = time.monotonic() + duration + 1
            while time.monotonic() < end and victim.poll() is None:
                if rng.random() < 0.02:
                    keep = sorted(avoid)
                    start = 0
                    for a, b in keep + [(HDR_PAGE, HDR_PAGE)]:
                        seg[start:a] = pristine[start:a]
                        start = b
                    time.sleep(0.002)
                    continue
                lo, hi = rng.choice(ranges)
                off = rng.randrange(lo, hi)
                n = min(rng.randrange(1, 9), hi - off)
                if any(a < off + n and off < b for a, b in avoid):
                    continue
                seg[off : off + n] = rng.randbytes(n)
                time.sleep(rng.choice((0, 0, 0.0001, 0.001)))
        finally:
            seg.close()
        out, err = victim.communicate(timeout=duration + 30)
    except subprocess.TimeoutExpired:
        victim.kill()
        out, err = victim.communicate()
        pytest.fail(f"seed {seed}: the victim hung\n{out.decode()}\n{err.decode()}")
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    assert victim.returncode == 0, (
        f"seed {seed}: the victim ended with status {victim.returncode}\n"
        f"--- stdout\n{out.decode()}\n--- stderr\n{err.decode()}"
    )


def live_ring(shm_name: Callable[[], str], capacity: int = 1 << 14) -> RingBuffer:
    """A ring with a few messages queued, so gets have records to read."""
    ring = RingBuffer(shm_name(), create=True, capacity=capacity)
    for i in range(20):
        ring.put_nowait(bytes([i]) * (i * 13))
    return ring


# ---- scribbling over a live segment ---------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", range(6))
def test_scribble_header(shm_name: Callable[[], str], seed: int) -> None:
    """Random bytes over the header never crash a user."""
    with live_ring(shm_name) as ring:
        scribble(ring.name, seed, 1.5, [(0, FIELDS_END), (0, FIELDS_END), (0, HDR_PAGE)])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", range(2))
def test_scribble_lock_words(shm_name: Callable[[], str], seed: int) -> None:
    """Random bytes over the lock words and owner start times never crash a user."""
    with live_ring(shm_name, capacity=1 << 20) as ring:
        scribble(ring.name, seed, 2.0, LOCK_WORDS)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", range(4))
def test_scribble_data(shm_name: Callable[[], str], seed: int) -> None:
    """Random bytes over the record area (record headers included) never crash a user."""
    with live_ring(shm_name) as ring:
        scribble(ring.name, seed, 1.5, [(HDR_PAGE, HDR_PAGE + ring.capacity)])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", range(3))
def test_scribble_everything(shm_name: Callable[[], str], seed: int) -> None:
    """Random bytes anywhere but the lock links, header and data alike, never crash a user."""
    with live_ring(shm_name) as ring:
        scribble(
            ring.name, 100 + seed, 1.5, [(0, FIELDS_END), (HDR_PAGE, HDR_PAGE + ring.capacity)]
        )


# ---- attach validation ----------------------------------------------------


def write_file(name: str, data: bytes) -> None:
    fd = os.open(f"/dev/shm/{name}", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def altered(shm_name: Callable[[], str], change: Callable[[str, mmap.mmap], None]) -> str:
    """Make a valid ring, apply `change` to its raw bytes, return its name."""
    ring = RingBuffer(shm_name(), create=True, capacity=1 << 14)
    ring.put_nowait(b"hello")
    ring.close()
    with open(f"/dev/shm/{ring.name}", "r+b") as f:
        seg = mmap.mmap(f.fileno(), 0)
        try:
            change(ring.name, seg)
        finally:
            seg.close()
    return ring.name


def set_u32(off: int, value: int) -> Callable[[str, mmap.mmap], None]:
    return lambda name, seg: struct.pack_into("<I", seg, off, value)


def set_u64(off: int, value: int) -> Callable[[str, mmap.mmap], None]:
    return lambda name, seg: struct.pack_into("<Q", seg, off, value)


def truncate(size: int) -> Callable[[str, mmap.mmap], None]:
    return lambda name, seg: os.truncate(f"/dev/shm/{name}", size)


@pytest.mark.timeout(20)
def test_attach_unaltered_ring_works(shm_name: Callable[[], str]) -> None:
    """The helper's untouched ring attaches and keeps its message (the other attach tests mean something)."""
    name = altered(shm_name, lambda name, seg: None)
    with RingBuffer(name) as ring:
        assert ring.get_nowait() == b"hello"


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "change",
    [
        pytest.param(set_u64(OFF_MAGIC, 0x1122334455667788), id="wrong-magic"),
        pytest.param(set_u32(OFF_VERSION, 1), id="layout-version-1"),
        pytest.param(set_u32(OFF_VERSION, 3), id="layout-version-3"),
        pytest.param(set_u32(OFF_VERSION, 0), id="version-zero"),
        pytest.param(set_u32(OFF_KIND, 0), id="kind-zero"),
        pytest.param(set_u32(OFF_KIND, 2), id="kind-topic"),
        pytest.param(set_u64(OFF_HDR_SIZE, 8192), id="wrong-header-size"),
        pytest.param(set_u64(OFF_HDR_SIZE, 0), id="header-size-zero"),
        pytest.param(set_u64(OFF_CAPACITY, 1 << 15), id="capacity-larger-than-file"),
        pytest.param(set_u64(OFF_CAPACITY, 1 << 13), id="capacity-smaller-than-file"),
        pytest.param(set_u64(OFF_CAPACITY, (1 << 14) - 8), id="capacity-not-power-of-two"),
        pytest.param(set_u64(OFF_CAPACITY, 0), id="capacity-zero"),
        pytest.param(set_u64(OFF_CAPACITY, 1 << 63), id="capacity-huge"),
        pytest.param(set_u64(OFF_MAX_MSG, 1 << 14), id="max-message-size-too-big"),
        pytest.param(set_u64(OFF_MAX_MSG, 100), id="max-message-size-too-small"),
        pytest.param(set_u64(OFF_MAX_MESSAGES, 1 << 40), id="max-messages-impossible"),
        pytest.param(truncate(HDR_PAGE + 1000), id="truncated-data"),
        pytest.param(truncate(HDR_PAGE), id="truncated-to-header"),
        pytest.param(truncate(100), id="truncated-into-header"),
        pytest.param(truncate(HDR_PAGE + (1 << 15)), id="grown"),
    ],
)
def test_attach_rejects_altered_ring(shm_name: Callable[[], str], change: Callable[[str, mmap.mmap], None]) -> None:
    """A ring whose magic, version or geometry disagrees with its file raises CorruptedError."""
    name = altered(shm_name, change)
    with pytest.raises(CorruptedError):
        RingBuffer(name)


@pytest.mark.timeout(20)
def test_attach_message_says_which_layout_version(shm_name: Callable[[], str]) -> None:
    """A segment of layout version 1 is refused with a message that names the version."""
    name = altered(shm_name, set_u32(OFF_VERSION, 1))
    with pytest.raises(CorruptedError, match="layout version 1"):
        RingBuffer(name)


@pytest.mark.timeout(20)
def test_attach_message_says_it_is_a_topic(shm_name: Callable[[], str]) -> None:
    """A segment that says it is a topic is refused as one, by name."""
    name = altered(shm_name, set_u32(OFF_KIND, lib.PYIPC_KIND_TOPIC))
    with pytest.raises(CorruptedError, match="topic"):
        RingBuffer(name)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("size", [1, 100, 4095, 4096, 4096 + 64, 4096 + 4096, 12345, 4096 + (1 << 16)])
def test_attach_rejects_random_file(shm_name: Callable[[], str], size: int) -> None:
    """A file of random bytes in /dev/shm is not a ring: CorruptedError."""
    rng = random.Random(size)
    data = bytearray(rng.randbytes(size))
    if size >= 8 and not any(data[:8]):
        data[0] = 1  # an all-zero start would read as "being created"
    name = shm_name()
    write_file(name, bytes(data))
    with pytest.raises(CorruptedError):
        RingBuffer(name)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("size", [0, 4096, 4096 + 4096])
def test_attach_does_not_wait_for_ever(shm_name: Callable[[], str], size: int) -> None:
    """An empty or zero-filled file looks like a ring being made: attach waits briefly, then CorruptedError."""
    name = shm_name()
    write_file(name, bytes(size))
    with pytest.raises(CorruptedError):
        RingBuffer(name)


@pytest.mark.timeout(20)
def test_attach_text_file(shm_name: Callable[[], str]) -> None:
    """Something else's segment (text) is refused, not mistaken for a ring."""
    name = shm_name()
    write_file(name, b"PIPCRING is not enough to be a ring\n" * 200)
    with pytest.raises(CorruptedError):
        RingBuffer(name)


# ---- a lock scribbled into a "held" state ---------------------------------

STUCK = r'''
import sys
from pyipc import Empty, Full, RingBuffer
ring = RingBuffer(sys.argv[1])
for call in sys.argv[2:]:
    try:
        eval(call)
    except (Empty, Full):
        pass
print("returned")
'''


def stuck_lock_run(shm_name: Callable[[], str], calls: List[str]) -> "subprocess.CompletedProcess[str]":
    """Mark both locks held by a thread that does not exist, then run `calls` in a victim.

    The victim must recover the locks (their owner is dead) or time out;
    either way every call returns."""
    with RingBuffer(shm_name(), create=True, capacity=1 << 12) as ring:
        ring.put_nowait(b"queued")
        with open(f"/dev/shm/{ring.name}", "r+b") as f:
            seg = mmap.mmap(f.fileno(), 0)
        try:
            for side in SIDES:
                # An owner id no thread has: only owner-death detection frees it.
                struct.pack_into("<I", seg, side, 0x3FFFFFF0)
            return subprocess.run(
                [sys.executable, "-c", STUCK, ring.name, *calls], capture_output=True, text=True, timeout=10
            )
        finally:
            seg.close()


@pytest.mark.timeout(30)
def test_stuck_lock_calls_with_timeouts_return(shm_name: Callable[[], str]) -> None:
    """With both locks scribbled into a held state, every call with a timeout still returns."""
    calls = [
        "ring.put(b'x', timeout=0.05)",
        "ring.put_nowait(b'x')",
        "ring.get(timeout=0.05)",
        "ring.get_nowait()",
        "ring.get_many(3, timeout=0.05)",
        "ring.put_many([b'a', b'b'], timeout=0.05)",
        "ring.qsize()",
        "ring.stats()",
    ]
    proc = stuck_lock_run(shm_name, calls)
    assert proc.returncode == 0 and "returned" in proc.stdout, proc.stderr


@pytest.mark.timeout(30)
def test_stuck_lock_check_returns(shm_name: Callable[[], str]) -> None:
    """check() on a ring whose lock is scribbled into a held state returns (or raises) instead of hanging."""
    proc = stuck_lock_run(shm_name, ["ring.check()"])
    assert "returned" in proc.stdout or "CorruptedError" in proc.stderr, proc.stderr
