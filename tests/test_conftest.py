"""The test suite's own machinery: the seed of randomized tests is printed
and PYIPC_TEST_SEED replays it."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

ROOT = Path(__file__).resolve().parent.parent
TARGET = "tests/test_channel_common.py::test_sizes_keep_boundaries[pipe]"


def _seeds(session_seed: str) -> List[str]:
    """Run one randomized test with PYIPC_TEST_SEED; return the session seed
    of the header and the test's printed seed."""
    env = dict(os.environ, PYIPC_TEST_SEED=session_seed)
    p = subprocess.run([sys.executable, "-m", "pytest", "-s", "-p", "no:cacheprovider", TARGET],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    header = re.search(r"pyipc test seed (\d+) \(replay with PYIPC_TEST_SEED=\1\)", p.stdout)
    test = re.search(r"seed (\d+): replay with PYIPC_TEST_SEED=(\d+)", p.stdout)
    assert header and test, p.stdout
    assert test.group(2) == session_seed
    return [header.group(1), test.group(1)]


@pytest.mark.timeout(300)
def test_seed_is_printed_and_replayed() -> None:
    """The same PYIPC_TEST_SEED gives a test the same seed, another one another."""
    first = _seeds("12345")
    assert first[0] == "12345"
    assert _seeds("12345") == first
    assert _seeds("54321")[1] != first[1]


@pytest.mark.timeout(120)
def test_failed_tests_are_named_last(tmp_path: Path) -> None:
    """Under CI, where pytest prints assertion diffs in full, the names of the
    failed tests still come last, just before the totals."""
    (tmp_path / "test_big_diff.py").write_text(
        "import os\n\ndef test_big_diff():\n    assert os.urandom(4000) == os.urandom(4000)\n\n"
        "def test_fine():\n    pass\n")
    env = dict(os.environ, CI="true", PYTHONPATH=str(ROOT / "tests"))
    p = subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider",
                        "--rootdir", str(tmp_path), str(tmp_path)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=100)
    lines = p.stdout.strip().splitlines()
    assert p.returncode == 1 and len(lines) > 200, p.stdout[-2000:]  # the diff was printed whole
    assert lines[-2] == "FAILED test_big_diff.py::test_big_diff", lines[-4:]
    assert "failed (PYIPC_TEST_SEED=" in lines[-3], lines[-4:]
