"""Rings in regular files: ``RingBuffer(path=...)`` on a disk, a tmpfs and hugetlbfs."""
from __future__ import annotations

import errno
import mmap
import os
import pickle
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from pyipc import CorruptedError, RingBuffer
from pyipc.cli import main as cli_main

HUGE = 2 << 20


@pytest.fixture
def tmpfs_dir() -> Iterator[Path]:
    """A directory on a tmpfs (/dev/shm is one), removed afterwards."""
    d = Path("/dev/shm") / f"pyipc-test-dir-{os.getpid()}-{os.urandom(4).hex()}"
    d.mkdir()
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(params=["disk", "tmpfs"])
def ring_dir(request: pytest.FixtureRequest, tmp_path: Path, tmpfs_dir: Path) -> Path:
    """A directory on this machine's disk, or on a tmpfs."""
    return tmp_path if request.param == "disk" else tmpfs_dir


@pytest.mark.timeout(30)
def test_ring_in_a_file(ring_dir: Path) -> None:
    """A ring made with path= works like one in /dev/shm, has exactly `mode`, and pickles by path."""
    path = ring_dir / "ring"
    old = os.umask(0o077)
    try:
        ring = RingBuffer(path=path, create=True, capacity=1 << 16, mode=0o640)
    finally:
        os.umask(old)
    with ring:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
        assert ring.path == str(path) and ring.name is None
        assert ring.capacity == 1 << 16
        ring.put(b"one")
        with ring.reserve(3) as buf:
            buf[:] = b"two"
        clone = pickle.loads(pickle.dumps(ring))
        assert clone.path == str(path)
        assert clone.get_nowait() == b"one"
        with clone.view() as msg:
            assert bytes(msg) == b"two"
        clone.close()
        assert ring.check() == 0
        with pytest.raises(FileExistsError):
            RingBuffer(path=path, create=True)
        ring.unlink()
        assert not path.exists()


@pytest.mark.timeout(30)
def test_path_and_name_are_exclusive(tmp_path: Path) -> None:
    """Giving both name and path, or a bad path, is a ValueError; a missing file is FileNotFoundError."""
    with pytest.raises(ValueError):
        RingBuffer("x", path=tmp_path / "r", create=True)
    with pytest.raises(ValueError):
        RingBuffer(path="bad\0path", create=True)
    with pytest.raises(FileNotFoundError):
        RingBuffer(path=tmp_path / "missing")
    (tmp_path / "text").write_text("not a ring " * 1000)
    with pytest.raises(CorruptedError, match="not a pyipc segment"):
        RingBuffer(path=tmp_path / "text")


WRITER = r"""
import sys
from pyipc import RingBuffer
ring = RingBuffer(path=sys.argv[1], create=True, capacity=1 << 16)
for i in range(int(sys.argv[2])):
    ring.put(b"message %d" % i)
ring.flush()
"""

READER = r"""
import sys
from pyipc import RingBuffer
ring = RingBuffer(path=sys.argv[1])
print(",".join(m.decode() for m in ring.get_many(1000, block=False)))
"""


@pytest.mark.timeout(60)
def test_what_is_queued_outlives_every_process(ring_dir: Path) -> None:
    """Messages put by a process that has exited are there for one started later."""
    path = str(ring_dir / "ring")
    subprocess.run([sys.executable, "-c", WRITER, path, "5"], check=True, timeout=30)
    out = subprocess.run([sys.executable, "-c", READER, path], check=True, capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == ",".join(f"message {i}" for i in range(5))


@pytest.mark.timeout(30)
def test_flush_writes_the_messages_to_the_disk(tmp_path: Path) -> None:
    """After flush(), the record area read with O_DIRECT (bypassing the page cache) holds the message."""
    path = tmp_path / "ring"
    with RingBuffer(path=path, create=True, capacity=1 << 16) as ring:
        ring.put(b"durable-" * 8)
        ring.flush()
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        except OSError as e:
            pytest.skip(f"O_DIRECT is not supported here: {e}")
        try:
            buf = mmap.mmap(-1, 8192)  # page-aligned, as O_DIRECT needs
            n = os.preadv(fd, [buf], 4096)
        finally:
            os.close(fd)
        assert n == 8192 and b"durable-" * 8 in bytes(buf)
        buf.close()


@pytest.mark.timeout(30)
def test_cli_takes_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ls DIR, info, repair and rm accept a ring's path."""
    path = tmp_path / "ring"
    with RingBuffer(path=path, create=True) as ring:
        ring.put(b"x")
    assert cli_main(["ls", str(tmp_path)]) == 0
    assert str(path) in capsys.readouterr().out
    assert cli_main(["info", str(path)]) == 0
    assert "messages" in capsys.readouterr().out
    assert cli_main(["repair", str(path)]) == 0
    assert "dropped 0 messages, 1 still queued" in capsys.readouterr().out
    assert cli_main(["rm", str(path)]) == 0
    assert not path.exists()


@pytest.mark.timeout(30)
def test_full_tmpfs_is_an_error_at_create(tmp_path: Path) -> None:
    """A ring that does not fit its tmpfs (a container's small /dev/shm) fails at create with OSError, never later with SIGBUS."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "none", str(mnt)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        with pytest.raises(OSError) as info:
            RingBuffer(path=mnt / "big", create=True, capacity=4 << 20)
        assert info.value.errno == errno.ENOSPC
        assert not (mnt / "big").exists()
        with RingBuffer(path=mnt / "small", create=True, capacity=64 << 10) as ring:
            ring.put(bytes(ring.max_message_size))
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.fixture
def hugetlbfs(tmp_path: Path) -> Iterator[Path]:
    """A hugetlbfs mount with a few 2 MiB pages reserved; skipped where that cannot be had."""
    if os.geteuid() != 0:
        pytest.skip("mounting hugetlbfs needs root")
    nr = Path("/proc/sys/vm/nr_hugepages")
    try:
        before = int(nr.read_text())
        nr.write_text(str(before + 4))
    except OSError as e:
        pytest.skip(f"cannot reserve huge pages: {e}")
    mnt = tmp_path / "huge"
    mnt.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "hugetlbfs", "-o", "pagesize=2M", "none", str(mnt)],
                                 capture_output=True, text=True)
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount hugetlbfs: {mounted.stderr.strip()}")
        if int(nr.read_text()) < before + 2:
            pytest.skip("the kernel gave no huge pages")
        try:
            yield mnt
        finally:
            subprocess.run(["umount", str(mnt)], check=False)
    finally:
        nr.write_text(str(before))


@pytest.mark.timeout(60)
def test_ring_on_hugetlbfs(hugetlbfs: Path) -> None:
    """On hugetlbfs the capacity and the header round to the huge page, and the ring works."""
    path = hugetlbfs / "ring"
    with RingBuffer(path=path, create=True, capacity=100) as ring:
        assert ring.capacity == HUGE
        assert ring.info()["hdr_size"] == HUGE
        assert os.stat(path).st_size == 2 * HUGE
        big = os.urandom(ring.max_message_size)
        ring.put(big)
        with RingBuffer(path=path) as other:
            assert other.get_nowait() == big
            with ring.reserve(HUGE - 100) as buf:  # wraps across the end, still one piece
                buf[:] = big[: HUGE - 100]
            with other.view() as msg:
                assert bytes(msg) == big[: HUGE - 100]
        ring.unlink()
