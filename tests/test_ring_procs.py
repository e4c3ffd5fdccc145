"""RingBuffer across real processes: ordering, MPMC, wake-ups, signals, pickling."""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pyipc import Empty, RingBuffer

pytestmark = pytest.mark.timeout(120)


def _produce_sequence(name: str, n: int) -> None:
    ring = RingBuffer(name)
    for i in range(n):
        # Varying sizes so records wrap at every offset.
        ring.put(i.to_bytes(4, "little") * (1 + i % 13))
    ring.close()


def _produce_tagged(name: str, pid: int, n: int) -> None:
    ring = RingBuffer(name)
    for i in range(n):
        ring.put(b"%d %d " % (pid, i) + b"." * (i % 50))
    ring.close()


def _consume_until_stop(name: str, out_path: str) -> None:
    ring = RingBuffer(name)
    got = []
    while True:
        m = ring.get(timeout=20)
        if m == b"STOP":
            break
        pid, seq, _ = m.split(b" ", 2)
        got.append((int(pid), int(seq)))
    with open(out_path, "wb") as f:
        pickle.dump(got, f)
    ring.close()


def _get_one_and_report(ring: RingBuffer, result: RingBuffer) -> None:
    # Both rings arrive pickled by name: this is the attach-in-child path.
    result.put(b"child got " + ring.get(timeout=20))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_spsc_ordered_100k(shm_name, method):
    """100 000 messages from a child producer arrive complete and in order."""
    n = 100_000
    with RingBuffer(shm_name(), create=True, capacity=1 << 16) as ring:
        ctx = mp.get_context(method)
        p = ctx.Process(target=_produce_sequence, args=(ring.name, n))
        p.start()
        for i in range(n):
            assert ring.get(timeout=20) == i.to_bytes(4, "little") * (1 + i % 13)
        p.join(20)
        assert p.exitcode == 0
        assert ring.empty()


def test_mpmc_exactly_once_per_producer_order(shm_name, tmp_path):
    """3 producers x 3 consumers: each message once, each producer's in order."""
    n, producers, consumers = 20_000, 3, 3
    ctx = mp.get_context("fork")
    with RingBuffer(shm_name(), create=True, capacity=1 << 14) as ring:
        outs = [str(tmp_path / f"c{i}.pkl") for i in range(consumers)]
        cs = [ctx.Process(target=_consume_until_stop, args=(ring.name, o)) for o in outs]
        ps = [ctx.Process(target=_produce_tagged, args=(ring.name, i, n)) for i in range(producers)]
        for p in cs + ps:
            p.start()
        for p in ps:
            p.join(60)
            assert p.exitcode == 0
        for _ in cs:
            ring.put(b"STOP")
        for p in cs:
            p.join(60)
            assert p.exitcode == 0
        seen = []
        for o in outs:
            with open(o, "rb") as f:
                got = pickle.load(f)
            # Within one consumer, each producer's messages are increasing.
            last: dict[int, int] = {}
            for pid, seq in got:
                assert seq > last.get(pid, -1)
                last[pid] = seq
            seen.extend(got)
        assert sorted(seen) == [(p, i) for p in range(producers) for i in range(n)]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_blocked_get_woken_from_other_process_and_pickling(shm_name, method):
    """A child blocked in get wakes when the parent puts; rings pickle by name."""
    ctx = mp.get_context(method)
    with RingBuffer(shm_name(), create=True, capacity=4096) as ring, RingBuffer(
        shm_name(), create=True, capacity=4096
    ) as result:
        p = ctx.Process(target=_get_one_and_report, args=(ring, result))
        p.start()
        # Wait until the child sleeps in get (it counts as a get wait).
        deadline = time.monotonic() + 20
        while ring.stats()["get_waits"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ring.stats()["get_waits"] >= 1
        ring.put(b"wake up")
        assert result.get(timeout=20) == b"child got wake up"
        p.join(20)
        assert p.exitcode == 0


def _consume_slowly(name: str, n: int) -> None:
    ring = RingBuffer(name)
    for _ in range(n):
        time.sleep(0.05)
        ring.get(timeout=20)
    ring.close()


def test_wait_consumed_across_processes(shm_name):
    """wait_consumed returns only after a consumer in another process took it."""
    with RingBuffer(shm_name(), create=True, capacity=4096) as ring:
        p = mp.get_context("fork").Process(target=_consume_slowly, args=(ring.name, 3))
        p.start()
        for i in range(3):
            ring.put(b"%d" % i, wait_consumed=True, timeout=20)
            assert ring.stats()["gets"] == i + 1
        p.join(20)
        assert p.exitcode == 0


def test_ctrl_c_interrupts_blocked_get(shm_name):
    """SIGINT makes a get blocked with no timeout raise KeyboardInterrupt at once."""
    with RingBuffer(shm_name(), create=True, capacity=4096) as ring:
        script = textwrap.dedent(
            f"""
            import sys, time
            from pyipc import RingBuffer
            r = RingBuffer({ring.name!r})
            print("ready", flush=True)
            try:
                r.get()
            except KeyboardInterrupt:
                print("interrupted", flush=True)
                sys.exit(0)
            sys.exit(3)
            """
        )
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"ready\n"
            deadline = time.monotonic() + 20
            while ring.stats()["get_waits"] == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            proc.send_signal(signal.SIGINT)
            # The contract: a blocked call raises KeyboardInterrupt promptly.
            assert proc.wait(timeout=1.0) == 0
            assert proc.stdout.read() == b"interrupted\n"
        finally:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(30)
def test_idle_consumer_sleeps(shm_name):
    """A consumer blocked for 3 s sleeps in the kernel instead of spinning."""
    with RingBuffer(shm_name(), create=True, capacity=4096) as ring:
        script = (
            f"from pyipc import RingBuffer, Empty\nr = RingBuffer({ring.name!r})\n"
            "try:\n    r.get(timeout=3.0)\nexcept Empty:\n    print('empty')\n"
        )
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        assert proc.returncode == 0
        # Interpreter start-up costs a fraction of a second; a waiter that
        # spun would add the whole 3 s on top.
        assert usage.ru_utime + usage.ru_stime < 1.5


def test_get_timeout_across_process_with_no_producer(shm_name):
    """A get with a timeout on a ring nobody feeds raises Empty."""
    with RingBuffer(shm_name(), create=True, capacity=4096) as ring:
        with pytest.raises(Empty):
            ring.get(timeout=0.1)
