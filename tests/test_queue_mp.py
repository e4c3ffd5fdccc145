"""pyipc.Queue across processes: children under fork and spawn, a worker
pool, and the guarantee that programs leave nothing in /dev/shm."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
from typing import Any, Callable

import pytest

from pyipc import Queue

NameFactory = Callable[[], str]

START_METHODS = [m for m in ("fork", "spawn", "forkserver") if m in mp.get_all_start_methods()]


def shm_exists(name: str) -> bool:
    return os.path.exists(f"/dev/shm/{name}")


# Children's targets live at module level so that spawn can import them.


def _echo_squares(tasks: Any, results: Any) -> None:
    while True:
        item = tasks.get(timeout=30)
        if item is None:
            break
        results.put((item, item * item, os.getpid()))


def _worker(tasks: Any, results: Any) -> None:
    for n in iter(tasks.get, None):
        results.put((n, sum(range(n))))


def _create_and_leave_open(report: Any) -> None:
    # A queue owned by this child, never closed: the child's exit must
    # remove it.  A module global keeps it alive until then.
    global _leaked
    _leaked = Queue()
    report.put(_leaked.name)


def _attach_and_exit(q: Any) -> None:
    q.put(("child", os.getpid()))
    q.close()


def _inherit_and_close(q: Any) -> None:
    q.put("from the forked child")
    q.close()


def _send_arrays(q: Any, n: int) -> None:
    import numpy as np

    for i in range(n):
        q.put((i, np.full(100_000 + i, i, dtype=np.float64), bytes([i]) * 70_000))
    q.put(None)


def _put_many_in_child(q: Any, n: int) -> None:
    q.put_many(range(n))
    q.put(None)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", START_METHODS)
def test_child_gets_and_puts(method: str, shm_name: NameFactory) -> None:
    """A child started with each method uses the queues it was passed."""
    ctx = mp.get_context(method)
    with Queue(name=shm_name()) as tasks, Queue(name=shm_name()) as results:
        p = ctx.Process(target=_echo_squares, args=(tasks, results))
        p.start()
        try:
            for i in range(100):
                tasks.put(i)
            tasks.put(None)
            got = [results.get(timeout=30) for _ in range(100)]
        finally:
            p.join(30)
        assert p.exitcode == 0
        assert [(i, sq) for i, sq, _ in got] == [(i, i * i) for i in range(100)]
        assert {pid for *_, pid in got} == {p.pid}
        # The child only attached (or inherited): the segments are still ours.
        assert shm_exists(tasks.name) and shm_exists(results.name)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", START_METHODS)
def test_child_put_many_arrives_in_order(method: str, shm_name: NameFactory) -> None:
    """put_many from a child arrives whole and in order, through a small ring."""
    ctx = mp.get_context(method)
    with Queue(name=shm_name(), capacity=4096) as q:
        p = ctx.Process(target=_put_many_in_child, args=(q, 5000))
        p.start()
        try:
            got = []
            while True:
                batch = q.get_many(64, timeout=30)
                got.extend(batch)
                if batch[-1] is None:
                    break
        finally:
            p.join(30)
        assert got == list(range(5000)) + [None]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", START_METHODS)
@pytest.mark.parametrize("kind", ["pyipc", "multiprocessing"])
def test_worker_pool(method: str, kind: str, shm_name: NameFactory) -> None:
    """The same worker-pool code runs on pyipc.Queue and multiprocessing.Queue."""
    ctx = mp.get_context(method)
    if kind == "pyipc":
        tasks: Any = Queue(name=shm_name())
        results: Any = Queue(name=shm_name())
    else:
        tasks, results = ctx.Queue(), ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(tasks, results)) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        jobs = list(range(0, 2000, 7))
        for n in jobs:
            tasks.put(n)
        for _ in workers:
            tasks.put(None)
        got = sorted(results.get(timeout=30) for _ in jobs)
    finally:
        for w in workers:
            w.join(30)
        tasks.close()
        results.close()
    assert got == [(n, sum(range(n))) for n in jobs]
    assert all(w.exitcode == 0 for w in workers)
    if kind == "pyipc":
        assert not shm_exists(tasks.name) and not shm_exists(results.name)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", START_METHODS)
def test_child_attaching_and_closing_never_unlinks(method: str, shm_name: NameFactory) -> None:
    """A child that closes its (inherited or unpickled) handle leaves the segment."""
    ctx = mp.get_context(method)
    with Queue(name=shm_name()) as q:
        p = ctx.Process(target=_attach_and_exit, args=(q,))
        p.start()
        p.join(30)
        assert p.exitcode == 0
        assert shm_exists(q.name)
        assert q.get(timeout=5) == ("child", p.pid)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", START_METHODS)
def test_queue_created_in_child_is_removed_at_its_exit(
    method: str, shm_name: NameFactory
) -> None:
    """A queue a child created and never closed is gone once the child exits."""
    ctx = mp.get_context(method)
    with Queue(name=shm_name()) as report:
        p = ctx.Process(target=_create_and_leave_open, args=(report,))
        p.start()
        name = report.get(timeout=30)
        p.join(30)
        assert p.exitcode == 0
        assert not shm_exists(name)


def _run_script(source: str) -> subprocess.CompletedProcess[str]:
    """Run a Python script in a fresh interpreter; return its output."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.timeout(90)
def test_creator_exit_removes_unclosed_queues() -> None:
    """A program that never closes its queues leaves nothing in /dev/shm."""
    proc = _run_script(
        """
        import pyipc
        kept = pyipc.Queue(4)           # a module global, alive until exit
        kept.put("never read")
        def make():
            q = pyipc.Queue()
            return q
        also = make()
        print(kept.name, also.name)
        """
    )
    assert proc.returncode == 0, proc.stderr
    names = proc.stdout.split()
    assert len(names) == 2
    for name in names:
        assert not shm_exists(name)


@pytest.mark.timeout(90)
def test_forked_child_exit_does_not_remove_parents_queue() -> None:
    """A child made by os.fork that exits normally leaves its parent's queue."""
    proc = _run_script(
        """
        import os, pyipc
        q = pyipc.Queue()
        pid = os.fork()
        if pid == 0:
            q.put("from child")
            q.close()      # a close in a forked child must not unlink either
            raise SystemExit(0)   # normal interpreter exit: atexit handlers run
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert os.path.exists("/dev/shm/" + q.name), "child removed the segment"
        assert q.get(timeout=5) == "from child"
        print(q.name)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert not shm_exists(proc.stdout.strip())


@pytest.mark.timeout(60)
def test_forked_child_inheriting_the_object_keeps_it(shm_name: NameFactory) -> None:
    """A multiprocessing fork child closing the inherited creator handle does not unlink."""
    if "fork" not in START_METHODS:
        pytest.skip("no fork start method")
    ctx = mp.get_context("fork")
    with Queue(name=shm_name()) as q:
        p = ctx.Process(target=_inherit_and_close, args=(q,))
        p.start()
        p.join(30)
        assert p.exitcode == 0
        assert shm_exists(q.name)
        assert q.get(timeout=5) == "from the forked child"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", START_METHODS)
def test_large_arrays_from_a_child(method: str, shm_name: NameFactory) -> None:
    """Large NumPy arrays and bytes from a child arrive whole, in order, writable."""
    pytest.importorskip("numpy")
    ctx = mp.get_context(method)
    with Queue(name=shm_name(), capacity=2 << 20) as q:
        p = ctx.Process(target=_send_arrays, args=(q, 20))
        p.start()
        try:
            got = list(iter(lambda: q.get(timeout=30), None))
        finally:
            p.join(30)
        assert p.exitcode == 0
        assert [i for i, _, _ in got] == list(range(20))
        for i, a, b in got:
            assert a.shape == (100_000 + i,) and (a == i).all() and a.flags.writeable
            assert b == bytes([i]) * 70_000


@pytest.mark.timeout(60)
@pytest.mark.parametrize("call", ["get()", "put(2)", "get_many(5)"])
def test_ctrl_c_interrupts_a_blocked_call_and_cleans_up(call: str) -> None:
    """SIGINT wakes a blocked get/put with KeyboardInterrupt; the exit still
    removes the queue."""
    src = textwrap.dedent(
        f"""
        import pyipc, sys
        q = pyipc.Queue(1)
        q.put(1) if {call!r}.startswith("put") else None
        print(q.name, flush=True)
        q.{call}
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", src], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        name = proc.stdout.readline().strip()
        assert name
        # The child is now blocked (or about to block) in the call.
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "KeyboardInterrupt" in err
    assert not shm_exists(name)


@pytest.mark.timeout(90)
def test_creator_that_skips_its_exit_handlers_leaves_the_segment() -> None:
    """A creator that ends with os._exit() outside multiprocessing leaves its
    queue's segment (as the README says), for `pyipc rm` to remove."""
    proc = _run_script(
        """
        import os, pyipc
        q = pyipc.Queue()
        print(q.name, flush=True)
        os._exit(0)
        """
    )
    name = proc.stdout.strip()
    try:
        assert proc.returncode == 0, proc.stderr
        assert shm_exists(name)
    finally:
        if name and shm_exists(name):
            os.unlink(f"/dev/shm/{name}")
