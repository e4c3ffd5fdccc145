"""Fixtures shared by the test suite: unique names removed even on failure,
every channel kind as a (sender, receiver) pair, and the seed of randomized
tests, printed and replayable."""
from __future__ import annotations

import hashlib
import os
import random
import tempfile
import uuid
from typing import Any, Callable, Iterator, List, Tuple

import pytest

from pyipc._core import lib

# The quick subset (pytest -m quick): what .ci/run runs again on every other
# Python the package claims, where what differs is the build, the syntax and
# typing the package may use, and the standard library (pickling,
# multiprocessing, asyncio, queue).  Kept to about a minute: these modules
# whole, plus the tests marked @pytest.mark.quick where they are; the C
# programs, the crash and corruption stress and the benchmark runs, which
# do not depend on the Python version, are not in it.
QUICK_MODULES = {
    "test_typing.py",
    "test_ring.py",
    "test_ring_model.py",
    "test_queue.py",
    "test_queue_mp.py",
    "test_examples.py",
    "test_channel_common.py",
    "test_channel_pipe.py",
    "test_channel_usock.py",
    "test_channel_mq.py",
}


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    for item in items:
        if item.path.name in QUICK_MODULES and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.quick)


# ---- seeds ------------------------------------------------------------------

# One seed per session, shown in the header; each test's own seed derives from
# it and the test's name.  PYIPC_TEST_SEED=<the session seed> replays a run:
# the `seed`/`rng` fixtures, Hypothesis (its --hypothesis-seed) and the C
# programs (their PYIPC_CTEST_SEED) all follow it.
SEED_ENV = "PYIPC_TEST_SEED"
_SESSION_SEED = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(1 << 32))


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # Before Hypothesis's own pytest_configure reads its option.
    if getattr(config.option, "hypothesis_seed", "absent") is None:
        config.option.hypothesis_seed = str(_SESSION_SEED)


def pytest_report_header(config: pytest.Config) -> str:
    return f"pyipc test seed {_SESSION_SEED} (replay with {SEED_ENV}={_SESSION_SEED})"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> Iterator[None]:
    # Under CI, pytest prints every assertion's explanation in full, even in
    # its short summary, and a diff of two large payloads can push the names
    # of the failed tests out of a log's tail.  Repeat them last (the
    # outermost wrapper ends after pytest's own summary), one short line
    # each, with the seed.
    yield
    failed = [r.nodeid for key in ("failed", "error") for r in terminalreporter.stats.get(key, [])
              if getattr(r, "nodeid", "")]
    if failed:
        terminalreporter.write_sep("-", f"failed ({SEED_ENV}={_SESSION_SEED})")
        for nodeid in failed:
            terminalreporter.write_line(f"FAILED {nodeid}")


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """This test's seed for its random choices, printed so that a failure
    shows it (and how to replay it)."""
    digest = hashlib.sha256(f"{_SESSION_SEED}:{request.node.nodeid}".encode()).digest()
    value = int.from_bytes(digest[:8], "little") >> 1
    print(f"seed {value}: replay with {SEED_ENV}={_SESSION_SEED}")
    return value


@pytest.fixture
def rng(seed: int) -> random.Random:
    """A random.Random seeded with this test's seed."""
    return random.Random(seed)


# ---- names --------------------------------------------------------------------


@pytest.fixture
def shm_name() -> Iterator[Callable[[], str]]:
    """Make unique shared-memory names and unlink every one after the test."""
    made: list[str] = []

    def make() -> str:
        name = f"pyipc-test-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        made.append(name)
        return name

    yield make
    for name in made:
        try:
            os.unlink(f"/dev/shm/{name}")
        except FileNotFoundError:
            pass


# ---- channels -------------------------------------------------------------------


class Channels:
    """Makes channels, FIFO and socket paths and queue names for one test,
    and closes or removes all of them at the end, pass or fail.

    The kinds of (sender, receiver) pairs: "pipe", "duplex" (pipe(duplex=
    True)), "stream", "seqpacket", "dgram" (socketpair), "listener" (a
    UnixListener's client and its accepted connection), "mq" (two handles on
    one MessageQueue).
    """

    def __init__(self) -> None:
        self.channels: List[Any] = []
        self.queues: List[str] = []
        self.paths: List[str] = []

    def __enter__(self) -> "Channels":
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def queue_name(self) -> str:
        """A unique queue name, unlinked at the end."""
        name = f"pyipc-test-{os.getpid()}-{uuid.uuid4().hex[:10]}"
        self.queues.append(name)
        return name

    def path(self, suffix: str = ".sock") -> str:
        """A path in /tmp, short enough for sun_path (pytest's tmp_path may
        not be), removed at the end if anything is there."""
        p = os.path.join(tempfile.gettempdir(), f"pyipc-t-{uuid.uuid4().hex[:10]}{suffix}")
        self.paths.append(p)
        return p

    @staticmethod
    def max_size(kind: str) -> int:
        """The largest message the tests send over a kind."""
        if kind == "mq":
            return 8192
        if kind in ("seqpacket", "dgram"):
            return 100_000
        return 16 << 20

    def pair(self, kind: str, **mq_kw: Any) -> Tuple[Any, Any]:
        """Return (sender, receiver) of one kind."""
        import pyipc

        if kind == "pipe":
            r, w = pyipc.pipe()
            pair: Tuple[Any, Any] = (w, r)
        elif kind == "duplex":
            pair = pyipc.pipe(duplex=True)
        elif kind in ("stream", "seqpacket", "dgram"):
            pair = pyipc.socketpair(kind)
        elif kind == "listener":
            path = self.path()
            with pyipc.UnixListener(path) as lst:
                c = pyipc.unix_connect(path, timeout=5)
                s = lst.accept(timeout=5)
            pair = (c, s)
        elif kind == "mq":
            name = self.queue_name()
            pair = (pyipc.MessageQueue(name, create=True, **mq_kw), pyipc.MessageQueue(name))
        else:
            raise AssertionError(kind)
        self.channels.extend(pair)
        return pair

    def cleanup(self) -> None:
        for ch in self.channels:
            ch.close()
        for q in self.queues:
            # /dev/mqueue may not be mounted: go through mq_unlink.
            lib.pyipc_mq_unlink(("/" + q).encode())
        for p in self.paths:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass


@pytest.fixture
def channels() -> Iterator[Channels]:
    """Channels made by this test, closed and removed afterwards."""
    with Channels() as ch:
        yield ch


@pytest.fixture
def new_channels() -> Callable[[], Channels]:
    """For tests that need one cleanup per round (per Hypothesis example):
    ``with new_channels() as channels: ...``."""
    return Channels


@pytest.fixture
def wait_until() -> Callable[..., None]:
    """``wait_until(cond, timeout=10)``: poll until ``cond()`` holds, for
    synchronising with another thread or process on a state it can be seen
    to reach (never a fixed sleep); fails the test after ``timeout``."""
    import time

    def wait(cond: Callable[[], bool], timeout: float = 10) -> None:
        end = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > end:
                pytest.fail(f"timed out after {timeout} s waiting for {cond}")
            time.sleep(0.001)

    return wait
