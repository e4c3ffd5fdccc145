"""Topics across real processes: order, overwrite under load, and processes killed at any instant.

Children are made with fork and spawn (multiprocessing) or with os.fork for
the many short SIGKILL trials.  Messages check themselves: a header with
the publisher, its sequence number, the payload's length and CRC, and a CRC
of the header, so a torn or half-written message can never pass.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from typing import List, Tuple

import pytest

from pyipc import Empty, Full, Publisher, ShutDown, Subscriber

METHODS = [m for m in ("fork", "spawn") if m in mp.get_all_start_methods()]
HDR = struct.Struct("<IQII")  # publisher, sequence, payload length, payload CRC
HDR_CRC = struct.Struct("<I")
HEAD = HDR.size + HDR_CRC.size


def message(pub: int, seq: int, payload: bytes) -> bytes:
    hdr = HDR.pack(pub, seq, len(payload), zlib.crc32(payload))
    return hdr + HDR_CRC.pack(zlib.crc32(hdr)) + payload


def parse(m: bytes) -> Tuple[int, int]:
    """(publisher, sequence) of a whole message; AssertionError for a torn one."""
    assert len(m) >= HEAD, f"torn: {len(m)} bytes"
    pub, seq, n, crc = HDR.unpack_from(m)
    assert HDR_CRC.unpack_from(m, HDR.size)[0] == zlib.crc32(m[: HDR.size]), "torn header"
    assert len(m) == HEAD + n and zlib.crc32(m[HEAD:]) == crc, "torn payload"
    return pub, seq


# ---- children (module level: spawn imports them) ----------------------------


def _publish_tagged(pub: Publisher, ident: int, n: int) -> None:
    rng = random.Random(ident)
    for seq in range(n):
        pub.publish(message(ident, seq, rng.randbytes(rng.randrange(0, 300))), timeout=30)


def _receive_until_shutdown(sub: Subscriber, out: "mp.Queue[object]", mode: str) -> None:
    got: List[Tuple[int, int]] = []
    torn = 0
    rng = random.Random(os.getpid())
    try:
        while True:
            try:
                if mode == "many":
                    msgs = sub.recv_many(64, timeout=30)
                elif mode == "view":
                    with sub.view(timeout=30) as v:
                        msgs = [bytes(v)]
                else:
                    msgs = [sub.recv(timeout=30)]
                    if mode == "slow" and rng.random() < 0.01:
                        time.sleep(0.002)
            except ShutDown:
                break
            for m in msgs:
                try:
                    got.append(parse(m))
                except AssertionError:
                    torn += 1
        out.put((got, torn, sub.missed))
    finally:
        sub.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", METHODS)
def test_two_publishers_one_order(method, shm_name):
    """With two publisher processes, every subscriber process gets every message once, all in one common order."""
    ctx = mp.get_context(method)
    n = 3000
    with Publisher(shm_name(), create=True, capacity=1 << 14) as topic:
        out = ctx.Queue()
        subs = []
        for mode in ("one", "many", "view"):
            s = Subscriber(topic.name)  # attached before any publish
            subs.append(ctx.Process(target=_receive_until_shutdown, args=(s, out, mode)))
            subs[-1].start()
            s.close()
        # The children attach anew: wait for them, then drop our own slots' absence.
        deadline = time.monotonic() + 30
        while topic.subscribers < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        if method == "fork":
            # Forked copies subscribe at their first call: give them a moment.
            time.sleep(0.5)
        pubs = [ctx.Process(target=_publish_tagged, args=(Publisher(topic.name), i, n)) for i in (1, 2)]
        for p in pubs:
            p.start()
        for p in pubs:
            p.join(60)
            assert p.exitcode == 0
        topic.shutdown()
        results = [out.get(timeout=60) for _ in subs]
        for c in subs:
            c.join(30)
            assert c.exitcode == 0
    orders = [r[0] for r in results]
    for got, torn, missed in results:
        assert torn == 0 and missed == 0
        assert sorted(got) == sorted((i, s) for i in (1, 2) for s in range(n))
        for ident in (1, 2):
            seqs = [s for p, s in got if p == ident]
            assert seqs == list(range(n))
    assert orders[0] == orders[1] == orders[2]


def _hammer(pub: Publisher, seconds: float, out: "mp.Queue[object]") -> None:
    rng = random.Random(7)
    pool = rng.randbytes(1 << 16)
    seq = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if rng.random() < 0.9:
            size = rng.randrange(0, 200)
        else:
            size = rng.randrange(1000, 12000)
        off = rng.randrange(0, len(pool) - size + 1)
        if rng.random() < 0.1:
            m = message(1, seq, pool[off : off + size])
            with pub.reserve(len(m), timeout=10) as buf:
                buf[:] = m
            seq += 1
        else:
            batch = [message(1, seq + i, pool[off : off + size]) for i in range(rng.choice((1, 1, 4)))]
            if len(batch) == 1:
                pub.publish(batch[0], timeout=10)
            else:
                assert pub.publish_many(batch, timeout=10) == len(batch)
            seq += len(batch)
    out.put(seq)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", METHODS)
def test_overwrite_under_hammer(method, shm_name):
    """A publisher hammering small and large messages never waits; subscribers never see a torn one and received + missed == published."""
    ctx = mp.get_context(method)
    with Publisher(shm_name(), create=True, capacity=1 << 15, overflow="overwrite") as topic:
        out = ctx.Queue()
        subs = []
        for mode in ("one", "many", "slow", "view"):
            s = Subscriber(topic.name)
            subs.append(ctx.Process(target=_receive_until_shutdown, args=(s, out, mode)))
            subs[-1].start()
            s.close()
        deadline = time.monotonic() + 30
        while topic.subscribers < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        if method == "fork":
            time.sleep(0.5)
        # The publisher's own handle is made in the child (pickled by name).
        hammer = ctx.Process(target=_hammer, args=(topic, 2.0, out))
        hammer.start()
        published = out.get(timeout=60)
        hammer.join(30)
        assert hammer.exitcode == 0
        topic.shutdown()
        results = [out.get(timeout=60) for _ in subs]
        for c in subs:
            c.join(30)
            assert c.exitcode == 0
    assert any(missed for _, _, missed in results), "nobody fell behind: the test proved nothing"
    for got, torn, missed in results:
        assert torn == 0
        seqs = [s for _, s in got]
        assert seqs == sorted(set(seqs)), "out of order or repeated"
        assert len(got) + missed == published


# ---- SIGKILL trials ----------------------------------------------------------


def _forked(fn) -> int:  # type: ignore[no-untyped-def]
    pid = os.fork()
    if pid == 0:
        try:
            fn()
        finally:
            os._exit(0)
    return pid


@pytest.mark.timeout(300)
def test_subscriber_killed_at_random_never_stalls(shm_name):
    """Subscribers SIGKILLed at random instants (240 trials) never hold a "block" publisher up: it goes on at once."""
    rng = random.Random(2024)
    with Publisher(shm_name(), create=True, capacity=4096, max_subscribers=4) as topic:
        name = topic.name
        seq = 0

        for trial in range(240):
            mode = trial % 3

            def child() -> None:
                s = Subscriber(name)
                while True:
                    if mode == 0:
                        s.recv()
                    elif mode == 1:
                        s.recv_many(8)
                    else:
                        with s.view() as v:
                            bytes(v)

            pid = _forked(child)
            end = time.monotonic() + rng.random() * 0.02
            while time.monotonic() < end:
                try:
                    topic.publish(b"%d" % seq + b"." * rng.randrange(0, 400), timeout=0.001)
                    seq += 1
                except Full:
                    pass
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            # The dead subscriber is detached at the next look, and never
            # holds the publisher: a ring's worth goes through at once.
            assert topic.subscribers == 0
            for _ in range(20):
                topic.publish(b"x" * 400, timeout=2)
        assert topic.check() >= 0
        assert topic.info()["subscribers"] == 0


@pytest.mark.timeout(120)
def test_blocked_publisher_released_by_subscriber_death(shm_name):
    """A publisher blocked by a slow subscriber returns soon after that subscriber is killed."""
    with Publisher(shm_name(), create=True, capacity=4096) as topic:
        name = topic.name
        r, w = os.pipe()

        def child() -> None:
            s = Subscriber(name)
            os.write(w, b"k")
            time.sleep(60)
            s.close()

        pid = _forked(child)
        assert os.read(r, 1) == b"k"
        with pytest.raises(Full):
            while True:
                topic.publish(b"y" * 100, block=False)
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        topic.publish(b"y" * 100, timeout=5)  # woken by its death, within the 10 ms poll
        assert time.monotonic() - t0 < 5
        os.waitpid(pid, 0)
        os.close(r)
        os.close(w)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("holder", ["reservation", "subscriber"])
def test_non_blocking_calls_get_past_a_dead_holder(shm_name, holder):
    """What a SIGKILLed process held is given back at the first non-blocking call it is in the
    way of: recv(block=False) gets a message published after a dead publisher's open
    reservation, and publish(block=False) gets the room a dead subscriber of a "block" topic
    held.  Else a caller that only polls would wait behind it for good."""
    with Publisher(shm_name(), create=True, capacity=4096) as topic, Subscriber(topic.name) as sub:
        name = topic.name
        r, w = os.pipe()

        def child() -> None:
            if holder == "reservation":
                with Publisher(name).reserve(100) as buf:
                    buf[:] = b"r" * 100
                    os.write(w, b"k")
                    time.sleep(60)
            else:
                s = Subscriber(name)  # attached, and never reads
                os.write(w, b"k")
                time.sleep(60)
                s.close()

        pid = _forked(child)
        try:
            assert os.read(r, 1) == b"k"
            if holder == "reservation":
                topic.publish(b"after", block=False)  # published, but behind the reservation
                with pytest.raises(Empty):
                    sub.recv(block=False)
            else:
                with pytest.raises(Full):
                    while True:
                        topic.publish(b"y" * 100, block=False)
                        sub.recv(block=False)  # our own subscriber keeps up
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
            os.close(w)
        if holder == "reservation":
            assert sub.recv(block=False) == b"after"
        else:
            topic.publish(b"z" * 100, block=False)


@pytest.mark.timeout(300)
def test_publisher_killed_mid_publish(shm_name):
    """A publisher SIGKILLed at random instants (inside publish or reserve) never shows a torn message; the topic goes on."""
    rng = random.Random(99)
    with Publisher(shm_name(), create=True, capacity=1 << 20) as topic, Subscriber(topic.name) as sub:
        name = topic.name
        for trial in range(40):

            def child() -> None:
                p = Publisher(name)
                crng = random.Random(trial)
                big = crng.randbytes(300_000)
                seq = 0
                while True:
                    m = message(trial, seq, big[: crng.randrange(0, len(big))])
                    if seq % 2:
                        with p.reserve(len(m)) as buf:
                            buf[:] = m
                    else:
                        p.publish(m)
                    seq += 1

            pid = _forked(child)
            end = time.monotonic() + rng.random() * 0.05
            last = -1
            while time.monotonic() < end:
                try:
                    ident, seq = parse(sub.recv(timeout=0.01))
                    assert ident == trial and seq == last + 1
                    last = seq
                except Empty:
                    pass
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            # Whatever it left behind: whole messages in order, then nothing.
            while True:
                try:
                    ident, seq = parse(sub.recv(timeout=0.05))
                except Empty:
                    break
                assert ident == trial and seq == last + 1
                last = seq
            topic.publish(b"alive", timeout=2)
            assert sub.recv(timeout=2) == b"alive"
        assert topic.check() == topic.info()["retained"]


# ---- other PID namespaces ---------------------------------------------------

UNSHARE = shutil.which("unshare")

NS_CHILD = r"""
import sys, time
from pyipc import Subscriber
s = Subscriber(sys.argv[1])
print("ready", flush=True)
print(s.recv(timeout=30).decode(), flush=True)
time.sleep(60)
"""


@pytest.mark.timeout(120)
def test_subscriber_in_another_pid_namespace(shm_name):
    """A subscriber in another PID namespace receives, holds a "block" topic back while alive, and is detached once killed."""
    if UNSHARE is None:
        pytest.skip("unshare(1) is not installed")
    probe = subprocess.run([UNSHARE, "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a PID namespace here: {probe.stderr.decode().strip()}")
    with Publisher(shm_name(), create=True, capacity=4096) as topic:
        child = subprocess.Popen(
            [UNSHARE, "--pid", "--fork", "--mount-proc", sys.executable, "-c", NS_CHILD, topic.name],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
            assert topic.subscribers == 1
            topic.publish(b"hello from the host")
            assert child.stdout.readline().strip() == "hello from the host"
            with pytest.raises(Full):
                while True:
                    topic.publish(b"z" * 100, block=False)
            # Its pid means nothing here: kill the whole session by group.
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(30)
            deadline = time.monotonic() + 10
            while topic.subscribers and time.monotonic() < deadline:
                time.sleep(0.01)
            assert topic.subscribers == 0
            topic.publish(b"z" * 100, timeout=2)
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait(30)
