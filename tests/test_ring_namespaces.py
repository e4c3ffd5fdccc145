"""Lock ownership across PID namespaces (containers of one pod sharing /dev/shm).

Workers run in new PID namespaces with ``unshare --pid --fork --mount-proc``
(as root; skipped with the reason where that cannot be done), beside workers
in the test's own namespace, all on one ring:

* a namespaced producer copying 64-96 MiB messages is never taken for dead
  (zero recoveries, every message intact and exactly once), and when it is
  SIGKILLed inside a put, holding the producers' lock, the others go on;
* a dead holder in one namespace is taken over by a waiter in another, and a
  live one never is, however many short calls fail against it;
* inside a namespace, where the next pid can be chosen, a dead holder whose
  pid now belongs to a live process that attached the ring is still dead.
"""
from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List

import pytest

from crash_helpers import (
    Proc,
    Segment,
    check_delivery,
    read_reports,
    unshare_why_not,
    wait_until,
)
from pyipc import RingBuffer

WHY_NOT = unshare_why_not()
pytestmark = pytest.mark.skipif(bool(WHY_NOT), reason=WHY_NOT)
BOUND = 5.0  # functional bound on the others going on (the contract says 100 ms)


@pytest.fixture
def procs() -> Iterator[List[Proc]]:
    made: List[Proc] = []
    try:
        yield made
    finally:
        for p in made:
            p.close()


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def stop_holding(seg: Segment, side: str, p: Proc, owner: int, limit: float = 60.0) -> None:
    """SIGSTOP p at a moment it holds the side's lock (so that a SIGKILL that
    follows lands inside the critical section for sure)."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        p.check_alive()
        if seg.holder(side) != owner:
            continue
        p.signal(signal.SIGSTOP)
        wait_until(lambda: _state(p.pid) == "T", "the holder to stop", 10)
        if seg.holder(side) == owner:
            return
        p.signal(signal.SIGCONT)
    raise AssertionError(f"never caught the {side} lock holder")


@pytest.mark.timeout(240)
def test_namespaced_big_producer_beside_host_peers(shm_name: Callable[[], str], tmp_path: Path,
                                                   procs: List[Proc]) -> None:
    """A producer in its own PID namespace puts 64-96 MiB messages beside two host producers of
    small messages and two host consumers checking CRCs: no recovery, every message intact and
    exactly once in order; then it is SIGKILLed inside a put, holding the producers' lock: one
    recovery, the others go on, nothing torn, nothing of theirs lost."""
    name = shm_name()
    producers: Dict[int, Proc] = {}
    consumers: List[Proc] = []

    def start(role: str, ns: bool = False, **args: object) -> Proc:
        p = Proc(role, {"name": name, **args}, tmp_path / f"{role}-{len(procs)}.out", ns=ns)
        procs.append(p)
        if role == "produce":
            producers[int(args["ident"])] = p  # type: ignore[call-overload]
        else:
            consumers.append(p)
        return p

    with RingBuffer(name, create=True, capacity=128 << 20) as ring:
        seg = Segment(name)
        try:
            big = start("produce", ns=True, ident=1, sizes=[64 << 20, 96 << 20], seed=1)
            for i in range(2):
                # Rate-limited: a flood of small puts that keeps the ring
                # fuller than 32 MiB would leave a 96 MiB put no room, ever.
                start("produce", ident=10 + i, sizes="small", seed=10 + i, rate=20000)
            for i in range(2):
                start("consume", seed=20 + i)
            for p in procs:
                p.wait_status("owner")
            owner = big.wait_status("owner")
            assert big.status()["pid"] == 1, "the big producer is not in a namespace of its own"
            t0 = time.monotonic()
            # A few seconds, and at least three big messages through.
            wait_until(lambda: big.status().get("sent", 0) >= 3 and time.monotonic() - t0 > 3,
                       "big messages to flow", 120, big.check_alive)
            assert ring.info()["recoveries"] == 0, "a live namespaced producer's lock was taken over"

            # SIGKILL inside a put: stopped while holding the lock, then killed.
            stop_holding(seg, "prod", big, owner)
            sent = big.status()["sent"]  # its puts that had returned
            info = ring.info()
            big.kill()
            t_dead = time.monotonic()
            wait_until(lambda: ring.info()["puts"] > info["puts"] + 100 and ring.info()["gets"] > info["gets"] + 100,
                       "the others to go on", BOUND)
            print(f"others went on {time.monotonic() - t_dead:.3f} s after the kill")
            assert ring.info()["recoveries"] == 1
            time.sleep(1)

            for ident, p in producers.items():
                if ident != 1:
                    p.signal(signal.SIGUSR1)
            complete = {ident: p.wait_status("done") for ident, p in producers.items() if ident != 1}
            ring.shutdown()
            for c in consumers:
                assert c.wait(120) == 0, c.stderr()
            got = check_delivery([read_reports(c.out) for c in consumers], complete=complete)
            # The killed producer's messages form a prefix (checked above):
            # every put that returned, and the one it died in wholly or not at all.
            assert sent <= got.get(1, 0) <= sent + 1, (sent, got)
            assert ring.info()["recoveries"] == 1
            assert ring.check() == 0
            print(f"big messages delivered: {got.get(1, 0)}; small: {complete}")
        finally:
            seg.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("side", ["prod", "cons"])
@pytest.mark.parametrize("holder_ns,waiter_ns", [(False, True), (True, False), (True, True)],
                         ids=["waiter-in-ns", "holder-in-ns", "two-namespaces"])
def test_dead_holder_across_namespaces(shm_name: Callable[[], str], tmp_path: Path, procs: List[Proc],
                                       side: str, holder_ns: bool, waiter_ns: bool) -> None:
    """A holder in one PID namespace and a waiter making 2 ms / non-blocking calls in another:
    not taken over while the holder lives, taken over once it is SIGKILLed."""
    name = shm_name()
    with RingBuffer(name, create=True, capacity=1 << 16) as ring:
        seg = Segment(name)
        try:
            if side == "cons":
                for _ in range(4):
                    ring.put(b"m" * 16)
            holder = Proc("hold", {"name": name, "side": side}, tmp_path / "holder.out", ns=holder_ns)
            procs.append(holder)
            holder.wait_status("held")
            owner = holder.status()["owner"]
            assert (holder.status()["pid"] == 1) == holder_ns
            waiter = Proc("wait_lock", {"name": name, "side": side, "timeout": "short"}, tmp_path / "waiter.out",
                          ns=waiter_ns)
            procs.append(waiter)
            waiter.wait_status("blocked")
            time.sleep(0.5)
            st = waiter.status()
            assert "ok" not in st and st["fails"] > 3, st
            assert seg.holder(side) == owner and ring.info()["recoveries"] == 0, "a live holder lost its lock"
            t_kill = time.monotonic()
            holder.kill()
            ok = waiter.wait_status("ok", BOUND + 5)
            print(f"{side}: taken over {(ok - t_kill) * 1e3:.1f} ms after the kill")
            assert ok - t_kill < BOUND
            assert waiter.wait(30) == 0
            assert ring.info()["recoveries"] == 1
            ring.put(b"probe", timeout=5)
            while ring.get(timeout=5) != b"probe":
                pass
        finally:
            seg.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("side", ["prod", "cons"])
@pytest.mark.parametrize("how", ["poke", "put"])
def test_dead_holder_pid_reused(shm_name: Callable[[], str], tmp_path: Path, procs: List[Proc],
                                side: str, how: str) -> None:
    """A holder killed inside the lock whose pid then goes to a new process that attaches the
    ring (forced with ns_last_pid in a new PID namespace) is still taken over."""
    name = shm_name()
    with RingBuffer(name, create=True, capacity=32 << 20) as ring:
        seg = Segment(name)
        try:
            init = Proc("pid_reuse", {"name": name, "side": side, "how": how}, tmp_path / "ns.out", ns=True)
            procs.append(init)
            init.wait_status("reuser_pid", 60)
            init.wait_status("b_owner")
            st = init.status()
            assert st["reuser_pid"] == st["killed_pid"] == st["a_pid"] == st["b_pid"], st
            assert st["b_owner"] != st["a_owner"], st
            # Nobody has touched the lock since the holder died.
            assert st["dead_word"] & 0x7FFFFFFF == st["a_owner"], st
            assert seg.holder(side) == st["a_owner"], st
            assert ring.info()["recoveries"] == 0
            ring.put(b"probe", timeout=5)
            while ring.get(timeout=5) != b"probe":
                pass
            assert ring.info()["recoveries"] == 1
            # And the process that has the dead holder's pid works too.
            open(str(init.out) + ".go", "w").close()
            init.wait_status("b_put")
            assert ring.get(timeout=5) == b"from the reuser"
            assert ring.check() == 0
        finally:
            seg.close()
