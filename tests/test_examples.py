"""The scripts in examples/ run to completion, print what they promise, and
leave nothing behind in /dev/shm, under each multiprocessing start method."""
from __future__ import annotations

import multiprocessing as mp
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# Each example's closing line(s), as regular expressions.
EXPECTED = {
    "worker_pool.py": [r"worker_pool: 50 tasks, 5133 primes below 50000, [1-3] workers used"],
    "pipeline.py": [r"pipeline: 5000 records through 3 stages, 495 alarms, in order: True"],
    "asyncio_service.py": [
        r"asyncio_service: the heartbeat ticked \d+ times",
        r"asyncio_service: served 100 requests from 2 clients, clients ok: True",
    ],
    "topic_frames.py": [
        r"topic_frames: 60 frames of 1920x1080 RGB published",
        r"topic_frames: summer checked 60 frames, sums ok: True",
        r"topic_frames: writer wrote 6 frames \(6 files\)",
        r"topic_frames: slow subscriber got \d+, missed \d+, got \+ missed == published: True, in order: True",
    ],
    "rpc_worker_pool.py": [
        r"rpc_worker_pool: 50 calls, 5133 primes below 50000, [2-9] servers used, "
        r"exit codes \[0\]",
    ],
}

# Examples that make no Queue; their RPC rings are looked for by name.
NO_QUEUES = {"rpc_worker_pool.py", "topic_frames.py"}


def _rpc_rings() -> set[str]:
    """RPC rings, and the topics of topic_frames.py, by the names they make."""
    return {n for n in os.listdir("/dev/shm") if n.startswith(("pyipc-rpc-", "pyipc-frames-"))}

# Runs an example as __main__ under a chosen start method, and reports on
# stderr the name of every Queue the program creates, so that the test can
# check afterwards that none of them is left in /dev/shm.
RUNNER = """
import multiprocessing, runpy, sys
import pyipc.queue

method, path = sys.argv[1], sys.argv[2]
multiprocessing.set_start_method(method)
_init = pyipc.queue.Queue.__init__

def traced_init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    if kwargs.get("create", True):
        print("created-queue", self.name, file=sys.stderr, flush=True)

pyipc.queue.Queue.__init__ = traced_init
sys.argv = [path]
runpy.run_path(path, run_name="__main__")
"""

METHODS = [m for m in ("fork", "spawn") if m in mp.get_all_start_methods()]


def test_every_example_is_covered() -> None:
    """Every script in examples/ has expectations here."""
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs_and_cleans_up(script: str, method: str) -> None:
    """The example exits 0, prints its result, and removes all its queues."""
    rings_before = _rpc_rings()
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, method, str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for pattern in EXPECTED[script]:
        assert re.search(pattern, proc.stdout), proc.stdout
    assert not _rpc_rings() - rings_before, "RPC rings or topics left in /dev/shm"
    names = re.findall(r"^created-queue (\S+)$", proc.stderr, flags=re.MULTILINE)
    assert names or script in NO_QUEUES, proc.stderr
    left = [n for n in names if os.path.exists(f"/dev/shm/{n}")]
    assert not left, f"left in /dev/shm: {left}"
