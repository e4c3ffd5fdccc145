"""A lock holder that cannot run - throttled by its cgroup, or frozen - keeps its lock.

The holder is a real process doing a large put (so it is inside the copy,
holding the producers' lock) when its cgroup stops it from running; the
others hammer the ring with short timeouts meanwhile.  Nobody may take the
lock over (the holder lives), and once it runs again its message arrives
whole.  Needs root and cgroup v1's cpu and freezer controllers (what this
machine has); skipped with the reason elsewhere.
"""
from __future__ import annotations

import mmap
import os
import struct
import subprocess
import sys
import time
import uuid
import zlib
from pathlib import Path
from typing import Callable, Iterator

import pytest

from pyipc import Full, RingBuffer
from pyipc._core import lib

SIZE = 96 << 20
ID_MASK = ~lib.PYIPC_LOCK_WAITERS & 0xFFFFFFFF

HOLDER = r"""
import os, sys, zlib
from pyipc import RingBuffer
ring = RingBuffer(sys.argv[1])
size = int(sys.argv[2])
payload = os.urandom(1 << 20) * (size >> 20)
print(ring.info()["owner"], zlib.crc32(payload), flush=True)
sys.stdin.readline()  # in its cgroup now
ring.put(payload)
"""


def cgroup(controller: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("moving a process between cgroups needs root")
    root = Path("/sys/fs/cgroup") / controller
    if not (root / "tasks").exists():
        pytest.skip(f"no cgroup v1 {controller} controller mounted at {root}")
    group = root / f"pyipc-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
    except OSError as e:
        pytest.skip(f"cannot make a {controller} cgroup: {e}")
    try:
        yield group
    finally:
        # Move anything left back to the root, then remove the group.
        for pid in (group / "tasks").read_text().split():
            try:
                (root / "tasks").write_text(pid)
            except OSError:
                pass
        try:
            group.rmdir()
        except OSError:
            pass


@pytest.fixture
def cpu_group() -> Iterator[Path]:
    yield from cgroup("cpu")


@pytest.fixture
def freezer_group() -> Iterator[Path]:
    yield from cgroup("freezer")


def hold_and_stall(
    shm_name: Callable[[], str], enter: Callable[[int], None], stall: Callable[[], None], resume: Callable[[], None]
) -> None:
    """Start a holder, put it in its cgroup(s) (`enter`), let it take the
    lock in a big put, `stall` it there, hammer, `resume`, check."""
    with RingBuffer(shm_name(), create=True, capacity=SIZE + (1 << 20)) as ring:
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, ring.name, str(SIZE)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdin is not None
            owner, crc = map(int, holder.stdout.readline().split())
            enter(holder.pid)
            holder.stdin.write("go\n")
            holder.stdin.flush()
            with open(f"/dev/shm/{ring.name}", "rb") as f:
                seg = mmap.mmap(f.fileno(), 4096, prot=mmap.PROT_READ)
            try:
                end = time.monotonic() + 20
                while struct.unpack_from("<I", seg, lib.PYIPC_OFF_PROD_LOCK)[0] & ID_MASK != owner:
                    assert time.monotonic() < end, "the holder never took the lock"
                    time.sleep(0.001)
            finally:
                seg.close()
            stall()
            # It holds the lock and cannot run: a second of short calls.
            end = time.monotonic() + 1.0
            calls = 0
            while time.monotonic() < end:
                for call in (lambda: ring.put(b"x", timeout=0.002), lambda: ring.put_nowait(b"x")):
                    with pytest.raises(Full):
                        call()
                    calls += 1
            assert ring.info()["recoveries"] == 0
            resume()
            msg = ring.get(timeout=60)
            assert len(msg) == SIZE and zlib.crc32(msg) == crc
            assert holder.wait(60) == 0
            assert ring.info()["recoveries"] == 0 and calls > 10
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait()


def throttle(group: Path) -> None:
    """Let the processes of a cpu cgroup run 1 ms in every 100 ms."""
    (group / "cpu.cfs_period_us").write_text("100000")
    (group / "cpu.cfs_quota_us").write_text("1000")


@pytest.mark.timeout(120)
def test_holder_throttled_by_its_cgroup_keeps_the_lock(shm_name: Callable[[], str], cpu_group: Path) -> None:
    """A holder throttled to 1 % of a CPU inside a 96 MiB put is never robbed, and its message arrives whole."""
    throttle(cpu_group)

    def enter(pid: int) -> None:
        (cpu_group / "tasks").write_text(str(pid))

    def resume() -> None:
        (cpu_group / "cpu.cfs_quota_us").write_text("-1")

    hold_and_stall(shm_name, enter, lambda: None, resume)


@pytest.mark.timeout(120)
def test_frozen_holder_keeps_the_lock(shm_name: Callable[[], str], cpu_group: Path, freezer_group: Path) -> None:
    """A holder frozen by the cgroup freezer inside a put is never robbed, and its message arrives whole."""
    # Throttled too, so that its copy is slow enough to be frozen inside it.
    throttle(cpu_group)
    state = freezer_group / "freezer.state"

    def enter(pid: int) -> None:
        (cpu_group / "tasks").write_text(str(pid))
        (freezer_group / "tasks").write_text(str(pid))

    def resume() -> None:
        state.write_text("THAWED")
        (cpu_group / "cpu.cfs_quota_us").write_text("-1")

    try:
        hold_and_stall(shm_name, enter, lambda: state.write_text("FROZEN"), resume)
    finally:
        state.write_text("THAWED")
