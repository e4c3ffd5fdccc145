"""``pyipc ls``, ``info``, ``rm`` and ``repair`` on topics, run as real subprocesses."""
from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
from typing import Callable

import pytest

from pyipc import CorruptedError, Publisher, Subscriber
from pyipc._core import lib

PY_M = [sys.executable, "-m", "pyipc"]

pytestmark = pytest.mark.timeout(60)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PY_M, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def topic(shm_name: Callable[[], str]):  # type: ignore[no-untyped-def]
    """An "overwrite" topic of one page with two subscribers: one read a little, one nothing."""
    with Publisher(shm_name(), create=True, capacity=4096, overflow="overwrite") as p, \
            Subscriber(p.name) as a, Subscriber(p.name) as b:
        for _ in range(100):
            p.publish(b"x" * 50)
        a.recv_into(bytearray(100))  # exactly one message (recv() would read ahead)
        yield p, a, b


def test_ls_lists_topics(topic) -> None:  # type: ignore[no-untyped-def]
    """ls shows a topic's capacity, policy, subscribers, published and retained counts and largest lag."""
    p, a, b = topic
    out = run("ls")
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.split() and ln.split()[0] == p.name)
    fields = line.split()
    assert fields[1:8] == ["4096", "overwrite", "2", "100", str(p.info()["retained"]), "100", str(os.getpid())]
    rows = {r["name"]: r for r in json.loads(run("ls", "--json").stdout)}
    assert rows[p.name]["kind"] == "topic" and rows[p.name]["subscribers"] == 2


def test_info_shows_each_subscriber(topic) -> None:  # type: ignore[no-untyped-def]
    """info on a topic shows the header and, per subscriber, its lag, messages received and missed."""
    p, a, b = topic
    out = run("info", p.name)
    assert out.returncode == 0, out.stderr
    assert "overflow           overwrite" in out.stdout
    assert "subscribers        2 of 16" in out.stdout
    j = json.loads(run("info", p.name, "--json").stdout)
    subs = {s["slot"]: s for s in j["subscribers_detail"]}
    assert subs[0]["received"] == 1 and subs[0]["missed"] == a.missed > 0
    assert subs[0]["lag"] == a.pending and subs[1]["lag"] == 100
    assert subs[1]["received"] == 0


def test_info_after_a_subscriber_died(shm_name: Callable[[], str]) -> None:
    """A subscriber whose process died is detached by the next look, and info no longer lists it."""
    with Publisher(shm_name(), create=True) as p:
        code = f"import pyipc, os, signal; s = pyipc.Subscriber({p.name!r}); os.kill(os.getpid(), signal.SIGKILL)"
        subprocess.run([sys.executable, "-c", code], timeout=60)
        j = json.loads(run("info", p.name, "--json").stdout)
        assert j["subscribers"] == 0 and j["subscribers_detail"] == []


def test_repair_and_rm_topic(topic) -> None:  # type: ignore[no-untyped-def]
    """repair fixes a topic whose subscriber slot was scribbled on; rm removes a topic."""
    p, a, b = topic
    fd = os.open(f"/dev/shm/{p.name}", os.O_RDWR)
    try:
        m = mmap.mmap(fd, 4096)
    finally:
        os.close(fd)
    m[lib.PYIPC_OFF_TOPIC_SLOTS + lib.PYIPC_OFF_SLOT_READ : lib.PYIPC_OFF_TOPIC_SLOTS + lib.PYIPC_OFF_SLOT_READ + 8] = (
        (1 << 40) + 3).to_bytes(8, "little")
    m.close()
    with pytest.raises(CorruptedError):
        p.check()
    out = run("repair", p.name)
    assert out.returncode == 0, out.stderr
    assert "repaired" in out.stdout and "still retained" in out.stdout
    assert p.check() == p.info()["retained"]
    out = run("rm", "-v", p.name)
    assert out.returncode == 0 and not os.path.exists(f"/dev/shm/{p.name}")
