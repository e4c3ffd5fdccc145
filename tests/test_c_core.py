"""The C core's own tests (csrc/tests/test_ring.c), built and run under sanitizers.

The C program links the ring's sources alone, without Python, so that
AddressSanitizer and UndefinedBehaviorSanitizer see every access the core
makes, and ThreadSanitizer sees its locks.  Each C test runs as its own pytest
item, in its own process, so one failure (or crash) names exactly one test.
"""
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
TEST_C = CSRC / "tests" / "test_ring.c"
# What the ring is made of (the C test links nothing else).
RING_SOURCES = ["ring.c", "ring_lease.c", "ring_repair.c", "lock.c", "owner.c", "segment.c", "forksafe.c"]
SKIPPED = 77  # a C test that cannot run here exits with this and says why

GCC = shutil.which("gcc")
# PYIPC_TEST_HOOKS: lets a test hold a lock it has just taken (lock.h).
BASE_FLAGS = [
    "-std=gnu11", "-D_GNU_SOURCE", "-DPYIPC_TEST_HOOKS", "-g", "-O1", "-Wall", "-Wextra", "-Wno-unused-parameter"
]
ASAN_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
# -Wno-tsan: GCC warns that TSan does not model atomic_thread_fence; the
# fences in ring.c only order atomics, which TSan never reports as races.
TSAN_FLAGS = ["-fsanitize=thread", "-Wno-tsan"]
LIBS = ["-lpthread", "-lrt"]

SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:", "WARNING: ThreadSanitizer")

# The C tests, in the order of the table at the end of test_ring.c.
C_TESTS: List[str] = re.findall(r"^\tT\((\w+)\),$", TEST_C.read_text(), flags=re.MULTILINE)

# Tests that exercise threads and locks: these also run under ThreadSanitizer.
THREADED = [
    "shutdown_wakes_blocked",
    "close_wakes_blocked",
    "wait_consumed",
    "two_handles_threads",
    "dead_lock_owner",
    "zombie_lock_owner",
    "lock_stuck_held",
    "lock_stalled_after_cas",
    "fork_while_blocked",
    "scribbled_lock_words",
    "lease_view_release",
    "lease_dead_reserver",
    "lease_dead_viewer",
    "mpmc_small_ring",
    "mpmc_large_ring",
]

def _build(out: Path, flags: List[str]) -> Path:
    exe = out / "test_ring"
    sources = [str(CSRC / name) for name in RING_SOURCES]
    cmd = [GCC or "gcc", *BASE_FLAGS, *flags, f"-I{CSRC}", str(TEST_C), *sources, "-o", str(exe), *LIBS]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"build failed: {' '.join(cmd)}\n{proc.stderr}")
    return exe


def _tsan_works(out: Path) -> str:
    """Return '' if a trivial threaded program runs under TSan, else why not."""
    src = out / "probe.c"
    src.write_text(
        "#include <pthread.h>\n"
        "static void *f(void *a) { return a; }\n"
        "int main(void) { pthread_t t; pthread_create(&t, 0, f, 0); return pthread_join(t, 0); }\n"
    )
    try:
        build = subprocess.run(
            [GCC or "gcc", "-fsanitize=thread", str(src), "-o", str(out / "probe"), "-lpthread"],
            capture_output=True, text=True, timeout=120,
        )
        if build.returncode != 0:
            return f"gcc cannot build with -fsanitize=thread: {build.stderr.strip()[:300]}"
        run = subprocess.run([str(out / "probe")], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "a trivial ThreadSanitizer program timed out"
    if run.returncode != 0:
        return f"ThreadSanitizer programs do not run here: {run.stderr.strip()[:300]}"
    return ""


@pytest.fixture(scope="module")
def asan_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if GCC is None:
        pytest.skip("gcc is not installed: the C core's own tests need it")
    return _build(tmp_path_factory.mktemp("asan"), ASAN_FLAGS)


@pytest.fixture(scope="module")
def tsan_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if GCC is None:
        pytest.skip("gcc is not installed: the C core's own tests need it")
    out = tmp_path_factory.mktemp("tsan")
    why = _tsan_works(out)
    if why:
        pytest.skip(why)
    return _build(out, TSAN_FLAGS)


@pytest.fixture
def prefix() -> Iterator[str]:
    """A unique prefix for the segments a C test makes; all removed afterwards."""
    p = f"pyipc-ctest-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    yield p
    # The C program unlinks its names itself, except when a sanitizer or a
    # signal kills it first.
    for path in glob.glob(f"/dev/shm/{p}*"):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _run(exe: Path, test: str, prefix: str, timeout: float) -> None:
    env = dict(os.environ)
    env.update(
        PYIPC_CTEST_PREFIX=prefix,
        ASAN_OPTIONS="detect_leaks=1:halt_on_error=1",
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1",
        TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1",
    )
    try:
        proc = subprocess.run([str(exe), test], capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"C test {test} did not finish in {timeout} s:\n{e.stdout!r}\n{e.stderr!r}")
    report = f"exit status {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    if proc.returncode == SKIPPED:
        pytest.skip(proc.stdout.strip() or f"C test {test} cannot run here")
    assert proc.returncode == 0, report
    assert f"ok {test}" in proc.stdout, report
    assert not any(m in proc.stderr for m in SANITIZER_MARKS), report


def test_table_is_found() -> None:
    """The list of C tests is read from test_ring.c and every threaded one is in it."""
    assert len(C_TESTS) >= 20
    assert set(THREADED) <= set(C_TESTS)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("test", C_TESTS)
def test_c_asan_ubsan(asan_binary: Path, prefix: str, test: str) -> None:
    """One C test passes under AddressSanitizer + UndefinedBehaviorSanitizer with no report."""
    _run(asan_binary, test, prefix, timeout=120)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("test", THREADED)
def test_c_tsan(tsan_binary: Path, prefix: str, test: str) -> None:
    """One threaded C test passes under ThreadSanitizer with no report."""
    _run(tsan_binary, test, prefix, timeout=180)
