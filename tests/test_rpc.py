"""pyipc.rpc: calls between real processes, under fork and spawn."""
from __future__ import annotations

import asyncio
import glob
import multiprocessing as mp
import os
import pickle
import shutil
import signal
import stat
import tempfile
import threading
import time
import uuid
from typing import Any, Callable, Iterator, List, Optional, Tuple

import pytest

import pyipc
import pyipc.rpc as rpc
from pyipc.rpc.local import runtime_dir

import rpc_helpers

METHODS = [m for m in ("fork", "spawn") if m in mp.get_all_start_methods()]


def _leftovers(pid: int) -> List[str]:
    """The shared-memory names a server process made that still exist."""
    return glob.glob(f"/dev/shm/pyipc-rpc-{pid}-*")


def _wait_listening(address: str, proc: Any, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not proc.is_alive():
            raise RuntimeError(f"the server exited with {proc.exitcode}")
        try:
            rpc.connect(address, timeout=1).close()
            return
        except (FileNotFoundError, ConnectionRefusedError):
            time.sleep(0.02)
    raise TimeoutError("the server did not start")


class ServerProcs:
    """Starts test servers in child processes; stops and checks them after."""

    def __init__(self) -> None:
        self.procs: List[Tuple[Any, str]] = []

    def start(self, method: str = "fork", **opts: Any) -> Tuple[str, Any]:
        address = f"test-{os.getpid()}-{uuid.uuid4().hex[:10]}"
        proc = mp.get_context(method).Process(
            target=rpc_helpers.serve, args=(address,), kwargs=opts, daemon=True)
        proc.start()
        self.procs.append((proc, address))
        _wait_listening(address, proc)
        return address, proc

    def stop(self) -> None:
        for proc, address in self.procs:
            if proc.is_alive():
                try:
                    with rpc.connect(address, timeout=2) as c:
                        c.notify("shutdown")
                except (OSError, rpc.ServerGone):
                    pass
                proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(10)
            path = os.path.join(runtime_dir(), address)
            clean_exit = proc.exitcode == 0
            if os.path.exists(path):
                os.unlink(path)
                assert not clean_exit, "a closed server left its socket file"
            left = _leftovers(proc.pid)
            for name in left:
                os.unlink(name)
            assert not left, f"left in /dev/shm: {left}"


@pytest.fixture
def servers() -> Iterator[ServerProcs]:
    """Test servers in child processes, stopped (and checked) after the test."""
    s = ServerProcs()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(params=METHODS)
def method(request: Any) -> str:
    return str(request.param)


# ---- basics ------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_results_kwargs_and_proxy(servers: ServerProcs, method: str) -> None:
    """call and proxy return results, with positional and keyword arguments."""
    address, proc = servers.start(method)
    with rpc.connect(address, timeout=5) as c:
        assert c.call("echo", {"a": [1, 2.5, None]}) == {"a": [1, 2.5, None]}
        assert c.call("add", 1, 2, c=3) == 6
        assert c.call("kwargs", x=1, timeout_=2) == {"x": 1, "timeout_": 2}
        assert c.proxy.add(1, b=5) == 6
        assert c.proxy.pid() == proc.pid
        assert c.call("echo", b"") == b""


@pytest.mark.timeout(60)
def test_submit_1000_in_flight(servers: ServerProcs, method: str) -> None:
    """1,000 submitted calls are in flight at once and each gets its own result."""
    address, _ = servers.start(method)
    with rpc.connect(address) as c:
        futures = [c.submit("add", i, b=1) for i in range(1000)]
        assert [f.result(timeout=30) for f in futures] == [i + 1 for i in range(1000)]


@pytest.mark.timeout(60)
def test_acall(servers: ServerProcs, method: str) -> None:
    """acall returns results to many concurrent tasks of one event loop."""
    address, _ = servers.start(method)

    async def main(c: rpc.Client) -> List[Any]:
        return await asyncio.gather(*(c.acall("aecho", i) for i in range(200)),
                                    *(c.acall("add", i, b=1) for i in range(200)))

    with rpc.connect(address) as c:
        assert asyncio.run(main(c)) == list(range(200)) + [i + 1 for i in range(200)]


@pytest.mark.timeout(60)
def test_acall_cancel_cancels_the_coroutine(servers: ServerProcs) -> None:
    """Cancelling an acall cancels the coroutine function's task on the server."""
    address, _ = servers.start()

    async def main(c: rpc.Client) -> None:
        task = asyncio.ensure_future(c.acall("asleep", 30, "k"))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if await c.acall("event", "k") == "started":
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with rpc.connect(address) as c:
        asyncio.run(main(c))
        deadline = time.monotonic() + 5
        while c.call("event", "k") != "cancelled" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c.call("event", "k") == "cancelled"


@pytest.mark.timeout(60)
def test_cancelled_future_is_never_run(servers: ServerProcs) -> None:
    """A future cancelled while its call waits in the queue never runs."""
    address, _ = servers.start(workers=1)
    with rpc.connect(address) as c:
        busy = c.submit("slow", 0.5)
        time.sleep(0.1)
        queued = c.submit("slow", 0, "should-not-run")
        assert queued.cancel()
        assert busy.result(10) == "slow done"
        c.call("slow", 0.1)
        assert "should-not-run" not in c.call("get_log")


@pytest.mark.timeout(60)
def test_notify(servers: ServerProcs, method: str) -> None:
    """notify runs the function and brings nothing back, errors included."""
    address, _ = servers.start(method)
    with rpc.connect(address) as c:
        assert c.notify("record", "one") is None
        c.notify("boom", "key")  # its error goes nowhere
        c.notify("no-such-method")
        c.notify("record", "two")
        deadline = time.monotonic() + 5
        while len(c.call("get_log")) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c.call("get_log") == ["one", "two"]


# ---- streams -------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_stream_items(servers: ServerProcs, method: str) -> None:
    """A generator function's call yields every item, in order, then ends."""
    address, _ = servers.start(method)
    with rpc.connect(address) as c:
        it = c.call("count", 100)
        assert isinstance(it, rpc.RemoteIterator)
        assert list(it) == list(range(100))
        assert c.call("event", "count") == "exhausted"
        assert list(c.call("acount", 10)) == list(range(10))


@pytest.mark.timeout(60)
def test_stream_runs_a_bounded_number_ahead(servers: ServerProcs) -> None:
    """The server makes at most its window of items ahead of the consumer."""
    address, _ = servers.start(window=4)
    with rpc.connect(address) as c:
        it = c.call("count", 1000)
        assert next(it) == 0
        time.sleep(0.3)
        assert 1 <= c.call("get_produced") <= 1 + 4
        for _ in range(20):
            next(it)
        time.sleep(0.3)
        assert c.call("get_produced") <= 21 + 4
        it.close()


@pytest.mark.timeout(60)
def test_stream_early_close_closes_the_generator(servers: ServerProcs, method: str) -> None:
    """Closing the iterator early closes the generator on the server."""
    address, _ = servers.start(method)
    with rpc.connect(address) as c:
        with c.call("count", 10**9, "early") as it:
            assert next(it) == 0
        deadline = time.monotonic() + 5
        while c.call("event", "early") != "closed" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c.call("event", "early") == "closed"


@pytest.mark.timeout(60)
def test_stream_error_midway(servers: ServerProcs) -> None:
    """An exception inside the generator ends the stream with that exception."""
    address, _ = servers.start()
    with rpc.connect(address) as c:
        it = c.call("fails_midway")
        assert next(it) == 1
        with pytest.raises(ValueError, match="midway") as info:
            next(it)
        assert isinstance(info.value.__cause__, rpc.RemoteTraceback)


# ---- errors -----------------------------------------------------------------


@pytest.mark.timeout(60)
def test_remote_exception_same_type_with_traceback(servers: ServerProcs, method: str) -> None:
    """A remote exception is raised as its own type, the server's traceback as __cause__."""
    address, _ = servers.start(method)
    with rpc.connect(address) as c:
        with pytest.raises(KeyError) as info:
            c.call("boom", "key")
        cause = info.value.__cause__
        assert isinstance(cause, rpc.RemoteTraceback)
        assert "in boom" in str(cause) and "KeyError" in str(cause)
        with pytest.raises(ValueError, match="other"):
            c.proxy.boom("other")


@pytest.mark.timeout(60)
def test_unpicklable_exception_becomes_remote_error(servers: ServerProcs) -> None:
    """Exceptions that cannot travel as themselves become RemoteError."""
    address, _ = servers.start()
    with rpc.connect(address) as c:
        for kind, name in (("unpicklable", "Unpicklable"), ("needs-two", "NeedsTwo")):
            with pytest.raises(rpc.RemoteError) as info:
                c.call("boom", kind)
            err = info.value
            assert isinstance(err, pyipc.IPCError)
            assert err.type_name.endswith(name)
            assert "in boom" in err.traceback
            assert isinstance(err.__cause__, rpc.RemoteTraceback)


@pytest.mark.timeout(60)
def test_unpicklable_result_raises_in_caller(servers: ServerProcs) -> None:
    """A result that does not pickle raises the pickling error in the caller."""
    address, _ = servers.start()
    with rpc.connect(address) as c:
        with pytest.raises(TypeError, match="pickle"):
            c.call("lock")
        assert c.call("echo", 1) == 1


@pytest.mark.timeout(60)
def test_no_such_method(servers: ServerProcs) -> None:
    """An unknown method raises NoSuchMethod, an IPCError and AttributeError."""
    address, _ = servers.start()
    with rpc.connect(address) as c:
        with pytest.raises(rpc.NoSuchMethod) as info:
            c.call("nope")
        assert isinstance(info.value, AttributeError)
        assert isinstance(info.value, pyipc.IPCError)
        with pytest.raises(AttributeError):
            c.proxy.nope()


@pytest.mark.timeout(60)
def test_unpicklable_arguments_raise_before_sending(servers: ServerProcs) -> None:
    """Arguments that do not pickle raise in the caller and nothing is sent."""
    address, _ = servers.start()
    with rpc.connect(address) as c:
        with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
            c.call("record", threading.Lock())
        with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
            c.submit("record", lambda: 1)
        with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
            c.notify("record", threading.Lock())
        assert c.call("get_log") == []


@pytest.mark.timeout(120)
def test_messages_larger_than_the_ring(servers: ServerProcs) -> None:
    """Requests, results, stream items and acall results larger than the connection's 4 MiB
    rings travel whole (in fragments), also while other threads' calls go between the pieces;
    the server holds no half-received request afterwards."""
    import concurrent.futures
    import hashlib

    numpy = pytest.importorskip("numpy")
    address, _ = servers.start()
    with rpc.connect(address) as c:
        big = os.urandom(9 << 20)  # more than two rings
        assert c.call("echo", big) == big
        assert c.call("sha256", big) == hashlib.sha256(big).hexdigest()
        a = numpy.arange(3 << 20, dtype=numpy.float64)  # 24 MiB, out of band
        b = c.call("echo", a)
        assert b.flags.writeable and numpy.array_equal(a, b)
        size = 5 << 20
        items = list(c.call("blobs", 3, size))
        assert items == [i.to_bytes(8, "little") * (size // 8) for i in range(3)]
        assert asyncio.run(c.acall("aecho", big)) == big

        def mixed(k: int) -> None:
            payload = os.urandom((4 << 20) + k * 777_777)
            for i in range(3):
                assert c.call("sha256", payload) == hashlib.sha256(payload).hexdigest()
                assert c.call("add", i, b=k) == i + k

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            for f in [pool.submit(mixed, k) for k in range(4)]:
                f.result(timeout=60)
        assert c.call("partial_requests") == 0


@pytest.mark.timeout(60)
def test_large_arrays_travel_out_of_band(servers: ServerProcs) -> None:
    """NumPy arrays travel both ways intact and arrive writable."""
    numpy = pytest.importorskip("numpy")
    address, _ = servers.start()
    with rpc.connect(address) as c:
        a = numpy.arange(1 << 20, dtype=numpy.uint8)
        assert c.call("array_info", a) == (int(a.sum()), True, a.shape)
        b = c.call("array", 1 << 20)
        assert b.flags.writeable and numpy.array_equal(a, b)


# ---- deadlines ------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_timeout_raises_and_expired_call_never_runs(servers: ServerProcs) -> None:
    """A call whose deadline passes while queued raises TimeoutError and never runs."""
    address, _ = servers.start(workers=1)
    with rpc.connect(address) as c:
        busy = c.submit("slow", 0.6)
        time.sleep(0.1)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            c.call("slow", 0, "expired", timeout=0.2)
        assert 0.15 < time.monotonic() - t0 < 0.5
        assert busy.result(10) == "slow done"
        c.call("slow", 0.1)
        assert "expired" not in c.call("get_log")


@pytest.mark.timeout(60)
def test_deadline_cancels_a_coroutine(servers: ServerProcs) -> None:
    """A coroutine function still running at the deadline has its task cancelled."""
    address, _ = servers.start()
    with rpc.connect(address) as c:
        with pytest.raises(TimeoutError):
            c.call("asleep", 30, "dl", timeout=0.3)
        deadline = time.monotonic() + 5
        while c.call("event", "dl") != "cancelled" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c.call("event", "dl") == "cancelled"


@pytest.mark.timeout(60)
def test_acall_timeout(servers: ServerProcs) -> None:
    """acall's timeout raises the builtin TimeoutError."""
    address, _ = servers.start()
    with rpc.connect(address) as c:
        with pytest.raises(TimeoutError):
            asyncio.run(c.acall("asleep", 30, "at", timeout=0.2))


@pytest.mark.timeout(30)
def test_negative_timeout(servers: ServerProcs) -> None:
    """A negative timeout is a ValueError."""
    address, _ = servers.start()
    with rpc.connect(address) as c:
        with pytest.raises(ValueError):
            c.call("echo", 1, timeout=-1)


# ---- failures ----------------------------------------------------------------


@pytest.mark.timeout(60)
def test_server_killed_mid_call(servers: ServerProcs, method: str) -> None:
    """A server SIGKILLed mid-call makes every waiting call raise ServerGone within a second."""
    address, proc = servers.start(method)
    with rpc.connect(address) as c:
        fut = c.submit("slow", 30)
        errors: List[BaseException] = []

        def waiter() -> None:
            try:
                c.call("slow", 30)
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(0.2)
        killed = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        with pytest.raises(rpc.ServerGone):
            fut.result(5)
        t.join(5)
        assert time.monotonic() - killed < 1.0
        assert len(errors) == 1 and isinstance(errors[0], rpc.ServerGone)
        assert isinstance(errors[0], ConnectionError)
        with pytest.raises(rpc.ServerGone):
            c.call("echo", 1)
    proc.join(5)


def _client_killed_mid_call(address: str) -> None:
    c = rpc.connect(address)
    c.submit("slow", 0.3)
    c.submit("count", 10**9)
    c.submit("asleep", 60, "killed-coro")
    it = c.call("count", 10**9, "killed")
    next(it)
    c.call("record", "child ready")
    time.sleep(60)


@pytest.mark.timeout(60)
def test_client_killed_mid_call(servers: ServerProcs, method: str) -> None:
    """A client SIGKILLed mid-call: the server goes on and frees what it held."""
    address, proc = servers.start(method)
    child = mp.get_context(method).Process(target=_client_killed_mid_call, args=(address,))
    child.start()
    with rpc.connect(address) as c:
        deadline = time.monotonic() + 20
        while "child ready" not in c.call("get_log") and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        child.join(5)
        deadline = time.monotonic() + 5
        while c.call("event", "killed") != "closed" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert c.call("event", "killed") == "closed"
        while c.call("event", "killed-coro") != "cancelled" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert c.call("event", "killed-coro") == "cancelled"
        assert c.call("add", 2, 3) == 5
    assert _leftovers(proc.pid) == []


@pytest.mark.timeout(60)
def test_server_close_wakes_waiting_clients(tmp_path: Any) -> None:
    """server.close() makes calls waiting in clients raise ServerGone."""
    server = rpc.Server(str(tmp_path / "s.sock"))
    release = threading.Event()

    @server.register
    def block() -> None:
        release.wait(30)

    server.start()
    c = rpc.connect(server.address)
    fut = c.submit("block")
    time.sleep(0.1)
    server.close()
    try:
        with pytest.raises(rpc.ServerGone):
            fut.result(5)
        with pytest.raises(rpc.ServerGone):
            c.call("block")
    finally:
        release.set()
        c.close()
    assert not os.path.exists(server.address)
    assert _leftovers(os.getpid()) == []


# ---- addresses, permissions --------------------------------------------------


@pytest.mark.timeout(30)
def test_address_in_use_and_stale_socket(tmp_path: Any) -> None:
    """A live server's address raises FileExistsError; a dead one's socket is replaced."""
    path = str(tmp_path / "s.sock")
    with rpc.Server(path) as first:
        first.start()
        with pytest.raises(FileExistsError):
            rpc.Server(path)
    # A socket file left without a listener (as by a killed server).
    lst = pyipc.UnixListener(path)
    lst._pid = -1  # make close() leave the file behind
    lst.close()
    assert os.path.exists(path)
    with rpc.Server(path) as second:
        second.register(len)
        second.start()
        with rpc.connect(path) as c:
            assert c.call("len", "abc") == 3
    assert not os.path.exists(path)


@pytest.mark.timeout(30)
def test_missing_server(tmp_path: Any) -> None:
    """Connecting where no server is raises FileNotFoundError or ConnectionRefusedError."""
    with pytest.raises(FileNotFoundError):
        rpc.connect(str(tmp_path / "nobody"))
    with pytest.raises(FileNotFoundError):
        rpc.connect(f"nobody-{uuid.uuid4().hex}")
    lst = pyipc.UnixListener(str(tmp_path / "dead"))
    lst._pid = -1
    lst.close()
    with pytest.raises(ConnectionRefusedError):
        rpc.connect(str(tmp_path / "dead"))


@pytest.mark.timeout(30)
def test_addresses(tmp_path: Any) -> None:
    """Names resolve in the private 0700 directory; bad addresses are ValueErrors."""
    name = f"named-{uuid.uuid4().hex[:8]}"
    with rpc.Server(name) as server:
        assert server.address == os.path.join(runtime_dir(), name)
        st = os.stat(runtime_dir())
        assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
    for bad in ("a/b", "", "tcp://", "http://x", "x" * 200):
        with pytest.raises(ValueError):
            rpc.Server(bad)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", [0o600, 0o660, 0o666])
def test_socket_mode_is_exact(tmp_path: Any, mode: int) -> None:
    """The socket file has exactly `mode`, whatever the umask, and goes on close."""
    path = str(tmp_path / "m.sock")
    old = os.umask(0o077)
    try:
        server = rpc.Server(path, mode=mode)
    finally:
        os.umask(old)
    with server:
        assert stat.S_IMODE(os.stat(path).st_mode) == mode
    assert not os.path.exists(path)


def _connect_as(uid: int, path: str, out: Any) -> None:
    os.setgid(uid)
    os.setuid(uid)
    try:
        with rpc.connect(path, timeout=5) as c:
            out.put(("ok", c.call("add", 1, 2)))
    except BaseException as exc:
        out.put((type(exc).__name__, str(exc)))


def _as_other_uid(path: str, uid: int = 65534) -> Tuple[str, Any]:
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_connect_as, args=(uid, path, q))
    p.start()
    p.join(20)
    return q.get(timeout=5)  # type: ignore[no-any-return]


@pytest.fixture
def open_dir() -> Iterator[str]:
    """A directory every user can reach, removed after the test."""
    path = tempfile.mkdtemp(prefix="pyipc-test-rpc-")
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.timeout(60)
def test_other_uid_is_refused(open_dir: str) -> None:
    """A process of another uid gets PermissionError, even where it can reach the socket."""
    if os.geteuid() != 0:
        pytest.skip("needs root to setuid a child")
    path = os.path.join(open_dir, "open.sock")
    with rpc.Server(path, mode=0o666) as server:
        server.register_instance(rpc_helpers.Service())
        server.start()
        kind, message = _as_other_uid(path)
        assert kind == "PermissionError", message
        assert "uid 65534" in message


@pytest.mark.timeout(60)
def test_allowed_uid_is_served(open_dir: str) -> None:
    """A uid in allow_uids connects and calls (a root server hands it the rings)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to setuid a child")
    path = os.path.join(open_dir, "shared.sock")
    with rpc.Server(path, mode=0o666, allow_uids=[65534]) as server:
        server.register_instance(rpc_helpers.Service())
        server.start()
        assert _as_other_uid(path) == ("ok", 3)
    assert _leftovers(os.getpid()) == []


# ---- threads, processes ------------------------------------------------------


@pytest.mark.timeout(60)
def test_many_threads_share_a_client(servers: ServerProcs) -> None:
    """Many threads call through one client at once; each gets its own results."""
    address, _ = servers.start(workers=4)
    failures: List[str] = []
    with rpc.connect(address) as c:

        def work(t: int) -> None:
            for i in range(300):
                value = (t, i)
                if i % 50 == 0:
                    got = c.submit("echo", value).result(10)
                elif i % 7 == 0:
                    got = c.call("slow", 0.001) and value
                else:
                    got = c.proxy.echo(value)
                if got != value:
                    failures.append(f"{got!r} != {value!r}")

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(50)
        assert not failures


@pytest.mark.timeout(60)
def test_slow_call_does_not_block_the_clients_other_calls(servers: ServerProcs) -> None:
    """While one call of a client runs long, its other calls are served."""
    address, _ = servers.start(workers=2)
    with rpc.connect(address) as c:
        slow = c.submit("slow", 1)
        t0 = time.monotonic()
        assert c.call("echo", 1, timeout=0.8) == 1
        assert time.monotonic() - t0 < 0.8
        assert slow.result(10) == "slow done"


def _use_client(c: rpc.Client, out: Any) -> None:
    out.put((c.call("add", 20, 22), c.call("pid")))
    c.close()


@pytest.mark.timeout(60)
def test_client_passed_to_a_child(servers: ServerProcs, method: str) -> None:
    """A client given to a child process (pickled or inherited) connects anew there."""
    address, proc = servers.start()
    ctx = mp.get_context(method)
    q = ctx.Queue()
    with rpc.connect(address) as c:
        assert c.call("echo", "before") == "before"
        child = ctx.Process(target=_use_client, args=(c, q))
        child.start()
        assert q.get(timeout=20) == (42, proc.pid)
        child.join(10)
        assert child.exitcode == 0
        # The parent's connection is untouched by the child's.
        assert c.call("echo", "after") == "after"
        clone = pickle.loads(pickle.dumps(c))
        assert clone.call("add", 1, 1) == 2
        clone.close()


@pytest.mark.timeout(30)
def test_closed_client(servers: ServerProcs) -> None:
    """Every call on a closed client raises ValueError; close is idempotent."""
    address, _ = servers.start()
    c = rpc.connect(address)
    c.close()
    c.close()
    assert c.closed
    for f in (lambda: c.call("echo", 1), lambda: c.submit("echo", 1),
              lambda: c.notify("echo", 1), lambda: asyncio.run(c.acall("echo", 1))):
        with pytest.raises(ValueError):
            f()


@pytest.mark.timeout(30)
def test_register_forms(tmp_path: Any) -> None:
    """register works as a call, a bare decorator and a named decorator."""
    with rpc.Server(str(tmp_path / "r.sock")) as server:
        server.register(abs)
        server.register(max, "biggest")

        @server.register
        def one() -> int:
            return 1

        @server.register(name="two")
        def _two() -> int:
            return 2

        class Calc:
            def mul(self, a: int, b: int) -> int:
                return a * b

            def _hidden(self) -> None:
                pass

        server.register_instance(Calc(), prefix="calc.")
        assert server.methods() == ["abs", "biggest", "calc.mul", "one", "two"]
        server.start()
        with rpc.connect(server.address) as c:
            assert c.call("abs", -3) == 3
            assert c.call("biggest", 1, 5) == 5
            assert c.proxy.one() + c.proxy.two() == 3
            assert c.proxy.calc.mul(6, 7) == 42
            with pytest.raises(rpc.NoSuchMethod):
                c.call("calc._hidden")


@pytest.mark.timeout(60)
def test_acall_of_a_generator_iterates_async(servers: ServerProcs) -> None:
    """acall of a generator function gives an iterator that `async for` reads."""
    address, _ = servers.start()

    async def main(c: rpc.Client) -> List[int]:
        it = await c.acall("count", 5)
        return [x async for x in it]

    with rpc.connect(address) as c:
        assert asyncio.run(main(c)) == list(range(5))
        fut = c.submit("count", 3)
        assert list(fut.result(10)) == [0, 1, 2]


@pytest.mark.timeout(30)
def test_runtime_dir_must_be_private(tmp_path: Any, monkeypatch: Any) -> None:
    """A per-user directory open to others is refused with PermissionError."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    os.mkdir(tmp_path / "pyipc", 0o755)
    os.chmod(tmp_path / "pyipc", 0o755)
    with pytest.raises(PermissionError):
        rpc.Server("open-dir")
    os.chmod(tmp_path / "pyipc", 0o700)
    with rpc.Server("open-dir") as server:
        assert server.address == str(tmp_path / "pyipc" / "open-dir")


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.timeout(60)
def test_idle_server_and_client_sleep(servers: ServerProcs) -> None:
    """An idle server and an idle connected client use (almost) no CPU: they sleep."""
    address, proc = servers.start()
    with rpc.connect(address) as c:
        c.call("echo", 1)
        c.submit("echo", 1).result()  # the pump thread exists too
        time.sleep(0.5)
        server0, client0 = _cpu_seconds(proc.pid), time.process_time()
        time.sleep(2.0)
        server_cpu = _cpu_seconds(proc.pid) - server0
        client_cpu = time.process_time() - client0
    # A thread spinning would use the whole 2 s; sleeping ones wake every
    # 100 ms for a few microseconds.
    assert server_cpu < 0.2 and client_cpu < 0.2, (server_cpu, client_cpu)


# ---- the workers bound ------------------------------------------------------------


@pytest.mark.timeout(60)
def test_worker_slots_bound_and_never_lose_a_wakeup() -> None:
    """The server's `workers` semaphore: at most n holders at once, a
    non-blocking acquire fails when all are taken, and 16 threads trading
    3 slots 2,000 times each all finish with every slot back."""
    from pyipc.rpc.server import _WorkerSlots

    slots = _WorkerSlots(3)
    assert all(slots.acquire(False) for _ in range(3))
    assert not slots.acquire(False)
    for _ in range(3):
        slots.release()

    lock = threading.Lock()
    inside = [0, 0]  # now, most seen

    def work() -> None:
        for i in range(2000):
            with slots:
                with lock:
                    inside[0] += 1
                    inside[1] = max(inside[1], inside[0])
                if i % 100 == 0:
                    time.sleep(0.0005)
                with lock:
                    inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(50)
    assert not any(t.is_alive() for t in threads), "a thread never got a slot"
    assert inside == [0, 3]
    assert all(slots.acquire(False) for _ in range(3)) and not slots.acquire(False)


@pytest.mark.timeout(30)
def test_worker_slots_release_wakes_a_blocked_acquirer() -> None:
    """A thread asleep waiting for the only slot gets it when it is released
    (the release must notify a counted waiter), and the pool never grows."""
    from pyipc.rpc.server import _WorkerSlots

    slots = _WorkerSlots(1)
    assert slots.acquire(False)
    got = threading.Event()

    def waiter() -> None:
        slots.acquire()
        got.set()

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while slots._waiting != 1:  # asleep in the slow path, counted
        assert time.monotonic() < deadline, "the waiter never went to sleep"
        time.sleep(0.001)
    time.sleep(0.05)  # well inside Condition.wait()
    assert not got.is_set()
    slots.release()
    assert got.wait(5), "a release did not wake the thread waiting for the slot"
    t.join(5)
    assert not slots.acquire(False)  # the waiter holds the one slot
    slots.release()
    assert slots.acquire(False) and not slots.acquire(False)
