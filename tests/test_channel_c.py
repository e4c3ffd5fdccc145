"""The channel core's own C tests, built with AddressSanitizer and
UndefinedBehaviorSanitizer (and ThreadSanitizer) and run as a program."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
SOURCES = [str(CSRC / n) for n in (
    "chan.c", "fdpass.c", "stream.c", "packet.c", "mq.c", "pipe.c", "usock.c", "forksafe.c")]


def _build_and_run(tmp_path: Path, flags: list[str]) -> subprocess.CompletedProcess[str]:
    exe = tmp_path / "test_chan"
    cmd = [
        "cc", "-std=gnu11", "-D_GNU_SOURCE", "-O1", "-g", "-Wall", "-Wextra",
        "-Wno-unused-parameter", "-Wno-tsan", f"-I{CSRC}", *flags,
        str(CSRC / "tests" / "test_chan.c"), *SOURCES, "-o", str(exe), "-lrt", "-lpthread",
    ]
    build = subprocess.run(cmd, capture_output=True, text=True)
    if build.returncode != 0:
        if "sanitize" in build.stderr or "cannot find" in build.stderr:
            pytest.skip(f"this compiler cannot build with {flags}: {build.stderr[-300:]}")
        raise AssertionError(build.stderr)
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1", UBSAN_OPTIONS="halt_on_error=1")
    return subprocess.run([str(exe)], capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.timeout(180)
@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
@pytest.mark.parametrize(
    "flags",
    [["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"], ["-fsanitize=thread"]],
    ids=["asan+ubsan", "tsan"],
)
def test_c_core(tmp_path: Path, flags: list[str]) -> None:
    """The C channel tests pass with no sanitizer report."""
    run = _build_and_run(tmp_path, flags)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "tests passed" in run.stdout
    assert "ERROR: " not in run.stderr and "WARNING: ThreadSanitizer" not in run.stderr, run.stderr
    assert not glob.glob("/dev/mqueue/pyipc-ctest-*")
