"""Chaos: hundreds of SIGKILLs, and a campaign of stray writes into live rings.

* SIGKILL trials: two producers and two consumers on a small ring (4-64 KiB,
  so records wrap all the time) mix put, put_many, reserve, wait_consumed,
  get, get_many, get_into and view, with timeouts from none to non-blocking;
  each trial SIGKILLs one of them (at a random moment, or the moment it is
  seen holding a lock) and starts a new one.  No deadlock (everyone makes
  progress after every kill), nothing torn, nothing twice, every producer's
  messages in order, at most the in-flight messages of killed consumers
  missing, and the counters agree once the ring is drained.
* Scribbling: a victim calls everything with short timeouts while one write
  of 1-16 random bytes lands somewhere in the ring's header fields or record
  area.  The victim never crashes or hangs; a ring the write killed (fresh
  handles cannot attach, put and get) comes back after ``repair()``.

Workers are forked from a zygote (crash_helpers.Zygote), so a trial costs
milliseconds, not a Python start-up.  Figures are printed (run with -s).
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from crash_helpers import (
    FIELDS_END,
    Segment,
    Zygote,
    check_delivery,
    message,
    parse,
    read_reports,
    read_status,
    verify,
    wait_until,
)
from pyipc import CorruptedError, Empty, Full, RingBuffer, ShutDown
from pyipc._core import lib
from pyipc.ring import attach_for_repair

SLOW = pytest.mark.skipif(not os.environ.get("PYIPC_SLOW"), reason="long variant: set PYIPC_SLOW=1 to run it")
GET_MANY = 4  # the largest batch a consumer takes in one call (ring_worker.consume)
OFF_TAKE, OFF_TAIL = lib.PYIPC_OFF_CONS_TAKE, lib.PYIPC_OFF_PROD_TAIL
PROGRESS = 15.0  # seconds everyone gets to make progress after a kill before it counts as a deadlock


@pytest.fixture
def zygote(tmp_path: Path) -> Iterator[Zygote]:
    z = Zygote(tmp_path)
    try:
        yield z
    finally:
        z.close()


# ---- SIGKILL trials ---------------------------------------------------------


def survivor_check(ring: RingBuffer) -> List[Tuple[int, int]]:
    """With every worker dead: drain, probe (a message as large as the ring too), and check the
    counters agree and no lease is left."""
    queued = ring.check()
    drained = []
    # Non-blocking gets take over a dead holder's lock and end a dead
    # producer's open reservation, which hides from check() whatever was put
    # after it: all of it comes out here.
    while True:
        try:
            drained.append(parse(ring.get_nowait()))
        except Empty:
            break
    assert len(drained) >= queued, (len(drained), queued)
    probe = os.urandom(32)
    ring.put(probe, timeout=10)
    assert ring.get(timeout=10) == probe
    # A killed consumer's view holds its space until a producer needs it
    # (whoever waits behind a lease reaps it): the largest message needs
    # all of the ring.
    whole = os.urandom(ring.max_message_size)
    ring.put(whole, timeout=10)
    assert ring.get(timeout=10) == whole
    assert ring.check() == 0
    info = ring.info()
    assert info["puts"] == info["gets"] and info["bytes_put"] == info["bytes_got"], str(info)
    assert info["messages"] == 0 and info["bytes_used"] == 0 and info["reserves"] == 0 and info["views"] == 0, str(info)
    return drained


def chaos(ring: RingBuffer, zygote: Zygote, trials: int, rng: random.Random) -> Dict[str, int]:
    """Run ``trials`` kills on a ring with 2 producers and 2 consumers; check
    everything; return the figures."""
    name = ring.name
    assert name is not None
    seg = Segment(name)
    workers: Dict[str, Tuple[int, Path]] = {}
    outs: List[Path] = []  # every consumer incarnation's reports
    idents = iter(range(1, 1 << 30))
    figures = Counter(trials=trials)

    def start(slot: str) -> None:
        seed = rng.randrange(1 << 30)
        if slot[0] == "p":
            pid, out = zygote.spawn("produce", name=name, ident=next(idents), sizes="chaos", ops="mix",
                                    timeout="mix", seed=seed)
        else:
            pid, out = zygote.spawn("consume", name=name, ops="mix", timeout="mix", seed=seed)
            outs.append(out)
        workers[slot] = (pid, out)

    def kill(slot: str, targeted: bool) -> None:
        pid, out = workers.pop(slot)
        if targeted:
            owner = wait_until(lambda: read_status(out).get("owner"), "a worker to attach", 10)
            end = time.monotonic() + 0.05
            while time.monotonic() < end:
                if owner in (seg.holder("prod"), seg.holder("cons")):
                    figures["kills_seen_holding_a_lock"] += 1
                    break
        else:
            time.sleep(rng.uniform(0, 0.02))
        code = zygote.kill(pid)["code"]
        assert code == -signal.SIGKILL, f"a {slot} worker died by itself ({code}): {zygote.stderr(pid)}"
        figures["consumer_kills" if slot[0] == "c" else "producer_kills"] += 1

    try:
        for slot in ("p0", "p1", "c0", "c1"):
            start(slot)
        for trial in range(trials):
            info = ring.info()
            slot = rng.choice(("p0", "p1", "c0", "c1"))
            kill(slot, targeted=rng.random() < 0.4)
            start(slot)
            # No deadlock: puts and gets both go on after every kill.
            wait_until(lambda: ring.info()["gets"] > info["gets"] + 2 and ring.info()["puts"] > info["puts"] + 2,
                       f"progress after kill {trial}", PROGRESS)
        for slot in list(workers):
            kill(slot, targeted=False)
        drained = survivor_check(ring)
        streams = [read_reports(out) for out in outs]
        got = check_delivery(streams + [drained], may_lose=GET_MANY * figures["consumer_kills"])
        # What was still queued came after everything consumers took.
        taken: Dict[int, int] = {}
        for stream in streams:
            for p, seq in stream:
                taken[p] = max(taken.get(p, -1), seq)
        for p, seq in drained:
            assert seq > taken.get(p, -1), (p, seq)
        info = ring.info()
        figures["messages"] = info["gets"]
        figures["recoveries"] = info["recoveries"]
        figures["producers"] = len(got)
    finally:
        for pid, _ in workers.values():
            zygote.kill(pid)
        seg.close()
    return figures


def run_chaos(shm_name: Callable[[], str], zygote: Zygote, per_capacity: int) -> Counter:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    total: Counter = Counter()
    start = time.monotonic()
    for cap in (4096, 16384, 65536):
        with RingBuffer(shm_name(), create=True, capacity=cap) as ring:
            try:
                total.update(chaos(ring, zygote, per_capacity, rng))
            except BaseException:
                print(f"chaos seed {seed} failed at capacity {cap}")
                raise
    print(f"chaos (seed {seed}): {dict(total)} in {time.monotonic() - start:.1f} s")
    return total


@pytest.mark.timeout(150)
def test_sigkill_chaos(shm_name: Callable[[], str], zygote: Zygote) -> None:
    """210 SIGKILL trials (70 per capacity of 4, 16 and 64 KiB) across 2 producers and 2 consumers
    mixing every call and timeout: no deadlock, nothing torn or twice, order kept, at most the
    in-flight messages of killed consumers lost, counters consistent."""
    figures = run_chaos(shm_name, zygote, 70)
    assert figures["trials"] == 210


@SLOW
@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_sigkill_chaos_long(shm_name: Callable[[], str], zygote: Zygote) -> None:
    """1,500 SIGKILL trials of the above."""
    run_chaos(shm_name, zygote, 500)


# ---- scribbling on live rings -----------------------------------------------------


def dead_because(name: str, cap: int) -> Optional[str]:
    """Why fresh handles cannot use the ring (None: they can): attach, drain,
    put a probe and get it back; "check" if only check() fails."""
    try:
        h = RingBuffer(name)
    except CorruptedError:
        return "attach"
    probe = os.urandom(16)
    try:
        with h:
            for _ in range(cap // 8 + 1):
                h.get(timeout=0.02)
    except Empty:
        pass
    except (CorruptedError, ShutDown) as e:
        return type(e).__name__
    try:
        with RingBuffer(name) as h, RingBuffer(name) as h2:
            h.put(probe, timeout=0.2)
            if h2.get(timeout=0.2) != probe:
                return "wrong message"
    except (CorruptedError, Empty, Full, ShutDown, TimeoutError) as e:
        return type(e).__name__
    try:
        with RingBuffer(name) as h:
            h.check()
    except (CorruptedError, TimeoutError):
        return "check"
    return None


def snapshot(name: str, shm_name: Callable[[], str]) -> str:
    """A copy of ring ``name`` under a new name (removed by the fixture)."""
    copy = shm_name()
    shutil.copyfile(f"/dev/shm/{name}", f"/dev/shm/{copy}")
    return copy


def from_victim(m: bytes) -> bool:
    """The victim puts zeros, and writes one b"r" at the start of a reservation."""
    return m[:1] in (b"", b"\0", b"r") and not m[1:].strip(b"\0")


def campaign(shm_name: Callable[[], str], zygote: Zygote, runs: int) -> Counter:
    """``runs`` rings, one stray write each while a victim works on it; returns the figures."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    figures: Counter = Counter(runs=runs)
    for run in range(runs):
        cap = rng.choice((4096, 16384, 65536))
        name = shm_name()
        copies: List[str] = []
        with RingBuffer(name, create=True, capacity=cap) as ring:
            for i in range(rng.randrange(0, 200)):
                try:
                    ring.put_nowait(message(0, i, os.urandom(rng.randrange(0, cap // 16))))
                except Full:
                    break
            pid, out = zygote.spawn("victim", name=name, seed=rng.randrange(1 << 30), duration=0.05)
            wait_until(lambda: read_status(out).get("attached"), "the victim to attach", 30)
            time.sleep(rng.uniform(0, 0.01))
            seg = Segment(name)
            n = rng.randint(1, 16)
            region = rng.choice(("header", "header", "records", "records", "data"))
            take, tail = seg.u64(OFF_TAKE), seg.u64(OFF_TAIL)
            if region == "records" and 0 < tail - take <= cap:
                off = 4096 + rng.randrange(take, tail) % cap  # somewhere in a queued record
            else:
                region = "data" if region == "records" else region
                lo, hi = (0, FIELDS_END) if region == "header" else (4096, 4096 + cap)
                off = rng.randrange(lo, hi)
            off = min(off, seg.size - n)
            seg.write(off, os.urandom(n))
            seg.close()
            figures[f"writes_{region}"] += 1
            ended = zygote.wait_exit(pid, 30)
            assert ended["code"] == 0, f"run {run} (seed {seed}): the victim ended with {ended['code']}: " \
                                       f"{zygote.stderr(pid)}"
            where = f"run {run} (seed {seed}): {n} bytes at {off} ({region})"
            # Was the ring dead?  Asked of copies, so that the ring itself
            # goes to repair() as the write left it.
            copies.append(snapshot(name, shm_name))
            why = dead_because(copies[-1], cap)
            if why == "check":
                figures["only_check_failed"] += 1  # the ring still works
            elif why is not None:
                figures["killed"] += 1
                figures[f"killed_{region}"] += 1
                figures[f"killed_by_{why}"] += 1
                # Could `pyipc repair` (a fresh handle, nobody else attached)
                # have brought it back?  It refuses what has lost pyipc's magic.
                copy = snapshot(name, shm_name)
                copies.append(copy)
                try:
                    try:
                        fixer = RingBuffer(copy)
                    except CorruptedError:
                        fixer = attach_for_repair(copy)
                except CorruptedError:
                    figures["refused_by_pyipc_repair"] += 1
                else:
                    with fixer:
                        fixer.repair()
                    assert dead_because(copy, cap) is None, f"{where}: still dead after pyipc repair's way"
            # The repair, by the handle that made the ring.
            dropped = ring.repair()
            kept = ring.check()
            figures["dropped_messages"] += dropped
            figures["repairs_that_dropped"] += dropped > 0
            # What repair kept comes out, and our own messages in order.
            with RingBuffer(name) as h:
                last = -1
                for _ in range(kept):
                    m = h.get(timeout=5)
                    got = verify(m)
                    if got is not None:
                        assert got[1] > last, f"{where}: out of order after repair"
                        last = got[1]
                    elif not from_victim(m):
                        figures["payloads_changed_by_the_write"] += 1  # no checksum on payloads
            after = dead_because(name, cap)
            assert after is None, f"{where}: after repair: {after}"
            ring.put(b"old handle", timeout=5)
            with RingBuffer(name) as h:
                assert h.get(timeout=5) == b"old handle"
        for made in [name, *copies]:  # the campaign makes thousands
            os.unlink(f"/dev/shm/{made}")
    print(f"scribble campaign (seed {seed}): {dict(figures)}")
    return figures


@pytest.mark.timeout(300)
def test_scribble_campaign_then_repair(shm_name: Callable[[], str], zygote: Zygote) -> None:
    """120 live rings each hit by one 1-16 byte stray write while a victim works on them: no victim
    crashes or hangs, and every ring the write killed comes back after repair()."""
    campaign(shm_name, zygote, 120)


@SLOW
@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_scribble_campaign_then_repair_long(shm_name: Callable[[], str], zygote: Zygote) -> None:
    """1,000 runs of the above."""
    campaign(shm_name, zygote, 1000)
