"""SIGKILL trials: a peer killed at any instant leaves the ring usable by the others.

Real child processes hammer one ring with self-checking messages (producer
id, sequence number, payload, checksums; sizes varied so records wrap) and are
SIGKILLed at random moments: busy in put or get, holding a lock, asleep on an
empty or full ring, or waiting for a message to be consumed.  The surviving
test process then proves that puts and gets still work within a timeout, that
``check()`` passes, that no torn message was ever delivered, that every
producer's messages arrive in order and exactly once, and that at most the
in-flight messages of the killed consumers are missing.
"""
from __future__ import annotations

import mmap
import os
import random
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from pyipc import Empty, Full, RingBuffer
from pyipc._core import lib

# A message: producer id, sequence, payload length, payload CRC, header CRC,
# then the payload.  The two CRCs catch a torn or half-written message.
HDR = struct.Struct("<IQII")
HDR_CRC = struct.Struct("<I")
HEAD = HDR.size + HDR_CRC.size
# What a consumer child reports per message: producer id and sequence.
REPORT = struct.Struct("<IQ")
TORN = 0xFFFFFFFF  # a report with this producer id marks a torn message
GET_MANY = 4  # the largest batch a consumer child takes in one call
BIG = 2 << 20  # "big" messages: their copy holds a lock for a while

# Where the locks live, as the build says: a lock word holds its holder's
# owner id (one per attached handle; each worker reports its own), plus a
# flag bit once somebody sleeps on it.
LOCK_OFFSETS = (lib.PYIPC_OFF_PROD_LOCK, lib.PYIPC_OFF_CONS_LOCK)
ID_MASK = ~lib.PYIPC_LOCK_WAITERS & 0xFFFFFFFF

WORKER = r'''
import os, random, struct, sys, zlib
from pyipc import Empty, Full, RingBuffer

HDR = struct.Struct("<IQII")
HDR_CRC = struct.Struct("<I")
HEAD = HDR.size + HDR_CRC.size
REPORT = struct.Struct("<IQ")
TORN = 0xFFFFFFFF

role, name, ident, seed, out, sizes = sys.argv[1:7]
ident = int(ident)
rng = random.Random(int(seed))
ring = RingBuffer(name)
with open(out + ".owner", "w") as f:
    f.write(str(ring.info()["owner"]))
fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
pool = rng.randbytes(BIG + (1 << 20))


def message(seq, payload, crc=None):
    if crc is None:
        crc = zlib.crc32(payload)
    hdr = HDR.pack(ident, seq, len(payload), crc)
    return b"".join((hdr, HDR_CRC.pack(zlib.crc32(hdr)), payload))


def size():
    if sizes == "big":
        return BIG
    x = 0.0 if sizes == "small" else rng.random()
    if x < 0.7:
        return rng.randrange(0, 2000)
    if x < 0.95:
        return rng.randrange(2000, 65536)
    return 256 * 1024


def payload(n):
    off = rng.randrange(0, len(pool) - n + 1)
    return memoryview(pool)[off:off + n]


def report(msgs):
    recs = []
    for m in msgs:
        ok = len(m) >= HEAD
        if ok:
            p, seq, n, crc = HDR.unpack_from(m)
            ok = (HDR_CRC.unpack_from(m, HDR.size)[0] == zlib.crc32(m[:HDR.size])
                  and len(m) == HEAD + n and zlib.crc32(m[HEAD:]) == crc)
        recs.append(REPORT.pack(p, seq) if ok else REPORT.pack(TORN, len(m)))
    # One write per batch: a kill never leaves half a record behind.
    os.write(fd, b"".join(recs))


seq = 0
if role == "prod":
    # Variants of one big message, built once, so that the time goes into
    # put (under the lock) rather than into Python.
    big = [message(0, payload(BIG)) for _ in range(3)] if sizes == "big" else None
    while True:
        if big is not None:
            k = rng.randrange(1, 4)
            batch = []
            for i in range(k):
                m = bytearray(big[(seq + i) % 3])
                hdr = HDR.pack(ident, seq + i, *HDR.unpack_from(m)[2:])
                m[:HEAD] = hdr + HDR_CRC.pack(zlib.crc32(hdr))
                batch.append(m)
        else:
            k = rng.choice((1, 1, 2, 3))
            batch = [message(seq + i, payload(size())) for i in range(k)]
        if k == 1:
            ring.put(batch[0])
        else:
            assert ring.put_many(batch) == k
        seq += k
elif role == "cons":
    while True:
        try:
            if rng.random() < 0.5:
                report([ring.get(timeout=0.5)])
            else:
                report(ring.get_many(GET_MANY, timeout=0.5))
        except Empty:
            pass
elif role == "getblock":
    while True:
        report([ring.get()])
elif role == "putblock":
    while True:
        ring.put(message(seq, payload(size())))
        seq += 1
elif role == "waitc":
    ring.put(message(seq, payload(100)), wait_consumed=True)
    os.write(fd, b"consumed")
'''.replace("GET_MANY", str(GET_MANY)).replace("BIG", str(BIG))


class Children:
    """Worker processes of one test; every one is killed and reaped at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: List[Tuple[subprocess.Popen[bytes], str, int, Path]] = []
        self.n = 0
        self.killed: set[int] = set()

    def start(self, role: str, name: str, ident: int, seed: int, sizes: str = "mixed") -> int:
        self.n += 1
        out = self.tmp / f"{role}-{ident}-{self.n}.out"
        out.write_bytes(b"")
        p = subprocess.Popen(
            [sys.executable, "-c", WORKER, role, name, str(ident), str(seed), str(out), sizes],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.procs.append((p, role, ident, out))
        return len(self.procs) - 1

    def kill(self, i: int) -> None:
        p = self.procs[i][0]
        self.killed.add(i)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
        assert p.returncode == -signal.SIGKILL, self.died_why(i)

    def died_why(self, i: int) -> str:
        p, role, ident, _ = self.procs[i]
        err = p.stderr.read().decode(errors="replace") if p.stderr else ""
        return f"{role} {ident} ended with {p.returncode} before it was killed:\n{err}"

    def owner(self, i: int) -> Optional[int]:
        """Child i's owner id in the ring, once it has attached."""
        try:
            return int((self.procs[i][3].parent / (self.procs[i][3].name + ".owner")).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def alive(self, i: int) -> bool:
        return self.procs[i][0].poll() is None

    def reports(self, i: int) -> List[Tuple[int, int]]:
        data = self.procs[i][3].read_bytes()
        assert len(data) % REPORT.size == 0
        return [REPORT.unpack_from(data, k) for k in range(0, len(data), REPORT.size)]

    def close(self) -> None:
        for p, _, _, _ in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            if p.stderr:
                p.stderr.close()


@pytest.fixture
def children(tmp_path: Path) -> Iterator[Children]:
    c = Children(tmp_path)
    try:
        yield c
    finally:
        c.close()


def parse(m: bytes) -> Tuple[int, int]:
    """Check one message's framing and checksums; return (producer, sequence)."""
    assert len(m) >= HEAD, f"message of {len(m)} bytes is shorter than its header"
    p, seq, n, crc = HDR.unpack_from(m)
    assert HDR_CRC.unpack_from(m, HDR.size)[0] == zlib.crc32(m[: HDR.size]), "torn header"
    assert len(m) == HEAD + n, f"length {len(m)} != {HEAD + n}"
    assert zlib.crc32(m[HEAD:]) == crc, "torn payload"
    return p, seq


def wait_for(pred: Callable[[], bool], what: str, children: Children, limit: float = 20.0) -> None:
    """Poll until pred() holds (children start slowly on a loaded machine)."""
    end = time.monotonic() + limit
    while not pred():
        for i in range(len(children.procs)):
            assert i in children.killed or children.alive(i), children.died_why(i)
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.005)


def survivor_check(ring: RingBuffer) -> List[Tuple[int, int]]:
    """Prove the ring works after the kills; drain it; return what was queued.

    Every call has a timeout, so a deadlock fails the test instead of hanging it.
    """
    queued = ring.check()
    drained: List[Tuple[int, int]] = []
    # Non-blocking gets take over a dead consumer lock at once.  (No worker
    # here reserves, so nothing hides behind an open reservation: check()
    # counted everything.)
    while True:
        try:
            drained.append(parse(ring.get_nowait()))
        except Empty:
            break
    assert len(drained) == queued, (len(drained), queued)
    probe = b"probe-" + os.urandom(16)
    ring.put(probe, timeout=10)  # Full here: a dead producer lock
    assert ring.get(timeout=10) == probe
    assert ring.check() == 0
    info = ring.info()
    # The counters' redo log: any commit cut short by a kill was finished or dropped.
    assert info["puts"] == info["gets"], info
    assert info["bytes_put"] == info["bytes_got"], info
    assert info["messages"] == 0 and info["bytes_used"] == 0, info
    return drained


def check_delivery(
    streams: List[List[Tuple[int, int]]], drained: List[Tuple[int, int]], may_lose: int
) -> None:
    """Per producer: in order in every stream, never twice, at most may_lose missing."""
    seen: Dict[int, set[int]] = {}
    last_consumed: Dict[int, int] = {}
    for stream in streams:
        last: Dict[int, int] = {}
        for p, seq in stream:
            assert p != TORN, f"a consumer received a torn message of {seq} bytes"
            assert seq > last.get(p, -1), f"producer {p}: {seq} after {last[p]} in one consumer"
            last[p] = seq
            assert seq not in seen.setdefault(p, set()), f"producer {p}: {seq} delivered twice"
            seen[p].add(seq)
            last_consumed[p] = max(last_consumed.get(p, -1), seq)
    last = {}
    for p, seq in drained:
        # What is still queued comes after everything any consumer took.
        assert seq > max(last.get(p, -1), last_consumed.get(p, -1)), (p, seq)
        last[p] = seq
        assert seq not in seen.setdefault(p, set()), f"producer {p}: {seq} delivered twice"
        seen[p].add(seq)
    # A producer's messages form a prefix 0..n-1: its in-flight one is
    # either wholly in or not at all; only killed consumers lose messages.
    missing = sum(max(s) + 1 - len(s) for s in seen.values() if s)
    assert missing <= may_lose, f"{missing} messages missing, at most {may_lose} allowed"


def kill_holding_lock(ring: RingBuffer, children: Children, i: int) -> None:
    """SIGKILL child i the moment it is seen owning one of the ring's locks.

    The kill lands inside the critical section whenever the child is still
    copying when the signal arrives, which big messages make likely.  If it
    is never seen owning a lock in time, it is killed anyway.
    """
    with open(f"/dev/shm/{ring.name}", "rb") as f:
        seg = mmap.mmap(f.fileno(), 4096, prot=mmap.PROT_READ)
    try:
        end = time.monotonic() + 5
        while time.monotonic() < end and children.alive(i):
            owner = children.owner(i)
            if owner is not None and any(
                struct.unpack_from("<I", seg, off)[0] & ID_MASK == owner for off in LOCK_OFFSETS
            ):
                break
    finally:
        seg.close()
    children.kill(i)


def busy_trial(
    ring: RingBuffer, children: Children, rng: random.Random, trial: int, sizes: str, targeted: bool = False
) -> None:
    """Producers and consumers at work, each SIGKILLed at a random moment
    (with ``targeted``, the first one while it holds a lock)."""
    n_prod, n_cons = rng.choice(((1, 1), (2, 1), (1, 2)))
    ids = [trial * 10 + i for i in range(n_prod)]
    prods = [children.start("prod", ring.name, i, rng.randrange(1 << 30), sizes) for i in ids]
    conss = [children.start("cons", ring.name, 0, rng.randrange(1 << 30)) for _ in range(n_cons)]
    start = ring.info()["gets"]
    wait_for(lambda: ring.info()["gets"] > start + 2, "messages to flow", children)
    order = prods + conss
    rng.shuffle(order)
    for k, i in enumerate(order):
        time.sleep(rng.uniform(0, 0.15))
        assert children.alive(i), children.died_why(i)
        if targeted and k == 0:
            kill_holding_lock(ring, children, i)
        else:
            children.kill(i)
    drained = survivor_check(ring)
    streams = [children.reports(i) for i in conss]
    check_delivery(streams, drained, may_lose=GET_MANY * n_cons)


@pytest.mark.timeout(90)
def test_kill_busy_peers_mixed_sizes(shm_name: Callable[[], str], children: Children) -> None:
    """16 trials: peers killed while busy with empty to 256 KiB messages never break the ring."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    with RingBuffer(shm_name(), create=True, capacity=1 << 20) as ring:
        for trial in range(16):
            try:
                busy_trial(ring, children, rng, trial, "mixed")
            except BaseException:
                print(f"trial {trial} of seed {seed} failed")
                raise


@pytest.mark.timeout(90)
def test_kill_lock_holders_big_messages(shm_name: Callable[[], str], children: Children) -> None:
    """12 trials with 2 MiB messages in batches, one kill per trial aimed at a lock holder:
    deaths under the lock happen and are recovered."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    with RingBuffer(shm_name(), create=True, capacity=8 << 20) as ring:
        for trial in range(12):
            try:
                busy_trial(ring, children, rng, trial, "big", targeted=True)
            except BaseException:
                print(f"trial {trial} of seed {seed} failed")
                raise
        # Copies of 2 MiB under the lock make deaths inside it likely;
        # this proves recovery ran, not just that nothing went wrong.
        assert ring.info()["recoveries"] > 0, f"seed {seed}: no kill landed under a lock"


@pytest.mark.timeout(60)
def test_kill_getters_asleep_on_empty_ring(shm_name: Callable[[], str], children: Children) -> None:
    """Consumers killed while asleep in get on an empty ring leave it working."""
    with RingBuffer(shm_name(), create=True, capacity=1 << 16) as ring:
        for trial in range(3):
            procs = [children.start("getblock", ring.name, 0, trial * 3 + k) for k in range(3)]
            waits = ring.info()["get_waits"]
            wait_for(lambda: ring.info()["get_waits"] >= waits + 3, "getters to sleep", children)
            for i in procs:
                children.kill(i)
            assert all(children.reports(i) == [] for i in procs)
            assert survivor_check(ring) == []


@pytest.mark.timeout(60)
def test_kill_putters_asleep_on_full_ring(shm_name: Callable[[], str], children: Children) -> None:
    """Producers killed while asleep in put on a full ring leave it working, contents intact."""
    with RingBuffer(shm_name(), create=True, capacity=1 << 16) as ring:
        for trial in range(3):
            mine: List[Tuple[int, int]] = []
            # Fill it up to the last byte a record of theirs could use: big
            # messages first, then the smallest they send (a bare header).
            for n in (1000, 0):
                while True:
                    hdr = HDR.pack(999, len(mine), n, zlib.crc32(b"x" * n))
                    try:
                        ring.put_nowait(hdr + HDR_CRC.pack(zlib.crc32(hdr)) + b"x" * n)
                    except Full:
                        break
                    mine.append((999, len(mine)))
            procs = [children.start("putblock", ring.name, 500 + k, trial * 3 + k, "small") for k in range(3)]
            waits = ring.info()["put_waits"]
            wait_for(lambda: ring.info()["put_waits"] >= waits + 3, "putters to sleep", children)
            for i in procs:
                children.kill(i)
            # The ring was full all along: nothing of theirs got in.
            assert survivor_check(ring) == mine


@pytest.mark.timeout(60)
def test_kill_producer_waiting_for_consumption(shm_name: Callable[[], str], children: Children) -> None:
    """A producer killed while waiting in put(wait_consumed=True) leaves its message queued, whole."""
    with RingBuffer(shm_name(), create=True, capacity=1 << 16) as ring:
        i = children.start("waitc", ring.name, 7, 1)
        wait_for(lambda: ring.info()["put_waits"] >= 1, "the producer to wait", children)
        children.kill(i)
        assert survivor_check(ring) == [(7, 0)]
