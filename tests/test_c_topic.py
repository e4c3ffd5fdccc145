"""The topic's own C tests (csrc/tests/test_topic.c), built and run under sanitizers.

Built and run the way tests/test_c_core.py builds and runs the ring's: the C
program links the core's sources alone, without Python; each C test runs
as its own pytest item, in its own process.  The tests that race an
"overwrite" publisher against readers on purpose (a seqlock's reader copies
bytes that may be rewritten under it, and throws such a copy away) do not
run under ThreadSanitizer, which would report exactly that race.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import List

import pytest

from test_c_core import ASAN_FLAGS, BASE_FLAGS, CSRC, LIBS, TSAN_FLAGS, _run, _tsan_works, prefix  # noqa: F401

TEST_C = CSRC / "tests" / "test_topic.c"
# The topic, and the ring (one test attaches one kind as the other).
SOURCES = ["topic.c", "ring.c", "ring_lease.c", "ring_repair.c", "lock.c", "owner.c", "segment.c", "forksafe.c"]
GCC = shutil.which("gcc")

C_TESTS: List[str] = re.findall(r"^\tT\((\w+)\),$", TEST_C.read_text(), flags=re.MULTILINE)

THREADED = ["shutdown", "close_wakes_blocked", "dead_subscriber", "threads_block", "fork_resubscribes"]


def _build(out: Path, flags: List[str]) -> Path:
    exe = out / "test_topic"
    cmd = [GCC or "gcc", *BASE_FLAGS, *flags, f"-I{CSRC}", str(TEST_C), *(str(CSRC / s) for s in SOURCES),
           "-o", str(exe), *LIBS]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"build failed: {' '.join(cmd)}\n{proc.stderr}")
    return exe


@pytest.fixture(scope="module")
def asan_topic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if GCC is None:
        pytest.skip("gcc is not installed: the C core's own tests need it")
    return _build(tmp_path_factory.mktemp("asan-topic"), ASAN_FLAGS)


@pytest.fixture(scope="module")
def tsan_topic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if GCC is None:
        pytest.skip("gcc is not installed: the C core's own tests need it")
    out = tmp_path_factory.mktemp("tsan-topic")
    why = _tsan_works(out)
    if why:
        pytest.skip(why)
    return _build(out, TSAN_FLAGS)


def test_table_is_found() -> None:
    """The list of C tests is read from test_topic.c and every threaded one is in it."""
    assert len(C_TESTS) >= 20
    assert set(THREADED) <= set(C_TESTS)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("test", C_TESTS)
def test_c_topic_asan_ubsan(asan_topic: Path, prefix: str, test: str) -> None:  # noqa: F811
    """One C test of the topic passes under AddressSanitizer + UndefinedBehaviorSanitizer."""
    _run(asan_topic, test, prefix, timeout=120)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("test", THREADED)
def test_c_topic_tsan(tsan_topic: Path, prefix: str, test: str) -> None:  # noqa: F811
    """One threaded C test of the topic passes under ThreadSanitizer."""
    _run(tsan_topic, test, prefix, timeout=180)
