"""pyipc.rpc over tcp:// (ZeroMQ, CurveZMQ) on the loopback interface."""
from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from typing import Any, Dict, Iterator, List, Tuple

import pytest

pytest.importorskip("zmq")

import pyipc  # noqa: E402
import pyipc.rpc as rpc  # noqa: E402
from pyipc.rpc import keys as K  # noqa: E402

import rpc_tcp_helpers as H  # noqa: E402

HEARTBEAT = 1.0
LOOPBACK = "tcp://127.0.0.1:0"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: Any) -> Dict[str, str]:
    """Key pairs for a server, an allowed client and a client nobody allowed."""
    return H.make_keys(str(tmp_path_factory.mktemp("keys")))


class Servers:
    """tcp:// test servers in child processes, all killed after the test."""

    def __init__(self, keys: Dict[str, str]) -> None:
        self.keys = keys
        self.procs: List[Any] = []

    def start(self, address: str = LOOPBACK, **opts: Any) -> Tuple[str, Any]:
        opts.setdefault("heartbeat", HEARTBEAT)
        addr, proc = H.start_server(address, self.keys, **opts)
        self.procs.append(proc)
        return addr, proc

    def stop(self) -> None:
        for proc in self.procs:
            H.stop(proc)


@pytest.fixture
def servers(keys: Dict[str, str]) -> Iterator[Servers]:
    """Start tcp:// servers; every one is killed after the test, even on failure."""
    s = Servers(keys)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def client(servers: Servers, keys: Dict[str, str]) -> Iterator[rpc.Client]:
    """A client of a fresh loopback server, closed after the test."""
    address, _ = servers.start()
    c = H.connect(address, keys)
    try:
        yield c
    finally:
        c.close()


# ---- calls ------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_calls_proxy_and_kwargs(client: rpc.Client) -> None:
    """call and proxy return results over tcp://, positional and keyword arguments."""
    assert client.call("echo", {"a": [1, 2.5, None]}) == {"a": [1, 2.5, None]}
    assert client.call("add", 1, 2, c=3) == 6
    assert client.proxy.add(1, b=5) == 6
    assert client.call("echo", b"") == b""
    big = b"x" * (8 << 20)  # more than a local connection's rings hold
    assert client.call("echo", big) == big


@pytest.mark.timeout(60)
def test_large_arrays_travel_as_frames_and_arrive_writable(client: rpc.Client) -> None:
    """NumPy arrays go out of band both ways, intact, and arrive writable."""
    numpy = pytest.importorskip("numpy")
    a = numpy.arange(1 << 20, dtype=numpy.uint8)
    b = numpy.ones((300, 300))
    assert client.call("array_info", a) == (int(a.sum()), True, a.shape)
    got = client.call("echo", [a, b, "small"])
    assert got[2] == "small"
    assert numpy.array_equal(got[0], a) and numpy.array_equal(got[1], b)
    assert got[0].flags.writeable and got[1].flags.writeable
    got[0][:] = 7  # writable memory of its own
    assert client.call("array", 1 << 20).flags.writeable


@pytest.mark.timeout(60)
def test_buffer_may_change_once_submit_returns(client: rpc.Client) -> None:
    """A large array sent without a copy may be changed once submit() or notify() returned."""
    numpy = pytest.importorskip("numpy")
    a = numpy.zeros(32 << 20, dtype=numpy.uint8)
    fut = client.submit("array_info", a)
    a[:] = 1
    assert fut.result(30)[0] == 0
    client.notify("record", a)
    a[:] = 2
    assert H.wait_for(lambda: len(client.call("get_log")) == 1)
    assert int(client.call("get_log")[0].sum()) == a.size


def test_frames_encoding_keeps_buffers_out_of_band() -> None:
    """A large buffer becomes a frame of its own, the very object given (no join copy)."""
    numpy = pytest.importorskip("numpy")
    from pyipc.rpc import protocol as P
    from pyipc.rpc import tcp

    a = numpy.arange(1 << 20, dtype=numpy.uint8)
    msg = tcp.encode_request(P.CALL, 7, 0, "f", (a,), {})
    assert isinstance(msg, list) and len(msg) == 3
    assert len(msg[0]) == P.REQUEST_HEADER.size
    assert memoryview(msg[2]).nbytes == a.nbytes
    assert numpy.shares_memory(numpy.frombuffer(msg[2], dtype=numpy.uint8), a)
    assert isinstance(tcp.encode_request(P.CALL, 8, 0, "f", (b"small",), {}), bytes)


@pytest.mark.timeout(60)
def test_submit_acall_and_notify(client: rpc.Client) -> None:
    """Futures, asyncio calls and notifications work as over the local transport."""
    futures = [client.submit("add", i, b=1) for i in range(1000)]
    assert [f.result(30) for f in futures] == [i + 1 for i in range(1000)]

    async def main() -> List[Any]:
        return await asyncio.gather(*(client.acall("aecho", i) for i in range(100)),
                                    *(client.acall("add", i, b=1) for i in range(100)))

    assert asyncio.run(main()) == list(range(100)) + [i + 1 for i in range(100)]
    client.notify("record", "one")
    client.notify("boom", "key")
    client.notify("record", "two")
    assert H.wait_for(lambda: len(client.call("get_log")) == 2)
    assert client.call("get_log") == ["one", "two"]


@pytest.mark.timeout(60)
def test_many_threads_share_a_client(client: rpc.Client) -> None:
    """Many threads call through one tcp:// client at once; each gets its own results."""
    failures: List[str] = []

    def work(t: int) -> None:
        for i in range(200):
            value = (t, i)
            got = client.submit("echo", value).result(20) if i % 5 == 0 else \
                client.proxy.echo(value)
            if got != value:
                failures.append(f"{got!r} != {value!r}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(50)
    assert not failures


# ---- streams, errors, deadlines -----------------------------------------------------


@pytest.mark.timeout(60)
def test_streams(client: rpc.Client) -> None:
    """Generators stream in order, run a bounded number ahead, and close early on request."""
    assert list(client.call("count", 100)) == list(range(100))
    assert list(client.call("acount", 10)) == list(range(10))
    it = client.call("count", 1000, "bounded")
    assert next(it) == 0
    time.sleep(0.3)
    assert 1 <= client.call("get_produced") <= 1 + 4
    it.close()
    assert H.wait_for(lambda: client.call("event", "bounded") == "closed")
    it = client.call("fails_midway")
    assert next(it) == 1
    with pytest.raises(ValueError, match="midway"):
        next(it)


@pytest.mark.timeout(60)
def test_exceptions(client: rpc.Client) -> None:
    """Remote exceptions keep their type and traceback; others become RemoteError."""
    with pytest.raises(KeyError) as info:
        client.call("boom", "key")
    assert isinstance(info.value.__cause__, rpc.RemoteTraceback)
    assert "in boom" in str(info.value.__cause__)
    with pytest.raises(rpc.RemoteError):
        client.call("boom", "unpicklable")
    with pytest.raises(rpc.NoSuchMethod):
        client.call("nope")
    with pytest.raises(TypeError):
        client.call("lock")
    with pytest.raises(TypeError):
        client.call("record", threading.Lock())
    assert client.call("get_log") == []


@pytest.mark.timeout(60)
def test_deadline_and_cancel(servers: Servers, keys: Dict[str, str]) -> None:
    """A call expired in the queue never runs; a cancelled future never runs; acall cancels."""
    address, _ = servers.start(workers=1)
    with H.connect(address, keys) as c:
        busy = c.submit("slow", 2.0)  # long enough for a loaded machine
        time.sleep(0.1)
        with pytest.raises(TimeoutError):
            c.call("slow", 0, "expired", timeout=0.2)
        queued = c.submit("slow", 0, "cancelled")
        assert queued.cancel()
        assert busy.result(10) == "slow done"
        c.call("slow", 0.1)
        log = c.call("get_log")
        assert "expired" not in log and "cancelled" not in log

        async def main() -> None:
            task = asyncio.ensure_future(c.acall("asleep", 30, "k"))
            for _ in range(200):
                await asyncio.sleep(0.01)
                if await c.acall("event", "k") == "started":
                    break
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            with pytest.raises(TimeoutError):
                await c.acall("asleep", 30, "at", timeout=0.2)

        asyncio.run(main())
        assert H.wait_for(lambda: c.call("event", "k") == "cancelled")


# ---- security ---------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_client_without_an_allowed_key_is_refused(servers: Servers, keys: Dict[str, str]) -> None:
    """A client whose key the server was not given gets PermissionError at connect, promptly."""
    address, _ = servers.start()
    t0 = time.monotonic()
    with pytest.raises(PermissionError, match="refused this client's key"):
        H.connect(address, keys, client="other")
    assert time.monotonic() - t0 < HEARTBEAT + 1.0


@pytest.mark.timeout(60)
def test_wrong_server_key_is_refused(servers: Servers, keys: Dict[str, str]) -> None:
    """A client given another key than the server's gets PermissionError at connect."""
    address, _ = servers.start()
    with pytest.raises(PermissionError, match="server's key"):
        H.connect(address, keys, server="other")


@pytest.mark.timeout(30)
def test_tcp_server_needs_keys(keys: Dict[str, str]) -> None:
    """A tcp:// server without secret_key (or allowed_keys) is a ValueError naming pyipc keygen."""
    with pytest.raises(ValueError, match="pyipc keygen"):
        rpc.Server(LOOPBACK)
    with pytest.raises(ValueError, match="pyipc keygen"):
        rpc.Server(LOOPBACK, allowed_keys=[keys["client"]])
    with pytest.raises(ValueError, match="allowed_keys"):
        rpc.Server(LOOPBACK, secret_key=keys["server_secret"])
    with pytest.raises(ValueError, match="pyipc keygen"):
        rpc.connect("tcp://127.0.0.1:9")
    with pytest.raises(ValueError):
        rpc.Server("/tmp/x.sock", secret_key=keys["server_secret"])


@pytest.mark.timeout(60)
def test_key_arguments_take_files_or_bytes(keys: Dict[str, str]) -> None:
    """Every key argument takes a key file's path or the raw key (Z85 or 32 bytes)."""
    import zmq.auth
    from zmq.utils import z85

    spub, ssec = zmq.auth.load_certificate(keys["server_secret"])
    cpub, csec = zmq.auth.load_certificate(keys["client_secret"])
    assert ssec is not None and csec is not None
    with rpc.Server(LOOPBACK, secret_key=z85.decode(ssec), allowed_keys=[cpub]) as server:
        server.register(len)
        server.start()
        with rpc.connect(server.address, server_key=z85.decode(spub), secret_key=csec) as c:
            assert c.call("len", "abc") == 3
        with rpc.connect(server.address, server_key=keys["server"],
                         secret_key=keys["client_secret"]) as c:
            assert c.call("len", "ab") == 2
    with pytest.raises(ValueError):
        K.public_key(b"short")
    with pytest.raises(ValueError, match="no secret key"):
        K.secret_key(keys["client"])
    with pytest.raises(TypeError):
        K.public_keys(keys["client"])  # type: ignore[arg-type]


@pytest.mark.timeout(30)
def test_address_in_use(keys: Dict[str, str]) -> None:
    """A port where a server listens raises FileExistsError."""
    with rpc.Server(LOOPBACK, secret_key=keys["server_secret"], allowed_keys=[]) as first:
        with pytest.raises(FileExistsError):
            rpc.Server(first.address, secret_key=keys["server_secret"], allowed_keys=[])


@pytest.mark.timeout(60)
def test_nobody_listening(keys: Dict[str, str]) -> None:
    """connect() where no server listens raises ConnectionRefusedError after its timeout."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        H.connect(f"tcp://127.0.0.1:{port}", keys, timeout=0.5)


@pytest.mark.timeout(90)
def test_cli_calls_a_tcp_server_with_key_files(servers: Servers, keys: Dict[str, str]) -> None:
    """`pyipc rpc call tcp://... --server-key --secret-key` prints the result;
    without the keys, or with a key the server never allowed, it fails with 1."""
    address, _ = servers.start()

    def run(*extra: str) -> "subprocess.CompletedProcess[str]":
        return subprocess.run([sys.executable, "-m", "pyipc", "rpc", "call", address, "add",
                               "1", "2", "-k", "c=3", "--timeout", "3", *extra],
                              capture_output=True, text=True, timeout=60, check=False)

    out = run("--server-key", keys["server"], "--secret-key", keys["client_secret"])
    assert (out.returncode, out.stdout) == (0, "6\n"), out.stderr
    out = run()
    assert out.returncode == 1 and "ValueError" in out.stderr and "secret_key" in out.stderr
    out = run("--server-key", keys["server"], "--secret-key", keys["other_secret"])
    assert out.returncode == 1 and "PermissionError" in out.stderr, out.stderr


# ---- keygen ----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_keygen_writes_zeromq_certificates(tmp_path: Any) -> None:
    """pyipc keygen writes NAME.key and NAME.key_secret (0600) that zmq.auth reads, never overwriting."""
    import zmq.auth

    old = os.umask(0)
    try:
        run = subprocess.run([sys.executable, "-m", "pyipc", "keygen", "svc", "--dir",
                              str(tmp_path)], capture_output=True, text=True, timeout=30)
    finally:
        os.umask(old)
    assert run.returncode == 0, run.stderr
    pub, sec = tmp_path / "svc.key", tmp_path / "svc.key_secret"
    assert stat.S_IMODE(os.stat(sec).st_mode) == 0o600
    public, none = zmq.auth.load_certificate(str(pub))
    public2, secret = zmq.auth.load_certificate(str(sec))
    assert none is None and public == public2 and secret is not None
    import zmq

    assert zmq.curve_public(secret) == public
    again = subprocess.run([sys.executable, "-m", "pyipc", "keygen", "svc", "--dir",
                            str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert again.returncode == 1 and "never overwritten" in again.stderr
    assert zmq.auth.load_certificate(str(sec))[1] == secret


@pytest.mark.timeout(60)
def test_without_pyzmq_tcp_raises_import_error(tmp_path: Any) -> None:
    """Without pyzmq, a tcp:// address raises ImportError naming pyipc[net]; local RPC still imports."""
    code = (
        "import sys; sys.modules['zmq'] = None\n"
        "import pyipc.rpc as rpc\n"
        "for f in (lambda: rpc.Server('tcp://127.0.0.1:0'), lambda: rpc.connect('tcp://h:1')):\n"
        "    try:\n"
        "        f()\n"
        "    except ImportError as e:\n"
        "        assert 'pyipc[net]' in str(e), e\n"
        "    else:\n"
        "        raise SystemExit('no ImportError')\n"
        "assert 'zmq' not in sys.modules or sys.modules['zmq'] is None\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr
    code2 = "import sys, pyipc, pyipc.rpc, pyipc.cli; print('zmq' in sys.modules)"
    run2 = subprocess.run([sys.executable, "-c", code2], capture_output=True, text=True,
                          timeout=30)
    assert run2.stdout.strip() == "False", run2.stderr


# ---- failures ---------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_server_killed_mid_call(servers: Servers, keys: Dict[str, str]) -> None:
    """A server SIGKILLed mid-call makes waiting calls raise ServerGone within the heartbeat."""
    address, proc = servers.start()
    with H.connect(address, keys) as c:
        fut = c.submit("slow", 30)
        errors: List[BaseException] = []

        def waiter() -> None:
            try:
                c.call("slow", 30)
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=waiter)
        t.start()
        it = c.call("count", 10**9)
        assert next(it) == 0
        time.sleep(0.2)
        killed = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        with pytest.raises(rpc.ServerGone):
            fut.result(10)
        t.join(10)
        assert time.monotonic() - killed < HEARTBEAT + 0.5
        assert len(errors) == 1 and isinstance(errors[0], rpc.ServerGone)
        with pytest.raises(rpc.ServerGone):
            for _ in it:
                pass
        t0 = time.monotonic()
        with pytest.raises(rpc.ServerGone):
            c.call("echo", 1)  # nobody there: waits one heartbeat for it to come back
        assert time.monotonic() - t0 < HEARTBEAT + 0.5


@pytest.mark.timeout(60)
def test_stopped_server_detected_by_heartbeat(servers: Servers, keys: Dict[str, str]) -> None:
    """A server that stops answering (SIGSTOP: its connection stays open) fails calls within the heartbeat."""
    address, proc = servers.start()
    with H.connect(address, keys) as c:
        assert c.call("echo", 1) == 1
        fut = c.submit("slow", 0.5)
        os.kill(proc.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            with pytest.raises(rpc.ServerGone):
                fut.result(10)
            waited = time.monotonic() - stopped
            assert waited < HEARTBEAT + 0.5, waited
        finally:
            os.kill(proc.pid, signal.SIGCONT)


@pytest.mark.timeout(60)
def test_server_restarted_later_calls_succeed(servers: Servers, keys: Dict[str, str]) -> None:
    """After the server is killed and started again at its address, later calls succeed."""
    address, proc = servers.start()
    with H.connect(address, keys) as c:
        first_pid = c.call("pid")
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(5)
        with pytest.raises(rpc.ServerGone):
            c.call("echo", 1)
        _, proc2 = servers.start(address)
        assert H.wait_for(lambda: _try_pid(c) == proc2.pid, timeout=10)
        assert c.call("pid") != first_pid
        assert list(c.call("count", 3)) == [0, 1, 2]


def _try_pid(c: rpc.Client) -> Any:
    try:
        return c.call("pid", timeout=2)
    except (rpc.ServerGone, TimeoutError):
        return None


@pytest.mark.timeout(90)
def test_two_servers_one_killed_mid_run(servers: Servers, keys: Dict[str, str]) -> None:
    """connect([a, b]) spreads calls; a killed server takes only its in-flight calls, later ones go to the other."""
    a, proc_a = servers.start()
    b, proc_b = servers.start()
    with H.connect([a, b], keys) as c:
        assert H.wait_for(lambda: all(s.up for s in c._t._servers))
        futures = [c.submit("thread_id", i) for i in range(200)]
        assert [f.result(20)[0] for f in futures] == list(range(200))
        pids = [f.result(20) for f in [c.submit("pid") for _ in range(50)]]
        assert set(pids) == {proc_a.pid, proc_b.pid}
        # Calls in flight on both (2 each: slots left for what follows).
        slow = [c.submit("slow", 3) for _ in range(4)]
        time.sleep(0.3)
        os.kill(proc_a.pid, signal.SIGKILL)
        outcomes = []
        for f in slow:
            try:
                outcomes.append(f.result(10))
            except rpc.ServerGone:
                outcomes.append("gone")
        assert sorted(outcomes) == ["gone", "gone", "slow done", "slow done"]
        after = [c.call("pid") for _ in range(20)]
        assert set(after) == {proc_b.pid}
        assert [f.result(20) for f in [c.submit("add", i, 1) for i in range(100)]] == \
            [i + 1 for i in range(100)]


@pytest.mark.timeout(60)
def test_closed_client_and_graceful_close(servers: Servers, keys: Dict[str, str]) -> None:
    """A notify sent just before close() still runs; a closed client raises ValueError."""
    address, _ = servers.start()
    c = H.connect(address, keys)
    c.notify("record", "last words")
    c.close()
    c.close()
    with pytest.raises(ValueError):
        c.call("echo", 1)
    with H.connect(address, keys) as c2:
        assert H.wait_for(lambda: c2.call("get_log") == ["last words"])


@pytest.mark.timeout(60)
def test_client_killed_frees_its_streams(servers: Servers, keys: Dict[str, str]) -> None:
    """A client killed mid-stream: the server closes its generator, cancels its coroutine, goes on."""
    import multiprocessing as mp

    address, _ = servers.start()
    child = mp.get_context("fork").Process(target=_start_stream_and_die, args=(address, keys))
    child.start()
    child.join(30)
    assert child.exitcode == -signal.SIGKILL
    with H.connect(address, keys) as c:
        assert H.wait_for(lambda: c.call("event", "orphan") == "closed", timeout=10)
        assert H.wait_for(lambda: c.call("event", "orphan-coro") == "cancelled", timeout=10)
        assert c.call("add", 2, 3) == 5


def _start_stream_and_die(address: str, keys: Dict[str, str]) -> None:
    c = H.connect(address, keys)
    c.submit("asleep", 60, "orphan-coro")
    it = c.call("count", 10**9, "orphan")
    next(it)
    assert H.wait_for(lambda: c.call("event", "orphan-coro") == "started")
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.timeout(60)
def test_client_passed_to_a_child(servers: Servers, keys: Dict[str, str]) -> None:
    """A tcp:// client pickled into a child connects anew there with its keys."""
    address, proc = servers.start()
    with H.connect(address, keys) as c:
        assert H.run_in(None, _use_client, c) == (42, proc.pid)
        assert c.call("echo", "after") == "after"


def _use_client(c: rpc.Client) -> Tuple[int, int]:
    return c.call("add", 20, 22), c.call("pid")


@pytest.mark.timeout(30)
def test_ipv6_loopback(keys: Dict[str, str]) -> None:
    """tcp://[::1]:port works where the host has IPv6 loopback."""
    import socket

    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with rpc.Server("tcp://[::1]:0", secret_key=keys["server_secret"],
                    allowed_keys=[keys["client"]]) as server:
        server.register(len)
        server.start()
        with H.connect(server.address, keys) as c:
            assert c.call("len", "abcd") == 4
    assert pyipc.rpc.Server is rpc.Server
