"""fork() while another thread is inside a ring call: the child's handle works.

Each scenario runs in its own process (ring_worker.py ``fork_case``): a thread
there blocks in ``get``, ``put``, ``put(wait_consumed=True)`` or sits inside an
open ``view()``/``reserve()``, and the main thread forks.  The child must be
able to put, get, take leases and close the inherited handle (it has no
in-call count, no lock and no lease of the parent's threads), with a new owner
id of its own; the parent's thread must finish normally afterwards, and every
message must be accounted for exactly once.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from crash_helpers import Proc
from pyipc import RingBuffer


@pytest.fixture
def run_case(shm_name: Callable[[], str], tmp_path: Path) -> Iterator[Callable[..., dict]]:
    procs: list[Proc] = []

    def run(role: str, capacity: int = 1 << 16, **args: object) -> dict:
        name = shm_name()
        with RingBuffer(name, create=True, capacity=capacity):
            p = Proc(role, {"name": name, **args}, tmp_path / f"{role}-{len(procs)}.out", ns=False)
            procs.append(p)
            code = p.wait(60)
            assert code == 0, p.stderr()
            return p.status()

    yield run
    for p in procs:
        p.close()


@pytest.mark.timeout(90)
def test_fork_while_thread_blocked_in_get(run_case: Callable[..., dict]) -> None:
    """A child forked while a thread waits in get() can put, get and close; the thread gets the other message."""
    st = run_case("fork_case", case="get")
    assert st["child_status"] == 0, st
    assert st["close_s"] < 5, st
    assert sorted([st["thread"], *st["child"], *st["rest"]]) == ["c1", "c2"], st


@pytest.mark.timeout(90)
def test_fork_while_thread_blocked_in_put(run_case: Callable[..., dict]) -> None:
    """A child forked while a thread waits for room takes two messages and puts one; the thread's put completes."""
    st = run_case("fork_case", case="put")
    assert st["child_status"] == 0, st
    assert [m[:6] for m in st["child"]] == ["F00000", "F00001"], st
    assert st["thread"] is None  # put() returned normally
    rest = st["rest"]
    fillers = [m for m in rest if m.startswith("F")]
    assert fillers == ["F%05d" % i for i in range(2, st["filler"])], st
    assert sorted(m[:1] for m in rest if not m.startswith("F")) == ["C", "T"], st


@pytest.mark.timeout(90)
def test_fork_while_thread_waits_for_consumption(run_case: Callable[..., dict]) -> None:
    """A child forked while a thread waits in put(wait_consumed=True) consumes that message; the thread returns."""
    st = run_case("fork_case", case="wait_consumed")
    assert st["child_status"] == 0, st
    assert st["child"] == ["W"], st
    assert st["thread"] is None
    assert st["rest"] == ["C"], st


@pytest.mark.timeout(90)
def test_fork_inside_open_view(run_case: Callable[..., dict]) -> None:
    """A child forked while a thread holds a view gets, puts, takes leases and closes;
    the parent's view is still the parent's and ends normally."""
    st = run_case("fork_case", case="view")
    assert st["child_status"] == 0, st
    assert st["thread"] == "P"
    assert st["child"] == ["X", "C", "C2"], st
    assert st["rest"] == [] and st["views"] == 0, st


@pytest.mark.timeout(90)
def test_fork_inside_open_reservation(run_case: Callable[..., dict]) -> None:
    """A child forked while a thread holds a reservation sees what follows it only after the parent commits."""
    st = run_case("fork_case", case="reserve")
    assert st["child_status"] == 0, st
    assert st["child"] == ["P", "RRRRR", "C"], st
    assert st["rest"] == [] and st["reserves"] == 0, st


@pytest.mark.timeout(120)
def test_fork_storm_while_thread_busy(run_case: Callable[..., dict]) -> None:
    """30 forks while a thread keeps copying large messages in and out (forks land inside calls,
    under locks): every child puts, gets and closes, and the parent goes on."""
    st = run_case("fork_storm", capacity=1 << 22, forks=30)
    assert st["children"] == [0] * 30, st
    assert st["errors"] == [] and not st["thread_alive"], st
    assert st["check"] == 0
