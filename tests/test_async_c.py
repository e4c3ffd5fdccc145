"""The waitset's own C tests (csrc/tests/test_waitset.c), built and run under
sanitizers: AddressSanitizer and UndefinedBehaviorSanitizer for every test,
ThreadSanitizer for the threaded ones.  Each C test runs in both modes of the
waitset (futex_waitv and the thread-per-word fallback)."""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Iterator, List

import pytest

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
TEST_C = CSRC / "tests" / "test_waitset.c"
# The waitset, and the ring's sources for pyipc_ring_arm's test (the same
# list as test_c_core.py's).
SOURCES = [
    str(CSRC / n)
    for n in ("waitset.c", "ring.c", "ring_lease.c", "ring_repair.c", "lock.c", "owner.c", "segment.c", "forksafe.c")
]

GCC = shutil.which("gcc")
BASE_FLAGS = ["-std=gnu11", "-D_GNU_SOURCE", "-g", "-O1", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter"]
ASAN_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
TSAN_FLAGS = ["-fsanitize=thread", "-Wno-tsan"]
MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:", "WARNING: ThreadSanitizer")

C_TESTS: List[str] = re.findall(r"^\tT\((\w+)\),$", TEST_C.read_text(), flags=re.MULTILINE)
# ThreadSanitizer cannot follow a fork() of a threaded program.
TSAN_TESTS = [t for t in C_TESTS if t != "fork"]


def _build(out: Path, flags: List[str]) -> Path:
    if GCC is None:
        pytest.skip("gcc is not installed: the C tests need it")
    exe = out / "test_waitset"
    cmd = [GCC, *BASE_FLAGS, *flags, f"-I{CSRC}", str(TEST_C), *SOURCES, "-o", str(exe), "-lpthread", "-lrt"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        if "sanitize" in proc.stderr and flags == TSAN_FLAGS:
            pytest.skip(f"gcc cannot build with ThreadSanitizer here: {proc.stderr[-300:]}")
        pytest.fail(f"build failed: {' '.join(cmd)}\n{proc.stderr}")
    return exe


@pytest.fixture(scope="module")
def asan_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("ws-asan"), ASAN_FLAGS)


@pytest.fixture(scope="module")
def tsan_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exe = _build(tmp_path_factory.mktemp("ws-tsan"), TSAN_FLAGS)
    probe = subprocess.run([str(exe), "fire_and_ready"], capture_output=True, text=True, timeout=60)
    if "FATAL: ThreadSanitizer" in probe.stderr:
        pytest.skip(f"ThreadSanitizer programs do not run here: {probe.stderr[:300]}")
    return exe


@pytest.fixture
def prefix() -> Iterator[str]:
    """A unique prefix for the segments a C test makes; all removed afterwards."""
    p = f"pyipc-wstest-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    yield p
    for path in glob.glob(f"/dev/shm/{p}*"):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _run(exe: Path, test: str, prefix: str) -> None:
    env = dict(
        os.environ,
        PYIPC_CTEST_PREFIX=prefix,
        ASAN_OPTIONS="detect_leaks=1:halt_on_error=1",
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1",
        TSAN_OPTIONS="halt_on_error=1",
    )
    try:
        proc = subprocess.run([str(exe), test], capture_output=True, text=True, timeout=120, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"C test {test} did not finish in 120 s:\n{e.stdout!r}\n{e.stderr!r}")
    report = f"exit status {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert proc.returncode == 0, report
    assert f"ok {test}" in proc.stdout, report
    assert not any(m in proc.stderr for m in MARKS), report


def test_table_is_found() -> None:
    """The list of C tests is read from test_waitset.c."""
    assert len(C_TESTS) >= 10


@pytest.mark.timeout(200)
@pytest.mark.parametrize("test", C_TESTS)
def test_c_asan_ubsan(asan_binary: Path, prefix: str, test: str) -> None:
    """One waitset C test passes under AddressSanitizer + UndefinedBehaviorSanitizer with no report."""
    _run(asan_binary, test, prefix)


@pytest.mark.timeout(200)
@pytest.mark.parametrize("test", TSAN_TESTS)
def test_c_tsan(tsan_binary: Path, prefix: str, test: str) -> None:
    """One waitset C test passes under ThreadSanitizer with no report."""
    _run(tsan_binary, test, prefix)
