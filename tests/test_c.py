"""The C core's own test programs, run under the sanitizers, one pytest item
per C test.

Each program is built from its test file and the core sources it tests,
without Python, so that AddressSanitizer and UndefinedBehaviorSanitizer see
every access the core makes and ThreadSanitizer sees its locks.  Both follow
one convention (see the head of csrc/tests/test_ring.c and test_chan.c):

* a table of ``T(name)`` entries, read here to make the pytest items;
* ``program name`` runs that one test, so each runs in its own process and a
  crash names exactly one test;
* ``PYIPC_CTEST_SEED`` seeds the test's random choices; it is the ``seed``
  fixture's value, printed on failure and replayed by ``PYIPC_TEST_SEED``;
* exit status 77 (``SKIP_EXIT``) means the test cannot run on this machine:
  the program prints why, and the test is skipped with that reason.

A compile-only build for aarch64 (Debian's ``gcc-aarch64-linux-gnu``) checks
that the core has no x86-only code left.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"

SKIP_EXIT = 77

GCC = shutil.which("gcc")
CROSS = shutil.which("aarch64-linux-gnu-gcc")
# PYIPC_TEST_HOOKS: lets a ring test hold a lock it has just taken (lock.h).
BASE_FLAGS = ["-std=gnu11", "-D_GNU_SOURCE", "-DPYIPC_TEST_HOOKS", "-g", "-O1", "-Wall", "-Wextra",
              "-Wno-unused-parameter"]
ASAN_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
# -Wno-tsan: GCC warns that TSan does not model atomic_thread_fence; the
# fences in the core only order atomics, which TSan never reports as races.
TSAN_FLAGS = ["-fsanitize=thread", "-Wno-tsan"]
LIBS = ["-lpthread", "-lrt"]

SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                   "WARNING: ThreadSanitizer")


@dataclass
class Program:
    """A C test program: its test file, the core sources it links, and the
    tests that exercise threads and locks (run under TSan too; None: all)."""

    test: str
    sources: List[str]
    threaded: "List[str] | None" = None
    no_tsan: "List[str] | None" = None

    @property
    def tests(self) -> List[str]:
        """The names in the program's table of T(name) entries, in order."""
        text = (CSRC / "tests" / self.test).read_text()
        return re.findall(r"^\tT\((\w+)\),$", text, flags=re.MULTILINE)

    @property
    def tsan_tests(self) -> List[str]:
        tests = self.tests if self.threaded is None else self.threaded
        return [t for t in tests if t not in (self.no_tsan or [])]


PROGRAMS: Dict[str, Program] = {
    "test_ring": Program(
        "test_ring.c",
        ["ring.c", "ring_lease.c", "ring_repair.c", "lock.c", "owner.c", "segment.c", "forksafe.c"],
        threaded=[
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
        ],
    ),
    "test_topic": Program(
        "test_topic.c",
        ["topic.c", "ring.c", "ring_lease.c", "ring_repair.c", "lock.c", "owner.c", "segment.c", "forksafe.c"],
        threaded=["shutdown", "close_wakes_blocked", "dead_subscriber", "threads_block", "fork_resubscribes"],
    ),
    # Each waitset test runs in both of its modes (futex_waitv and the
    # thread-per-word fallback).  ThreadSanitizer cannot follow a fork() of
    # a threaded program: "fork" runs under ASan only.
    "test_waitset": Program(
        "test_waitset.c",
        ["waitset.c", "ring.c", "ring_lease.c", "ring_repair.c", "lock.c", "owner.c", "segment.c",
         "forksafe.c"],
        threaded=None,
        no_tsan=["fork"],
    ),
    "test_chan": Program(
        "test_chan.c",
        ["chan.c", "fdpass.c", "stream.c", "packet.c", "mq.c", "pipe.c", "usock.c", "forksafe.c"],
    ),
}

ASAN_CASES = [(p, t) for p, prog in PROGRAMS.items() for t in prog.tests]
TSAN_CASES = [(p, t) for p, prog in PROGRAMS.items() for t in prog.tsan_tests]


def _build(out: Path, program: str, flags: List[str]) -> Path:
    prog = PROGRAMS[program]
    exe = out / program
    cmd = [GCC or "gcc", *BASE_FLAGS, *flags, f"-I{CSRC}", str(CSRC / "tests" / prog.test),
           *(str(CSRC / s) for s in prog.sources), "-o", str(exe), *LIBS]
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


class Builds:
    """Programs built on first use, once per sanitizer and session."""

    def __init__(self, tmp: pytest.TempPathFactory) -> None:
        self.tmp = tmp
        self.made: Dict[Tuple[str, str], Path] = {}
        self.tsan_why: "str | None" = None

    def get(self, program: str, sanitizer: str) -> Path:
        if GCC is None:
            pytest.skip("gcc is not installed: the C core's own tests need it")
        key = (program, sanitizer)
        if key not in self.made:
            out = self.tmp.mktemp(f"{program}-{sanitizer}")
            if sanitizer == "tsan":
                if self.tsan_why is None:
                    self.tsan_why = _tsan_works(out)
                if self.tsan_why:
                    pytest.skip(self.tsan_why)
            self.made[key] = _build(out, program, ASAN_FLAGS if sanitizer == "asan" else TSAN_FLAGS)
        return self.made[key]


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    return Builds(tmp_path_factory)


@pytest.fixture
def prefix() -> Iterator[str]:
    """A unique prefix for the names a C test makes; all removed afterwards."""
    p = f"pyipc-ctest-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    yield p
    # The programs unlink their names themselves, except when a sanitizer or
    # a signal kills them first.
    for path in glob.glob(f"/dev/shm/{p}*") + glob.glob(f"/dev/mqueue/{p}*"):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _run(exe: Path, test: str, prefix: str, seed: int, timeout: float) -> None:
    env = dict(os.environ)
    env.update(
        PYIPC_CTEST_PREFIX=prefix,
        PYIPC_CTEST_SEED=str(seed),
        ASAN_OPTIONS="detect_leaks=1:halt_on_error=1",
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1",
        TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1",
    )
    try:
        proc = subprocess.run([str(exe), test], capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"C test {test} did not finish in {timeout} s:\n{e.stdout!r}\n{e.stderr!r}")
    if proc.returncode == SKIP_EXIT:
        pytest.skip(proc.stdout.strip().splitlines()[-1])
    report = f"exit status {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert proc.returncode == 0, report
    assert f"ok {test}" in proc.stdout, report
    assert not any(m in proc.stderr for m in SANITIZER_MARKS), report


def test_tables_are_found() -> None:
    """Every program's table is read, and every threaded test is in its table."""
    for prog in PROGRAMS.values():
        assert len(prog.tests) >= 10, prog.test
        assert set(prog.tsan_tests) <= set(prog.tests)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("program,test", ASAN_CASES, ids=[f"{p}-{t}" for p, t in ASAN_CASES])
def test_c_asan_ubsan(builds: Builds, prefix: str, seed: int, program: str, test: str) -> None:
    """One C test passes under AddressSanitizer + UndefinedBehaviorSanitizer with no report."""
    _run(builds.get(program, "asan"), test, prefix, seed, timeout=120)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("program,test", TSAN_CASES, ids=[f"{p}-{t}" for p, t in TSAN_CASES])
def test_c_tsan(builds: Builds, prefix: str, seed: int, program: str, test: str) -> None:
    """One threaded C test passes under ThreadSanitizer with no report."""
    _run(builds.get(program, "tsan"), test, prefix, seed, timeout=180)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("program", list(PROGRAMS))
def test_builds_for_aarch64(tmp_path: Path, program: str) -> None:
    """The core and its test program compile for aarch64 (no x86-only code)."""
    if CROSS is None:
        pytest.skip("aarch64-linux-gnu-gcc is not installed (Debian: gcc-aarch64-linux-gnu)")
    prog = PROGRAMS[program]
    for src in [CSRC / "tests" / prog.test, *(CSRC / s for s in prog.sources)]:
        cmd = [CROSS, *BASE_FLAGS, f"-I{CSRC}", "-c", str(src),
               "-o", str(tmp_path / (src.stem + ".o"))]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"
