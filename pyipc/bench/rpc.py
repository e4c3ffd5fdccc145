"""RPC round trips: ``pyipc.rpc`` beside Python's other ways to call a process.

A no-op ``f(x) -> x`` with a small int and with 1 KiB of bytes, the server
in a child process pinned to one CPU and the client in this process pinned
to the other (``pyipc.bench.runner.pick_cpus``; unpinned on a one-CPU machine).
Side by side in the same run: ``multiprocessing.managers.BaseManager``, a
``multiprocessing.connection`` request/reply loop, grpcio over a UNIX socket
(sync, and ``grpc.aio`` on both sides), Pyro5, RPyC and a raw pyzmq REQ/REP
loop over ``ipc://``; each one not installed is skipped with a note.  For
``pyipc.rpc`` also: ``submit`` with 1,000 calls in flight and ``acall`` from
100 asyncio tasks.

Ways to run it:

* ``pyipc bench --rpc [--duration S] [--transports a,b]`` (or ``python
  benches/bench_rpc.py [--duration S] [--only a,b]``): a table of calls/s,
  p50 and p99 round trips, and the ratio to ``multiprocessing.managers``,
  then the idle CPU of a server and a client;
* ``pyipc bench --rpc --tcp`` (or ``python benches/bench_rpc.py --tcp
  [--pin split|same|none]``): tcp:// on loopback: pyipc.rpc (CurveZMQ)
  beside grpcio (insecure and TLS) and raw pyzmq REQ/REP with and without
  CurveZMQ, round trips and pipelined calls;
* ``pytest benches/bench_rpc.py --benchmark-only``: pytest-benchmark, one
  round being one call.

Nothing here asserts a timing.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib
import multiprocessing as mp
import os
import pickle
import shutil
import signal
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from .runner import pick_cpus

PAYLOADS: Dict[str, Any] = {"int": 12345, "1KiB": b"\xa5" * 1024}
# A large argument and result, made when first asked for (--payloads 64MiB):
# a NumPy array (bytes without NumPy), what a pipeline moves.  Round trips
# only (1,000 of them in flight would be 64 GiB), and only with the
# contenders that carry a message this large (grpcio stops at 4 MiB by
# default; Pyro5's serializer and RPyC are not made for bulk data).
LARGE_PAYLOADS: Dict[str, int] = {"64MiB": 64 << 20}
LARGE_CONTENDERS = ("pyipc.rpc", "mp.managers", "mp.connection", "zmq")
PIPELINE = 1000  # calls in flight for `submit`
TASKS = 100  # asyncio tasks for `acall`

CallFn = Callable[[Any], Any]


def f(x: Any) -> Any:
    """The function every server exposes."""
    return x


def payload_value(payload: str) -> Any:
    """The argument for ``payload``: one of PAYLOADS or LARGE_PAYLOADS."""
    if payload in LARGE_PAYLOADS:
        n = LARGE_PAYLOADS[payload]
        try:
            import numpy
        except ImportError:
            return bytes(range(256)) * (n // 256)
        return numpy.arange(n // 8, dtype=numpy.float64)
    return PAYLOADS[payload]


def same(a: Any, b: Any) -> bool:
    """Did the call give back what it was given (arrays too)?"""
    if type(a) is not type(b):
        return False
    if hasattr(a, "shape"):
        return bool(a.shape == b.shape and (a == b).all())
    return bool(a == b)


def _pin(cpu: Optional[int]) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


# ---- servers (run in a child) -------------------------------------------------


def _serve_pyipc(path: str) -> None:
    import pyipc.rpc

    server = pyipc.rpc.Server(path, workers=4)
    server.register(f)
    try:
        server.serve_forever()
    finally:
        server.close()


def _serve_managers(path: str) -> None:
    from multiprocessing.managers import BaseManager

    class Service:
        def f(self, x: Any) -> Any:
            return x

    service = Service()

    class M(BaseManager):
        pass

    M.register("service", callable=lambda: service)
    M(address=path, authkey=b"bench").get_server().serve_forever()


def _serve_mpconn(path: str) -> None:
    from multiprocessing.connection import Listener

    with Listener(path, authkey=b"bench") as lst:
        conn = lst.accept()
        while True:
            try:
                conn.send(conn.recv())
            except EOFError:
                return


def _grpc_handler() -> Any:
    grpc = importlib.import_module("grpc")

    return grpc.method_handlers_generic_handler("bench", {
        "f": grpc.unary_unary_rpc_method_handler(
            lambda req, ctx: req, request_deserializer=pickle.loads,
            response_serializer=pickle.dumps),
    })


def _serve_grpc(path: str) -> None:
    from concurrent import futures

    grpc = importlib.import_module("grpc")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((_grpc_handler(),))
    server.add_insecure_port(f"unix://{path}")
    server.start()
    server.wait_for_termination()


def _serve_grpc_aio(path: str) -> None:
    grpc = importlib.import_module("grpc")

    async def main() -> None:
        async def handler(req: Any, ctx: Any) -> Any:
            return req

        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench", {
            "f": grpc.unary_unary_rpc_method_handler(
                handler, request_deserializer=pickle.loads, response_serializer=pickle.dumps),
        }),))
        server.add_insecure_port(f"unix://{path}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def _serve_pyro5(path: str) -> None:
    Pyro5 = importlib.import_module("Pyro5")
    importlib.import_module("Pyro5.api")

    Pyro5.config.SERIALIZER = "marshal"

    @Pyro5.api.expose
    class Service:
        def f(self, x: Any) -> Any:
            return x

    daemon = Pyro5.api.Daemon(unixsocket=path)
    daemon.register(Service, "bench")
    daemon.requestLoop()


def _serve_rpyc(path: str) -> None:
    rpyc = importlib.import_module("rpyc")
    ThreadedServer = importlib.import_module("rpyc.utils.server").ThreadedServer

    # Made with type(): rpyc.Service is only known at run time.
    Service = type("Service", (rpyc.Service,), {"exposed_f": lambda self, x: x})

    ThreadedServer(Service, socket_path=path,
                   protocol_config={"allow_public_attrs": True}).start()


def _serve_zmq(path: str) -> None:
    zmq = importlib.import_module("zmq")

    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    sock.bind(f"ipc://{path}")
    while True:
        sock.send(pickle.dumps(pickle.loads(sock.recv()), 5))


# ---- clients (in this process) -------------------------------------------------


def _client_pyipc(path: str) -> Tuple[CallFn, Callable[[], None]]:
    import pyipc.rpc

    c = pyipc.rpc.connect(path, timeout=10)
    call = c.call
    return (lambda x: call("f", x)), c.close


def _client_managers(path: str) -> Tuple[CallFn, Callable[[], None]]:
    from multiprocessing.managers import BaseManager

    class M(BaseManager):
        pass

    M.register("service")
    m = M(address=path, authkey=b"bench")
    m.connect()
    proxy = m.service()  # type: ignore[attr-defined]
    return proxy.f, lambda: None


def _client_mpconn(path: str) -> Tuple[CallFn, Callable[[], None]]:
    from multiprocessing.connection import Client

    conn = Client(path, authkey=b"bench")

    def call(x: Any) -> Any:
        conn.send(x)
        return conn.recv()

    return call, conn.close


def _client_grpc(path: str) -> Tuple[CallFn, Callable[[], None]]:
    grpc = importlib.import_module("grpc")

    channel = grpc.insecure_channel(f"unix://{path}")
    stub = channel.unary_unary("/bench/f", request_serializer=pickle.dumps,
                               response_deserializer=pickle.loads)
    return stub, channel.close


def _client_pyro5(path: str) -> Tuple[CallFn, Callable[[], None]]:
    Pyro5 = importlib.import_module("Pyro5")
    importlib.import_module("Pyro5.api")

    Pyro5.config.SERIALIZER = "marshal"
    proxy = Pyro5.api.Proxy(f"PYRO:bench@./u:{path}")
    return proxy.f, proxy._pyroRelease


def _client_rpyc(path: str) -> Tuple[CallFn, Callable[[], None]]:
    rpyc = importlib.import_module("rpyc")

    conn = rpyc.utils.factory.unix_connect(path)
    return conn.root.f, conn.close


def _client_zmq(path: str) -> Tuple[CallFn, Callable[[], None]]:
    zmq = importlib.import_module("zmq")

    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.connect(f"ipc://{path}")

    def call(x: Any) -> Any:
        sock.send(pickle.dumps(x, 5))
        return pickle.loads(sock.recv())

    def close() -> None:
        sock.close(0)
        ctx.term()

    return call, close


# name: (module that must import, server, client factory or None for asyncio, note)
CONTENDERS: Dict[str, Tuple[Optional[str], Callable[[str], None], Any, str]] = {
    "pyipc.rpc": (None, _serve_pyipc, _client_pyipc, "call(); shared-memory rings"),
    "mp.managers": (None, _serve_managers, _client_managers, "BaseManager proxy method"),
    "mp.connection": (None, _serve_mpconn, _client_mpconn, "send/recv loop, UNIX socket"),
    "grpc": ("grpc", _serve_grpc, _client_grpc, "unary, UNIX socket, pickle"),
    "grpc.aio": ("grpc", _serve_grpc_aio, None, "grpc.aio both sides"),
    "Pyro5": ("Pyro5", _serve_pyro5, _client_pyro5, "UNIX socket, marshal"),
    "RPyC": ("rpyc", _serve_rpyc, _client_rpyc, "UNIX socket"),
    "zmq": ("zmq", _serve_zmq, _client_zmq, "REQ/REP ipc://, pickle"),
}


def unavailable(name: str) -> Optional[str]:
    """Why contender ``name`` cannot run here (None if it can)."""
    module = CONTENDERS[name][0]
    if module is None:
        return None
    try:
        __import__(module)
    except ImportError as exc:
        return f"{module} is not installed ({exc})"
    return None


def _child(name: str, path: str, cpu: Optional[int]) -> None:
    _pin(cpu)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    CONTENDERS[name][1](path)


class Running:
    """A contender's server in a pinned child process."""

    def __init__(self, name: str, cpus: Tuple[Optional[int], Optional[int]]) -> None:
        self.name = name
        self.dir = tempfile.mkdtemp(prefix="pyipc-bench-rpc-")
        self.path = os.path.join(self.dir, "s")
        self.proc = mp.get_context("fork").Process(target=_child, args=(name, self.path, cpus[1]),
                                                   daemon=True)
        self.proc.start()
        end = time.monotonic() + 20
        while not os.path.exists(self.path):
            if time.monotonic() > end or not self.proc.is_alive():
                self.stop()
                raise RuntimeError(f"{name}: the server did not start")
            time.sleep(0.01)
        time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        shutil.rmtree(self.dir, ignore_errors=True)


def _summary(name: str, payload: str, lat_ns: List[int], elapsed: float, note: str) -> Dict[str, Any]:
    lat = sorted(lat_ns)
    return {
        "name": name,
        "payload": payload,
        "calls": len(lat),
        "calls_per_s": len(lat) / elapsed,
        "p50_us": lat[len(lat) // 2] / 1e3,
        "p99_us": lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1e3,
        "note": note,
    }


def _sequential(call: CallFn, x: Any, duration: float) -> Tuple[List[int], float]:
    large = getattr(x, "nbytes", len(x) if isinstance(x, bytes) else 0) > 1 << 20
    for _ in range(3 if large else 200):  # warm up: connections, caches, the ring's pages
        call(x)
    lat: List[int] = []
    now = time.perf_counter_ns
    end = now() + int(duration * 1e9)
    t0 = now()
    while True:
        a = now()
        call(x)
        b = now()
        lat.append(b - a)
        if b >= end:
            break
    return lat, (now() - t0) / 1e9


def _grpc_aio_sequential(path: str, x: Any, duration: float) -> Tuple[List[int], float]:
    grpc = importlib.import_module("grpc")

    async def main() -> Tuple[List[int], float]:
        async with grpc.aio.insecure_channel(f"unix://{path}") as channel:
            stub = channel.unary_unary("/bench/f", request_serializer=pickle.dumps,
                                       response_deserializer=pickle.loads)
            for _ in range(200):
                await stub(x)
            lat: List[int] = []
            now = time.perf_counter_ns
            end = now() + int(duration * 1e9)
            t0 = now()
            while True:
                a = now()
                await stub(x)
                b = now()
                lat.append(b - a)
                if b >= end:
                    break
            return lat, (now() - t0) / 1e9

    return asyncio.run(main())


def measure(name: str, payload: str, duration: float,
            cpus: Optional[Tuple[Optional[int], Optional[int]]] = None) -> Dict[str, Any]:
    """Sequential round trips of ``f(x)`` with contender ``name``."""
    cpus = cpus or pick_cpus()
    x = payload_value(payload)
    before = os.sched_getaffinity(0)
    server = Running(name, cpus)
    try:
        _pin(cpus[0])
        factory = CONTENDERS[name][2]
        if factory is None:
            lat, elapsed = _grpc_aio_sequential(server.path, x, duration)
        else:
            call, close = factory(server.path)
            try:
                assert same(call(x), x)
                lat, elapsed = _sequential(call, x, duration)
            finally:
                close()
    finally:
        os.sched_setaffinity(0, before)
        server.stop()
    return _summary(name, payload, lat, elapsed, CONTENDERS[name][3])


def measure_pipelined(payload: str, duration: float,
                      cpus: Optional[Tuple[Optional[int], Optional[int]]] = None) -> Dict[str, Any]:
    """``pyipc.rpc`` ``submit``: rounds of PIPELINE calls in flight."""
    import pyipc.rpc

    cpus = cpus or pick_cpus()
    x = PAYLOADS[payload]
    before = os.sched_getaffinity(0)
    server = Running("pyipc.rpc", cpus)
    try:
        _pin(cpus[0])
        pid = server.proc.pid
        assert pid is not None
        with pyipc.rpc.connect(server.path, timeout=10) as c:
            submit = c.submit
            calls = 0
            rounds: List[int] = []
            end = time.monotonic() + duration
            s0, c0 = _cpu(pid), time.process_time()
            t0 = time.perf_counter()
            while time.monotonic() < end:
                a = time.perf_counter_ns()
                futures = [submit("f", x) for _ in range(PIPELINE)]
                for fut in futures:
                    fut.result()
                rounds.append((time.perf_counter_ns() - a) // PIPELINE)
                calls += PIPELINE
            elapsed = time.perf_counter() - t0
            # CPU per call on each side: which one limits the rate.
            server_us = (_cpu(pid) - s0) / calls * 1e6
            client_us = (time.process_time() - c0) / calls * 1e6
    finally:
        os.sched_setaffinity(0, before)
        server.stop()
    out = _summary("pyipc.rpc submit", payload, rounds, elapsed,
                   f"{PIPELINE} in flight; CPU/call: client {client_us:.1f} us, "
                   f"server {server_us:.1f} us")
    out["client_cpu_us"], out["server_cpu_us"] = client_us, server_us
    out["calls"] = calls
    out["calls_per_s"] = calls / elapsed
    out["p50_us"] = out["p99_us"] = float("nan")  # no per-call latency
    return out


def measure_acall(payload: str, duration: float,
                  cpus: Optional[Tuple[Optional[int], Optional[int]]] = None) -> Dict[str, Any]:
    """``pyipc.rpc`` ``acall`` from TASKS concurrent asyncio tasks."""
    import pyipc.rpc

    cpus = cpus or pick_cpus()
    x = PAYLOADS[payload]
    before = os.sched_getaffinity(0)
    server = Running("pyipc.rpc", cpus)
    lat: List[int] = []
    try:
        _pin(cpus[0])
        with pyipc.rpc.connect(server.path, timeout=10) as c:

            async def task(end: float) -> None:
                acall = c.acall
                now = time.perf_counter_ns
                while time.monotonic() < end:
                    a = now()
                    await acall("f", x)
                    lat.append(now() - a)

            async def main() -> float:
                await asyncio.gather(*(task(time.monotonic() + 0.2) for _ in range(TASKS)))
                lat.clear()
                t0 = time.perf_counter()
                await asyncio.gather(*(task(time.monotonic() + duration) for _ in range(TASKS)))
                return time.perf_counter() - t0

            elapsed = asyncio.run(main())
    finally:
        os.sched_setaffinity(0, before)
        server.stop()
    return _summary("pyipc.rpc acall", payload, lat, elapsed, f"{TASKS} asyncio tasks")


def measure_idle(seconds: float = 3.0,
                 cpus: Optional[Tuple[Optional[int], Optional[int]]] = None) -> Dict[str, float]:
    """CPU used by an idle ``pyipc.rpc`` server and an idle connected client
    (with its pump thread started), as a percentage of one core."""
    import pyipc.rpc

    cpus = cpus or pick_cpus()
    server = Running("pyipc.rpc", cpus)
    try:
        with pyipc.rpc.connect(server.path, timeout=10) as c:
            c.call("f", 1)
            c.submit("f", 1).result()
            time.sleep(0.5)
            pid = server.proc.pid
            assert pid is not None
            s0, c0, t0 = _cpu(pid), time.process_time(), time.monotonic()
            time.sleep(seconds)
            s1, c1, t1 = _cpu(pid), time.process_time(), time.monotonic()
    finally:
        server.stop()
    return {"server_pct": 100 * (s1 - s0) / (t1 - t0), "client_pct": 100 * (c1 - c0) / (t1 - t0)}


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_rpc_bench(duration: float = 1.0, names: Optional[List[str]] = None,
                  payloads: Optional[List[str]] = None,
                  progress: Optional[Callable[[str], None]] = None) -> List[Dict[str, Any]]:
    """Every contender (or ``names``) with every payload; a list of rows
    (``name``, ``payload``, ``calls_per_s``, ``p50_us``, ``p99_us``,
    ``note``; a contender that cannot run has ``skipped`` instead)."""
    cpus = pick_cpus()
    rows: List[Dict[str, Any]] = []
    for payload in payloads or list(PAYLOADS):
        large = payload in LARGE_PAYLOADS
        for name in names or list(CONTENDERS):
            reason = unavailable(name)
            if reason is None and large and name not in LARGE_CONTENDERS:
                reason = f"not run with {payload}"
            if reason is not None:
                rows.append({"name": name, "payload": payload, "skipped": reason})
                continue
            if progress:
                progress(f"{name} {payload}")
            try:
                rows.append(measure(name, payload, duration, cpus))
            except Exception as exc:  # one broken baseline must not stop the table
                rows.append({"name": name, "payload": payload, "skipped": f"failed: {exc!r}"})
        if (names is None or "pyipc.rpc" in names) and not large:
            rows.append(measure_pipelined(payload, duration, cpus))
            rows.append(measure_acall(payload, duration, cpus))
    return rows


def format_rpc_table(rows: List[Dict[str, Any]]) -> str:
    """The rows as a text table, with ratios to mp.managers per payload."""
    base = {r["payload"]: r["calls_per_s"] for r in rows
            if r["name"] == "mp.managers" and "skipped" not in r}
    out = [f"{'contender':<18} {'payload':<7} {'calls/s':>10} {'p50 us':>8} {'p99 us':>8} "
           f"{'x managers':>10}  note"]
    for r in rows:
        if "skipped" in r:
            out.append(f"{r['name']:<18} {r['payload']:<7} {'skipped: ' + r['skipped']}")
            continue
        ratio = r["calls_per_s"] / base[r["payload"]] if r["payload"] in base else float("nan")
        out.append(f"{r['name']:<18} {r['payload']:<7} {r['calls_per_s']:>10,.0f} "
                   f"{r['p50_us']:>8.1f} {r['p99_us']:>8.1f} {ratio:>10.1f}  {r['note']}")
    return "\n".join(out)


# ---- tcp:// on loopback ------------------------------------------------------------
#
# ``pyipc.rpc`` over tcp:// (CurveZMQ, always on) beside grpcio over TCP
# (insecure, and TLS with a self-signed certificate made here) and raw
# pyzmq REQ/REP loops with and without CurveZMQ, all on 127.0.0.1.  Round
# trips as above, and pipelined calls: PIPELINE in flight with
# ``submit`` (pyipc) and ``stub.future`` (grpcio).  ``pin`` says where the
# two processes run: "split" (client on one CPU, server on another, as
# above), "same" (both on one CPU) or "none".


class TcpSetup:
    """Keys, a certificate and a free port for one tcp:// contender."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="pyipc-bench-tcp-")
        self._keys = False
        self._cert: Optional[str] = None
        self.port = _free_port()

    def keys(self) -> Tuple[str, str, str, str]:
        """(server secret, server public, client secret, client public) key files."""
        from pyipc.rpc import keys

        if not self._keys:
            keys.generate("server", self.dir)
            keys.generate("client", self.dir)
            self._keys = True
        j = os.path.join
        return (j(self.dir, "server.key_secret"), j(self.dir, "server.key"),
                j(self.dir, "client.key_secret"), j(self.dir, "client.key"))

    def cert(self) -> Tuple[str, str]:
        """A self-signed certificate for 127.0.0.1 and its key (PEM files)."""
        import subprocess

        key, cert = os.path.join(self.dir, "tls.key"), os.path.join(self.dir, "tls.crt")
        if self._cert is None:
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                 "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                 "-keyout", key, "-out", cert],
                check=True, capture_output=True)
            self._cert = cert
        return key, cert

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tserve_pyipc(setup: TcpSetup) -> None:
    import pyipc.rpc

    ssec, _, _, cpub = setup.keys()
    server = pyipc.rpc.Server(f"tcp://127.0.0.1:{setup.port}", workers=4, secret_key=ssec,
                              allowed_keys=[cpub])
    server.register(f)
    server.serve_forever()


def _tserve_grpc(setup: TcpSetup, tls: bool) -> None:
    from concurrent import futures

    grpc = importlib.import_module("grpc")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((_grpc_handler(),))
    if tls:
        key, cert = setup.cert()
        with open(key, "rb") as k, open(cert, "rb") as c:
            creds = grpc.ssl_server_credentials([(k.read(), c.read())])
        server.add_secure_port(f"127.0.0.1:{setup.port}", creds)
    else:
        server.add_insecure_port(f"127.0.0.1:{setup.port}")
    server.start()
    server.wait_for_termination()


def _tserve_zmq(setup: TcpSetup, curve: bool) -> None:
    zmq = importlib.import_module("zmq")

    from pyipc.rpc import keys

    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    if curve:
        ssec = setup.keys()[0]
        pub, sec = keys.secret_key(ssec)
        sock.curve_server = True
        sock.curve_publickey, sock.curve_secretkey = pub, sec
    sock.bind(f"tcp://127.0.0.1:{setup.port}")
    while True:
        sock.send(pickle.dumps(pickle.loads(sock.recv()), 5))


def _tclient_pyipc(setup: TcpSetup) -> Tuple[CallFn, Callable[[], None]]:
    import pyipc.rpc

    _, spub, csec, _ = setup.keys()
    c = pyipc.rpc.connect(f"tcp://127.0.0.1:{setup.port}", timeout=10, server_key=spub,
                          secret_key=csec)
    call = c.call
    return (lambda x: call("f", x)), c.close


def _grpc_channel(setup: TcpSetup, tls: bool) -> Any:
    grpc = importlib.import_module("grpc")

    if not tls:
        return grpc.insecure_channel(f"127.0.0.1:{setup.port}")
    with open(setup.cert()[1], "rb") as fh:
        creds = grpc.ssl_channel_credentials(root_certificates=fh.read())
    return grpc.secure_channel(f"127.0.0.1:{setup.port}", creds)


def _tclient_grpc(setup: TcpSetup, tls: bool) -> Tuple[CallFn, Callable[[], None]]:
    channel = _grpc_channel(setup, tls)
    stub = channel.unary_unary("/bench/f", request_serializer=pickle.dumps,
                               response_deserializer=pickle.loads)
    return stub, channel.close


def _tclient_zmq(setup: TcpSetup, curve: bool) -> Tuple[CallFn, Callable[[], None]]:
    zmq = importlib.import_module("zmq")

    from pyipc.rpc import keys

    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    if curve:
        _, spub, csec, _ = setup.keys()
        sock.curve_serverkey = keys.public_key(spub)
        sock.curve_publickey, sock.curve_secretkey = keys.secret_key(csec)
    sock.connect(f"tcp://127.0.0.1:{setup.port}")

    def call(x: Any) -> Any:
        sock.send(pickle.dumps(x, 5))
        return pickle.loads(sock.recv())

    def close() -> None:
        sock.close(0)
        ctx.term()

    return call, close


# name: (module that must import, server, client factory, note)
TCP_CONTENDERS: Dict[str, Tuple[Optional[str], Callable[[TcpSetup], None],
                                Callable[[TcpSetup], Tuple[CallFn, Callable[[], None]]], str]] = {
    "pyipc.rpc tcp": ("zmq", _tserve_pyipc, _tclient_pyipc, "call(); CurveZMQ"),
    "grpc tcp": ("grpc", lambda s: _tserve_grpc(s, False), lambda s: _tclient_grpc(s, False),
                 "unary, insecure, pickle"),
    "grpc tcp+tls": ("grpc", lambda s: _tserve_grpc(s, True), lambda s: _tclient_grpc(s, True),
                     "unary, TLS (self-signed P-256), pickle"),
    "zmq tcp": ("zmq", lambda s: _tserve_zmq(s, False), lambda s: _tclient_zmq(s, False),
                "raw REQ/REP, no security"),
    "zmq tcp+curve": ("zmq", lambda s: _tserve_zmq(s, True), lambda s: _tclient_zmq(s, True),
                      "raw REQ/REP, CurveZMQ"),
}


def _tcp_cpus(pin: str) -> Tuple[Optional[int], Optional[int]]:
    """(client CPU, server CPU) for a pinning: "split", "same" or "none"."""
    cpus = pick_cpus()
    if pin == "none" or cpus[0] is None:
        return None, None
    if pin == "same":
        return cpus[0], cpus[0]
    return cpus


def _tcp_child(name: str, setup: TcpSetup, cpu: Optional[int]) -> None:
    _pin(cpu)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    TCP_CONTENDERS[name][1](setup)


class RunningTcp:
    """A tcp:// contender's server in a pinned child process."""

    def __init__(self, name: str, cpus: Tuple[Optional[int], Optional[int]]) -> None:
        import socket

        self.setup = TcpSetup()
        if name.startswith(("pyipc", "zmq tcp+")):
            self.setup.keys()
        if name.endswith("tls"):
            self.setup.cert()
        self.proc = mp.get_context("fork").Process(target=_tcp_child,
                                                   args=(name, self.setup, cpus[1]), daemon=True)
        self.proc.start()
        end = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.setup.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > end or not self.proc.is_alive():
                    self.stop()
                    raise RuntimeError(f"{name}: the server did not start") from None
                time.sleep(0.02)
        time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.setup.close()


def measure_tcp(name: str, payload: str, duration: float, pin: str = "split") -> Dict[str, Any]:
    """Sequential round trips of ``f(x)`` over TCP loopback with ``name``."""
    cpus = _tcp_cpus(pin)
    x = PAYLOADS[payload]
    before = os.sched_getaffinity(0)
    server = RunningTcp(name, cpus)
    try:
        _pin(cpus[0])
        call, close = TCP_CONTENDERS[name][2](server.setup)
        try:
            assert call(x) == x
            lat, elapsed = _sequential(call, x, duration)
        finally:
            close()
    finally:
        os.sched_setaffinity(0, before)
        server.stop()
    return _summary(name, payload, lat, elapsed, TCP_CONTENDERS[name][3])


def measure_tcp_pipelined(name: str, payload: str, duration: float,
                          pin: str = "split") -> Dict[str, Any]:
    """Calls per second with PIPELINE calls in flight: ``submit`` for
    pyipc, ``stub.future`` for grpcio."""
    cpus = _tcp_cpus(pin)
    x = PAYLOADS[payload]
    before = os.sched_getaffinity(0)
    server = RunningTcp(name, cpus)
    try:
        _pin(cpus[0])
        if name.startswith("pyipc"):
            import pyipc.rpc

            _, spub, csec, _ = server.setup.keys()
            client = pyipc.rpc.connect(f"tcp://127.0.0.1:{server.setup.port}", timeout=10,
                                       server_key=spub, secret_key=csec)
            submit = client.submit
            start: Callable[[], Any] = lambda: submit("f", x)  # noqa: E731
            close: Callable[[], Any] = client.close
        else:
            channel = _grpc_channel(server.setup, name.endswith("tls"))
            stub = channel.unary_unary("/bench/f", request_serializer=pickle.dumps,
                                       response_deserializer=pickle.loads)
            start = lambda: stub.future(x)  # noqa: E731
            close = channel.close
        try:
            for fut in [start() for _ in range(100)]:  # warm up
                fut.result()
            calls = 0
            end = time.monotonic() + duration
            t0 = time.perf_counter()
            while time.monotonic() < end:
                futures = [start() for _ in range(PIPELINE)]
                for fut in futures:
                    fut.result()
                calls += PIPELINE
            elapsed = time.perf_counter() - t0
        finally:
            close()
    finally:
        os.sched_setaffinity(0, before)
        server.stop()
    return {"name": f"{name} pipelined", "payload": payload, "calls": calls,
            "calls_per_s": calls / elapsed, "p50_us": float("nan"), "p99_us": float("nan"),
            "note": f"{PIPELINE} in flight"}


def tcp_unavailable(name: str) -> Optional[str]:
    """Why tcp:// contender ``name`` cannot run here (None if it can)."""
    module = TCP_CONTENDERS[name][0]
    try:
        if module:
            __import__(module)
    except ImportError as exc:
        return f"{module} is not installed ({exc})"
    if name.endswith("tls") and shutil.which("openssl") is None:
        return "openssl is needed to make the certificate"
    return None


def run_tcp_bench(duration: float = 1.0, names: Optional[List[str]] = None,
                  payloads: Optional[List[str]] = None, pin: str = "split",
                  progress: Optional[Callable[[str], None]] = None) -> List[Dict[str, Any]]:
    """Every tcp:// contender (or ``names``) with every payload, then the
    pipelined runs of pyipc and grpcio; rows as ``run_rpc_bench``."""
    rows: List[Dict[str, Any]] = []
    for payload in payloads or list(PAYLOADS):
        for name in names or list(TCP_CONTENDERS):
            reason = tcp_unavailable(name)
            if reason is not None:
                rows.append({"name": name, "payload": payload, "skipped": reason})
                continue
            if progress:
                progress(f"{name} {payload}")
            try:
                rows.append(measure_tcp(name, payload, duration, pin))
            except Exception as exc:  # one broken baseline must not stop the table
                rows.append({"name": name, "payload": payload, "skipped": f"failed: {exc!r}"})
        for name in ("pyipc.rpc tcp", "grpc tcp", "grpc tcp+tls"):
            if (names and name not in names) or tcp_unavailable(name):
                continue
            if progress:
                progress(f"{name} pipelined {payload}")
            try:
                rows.append(measure_tcp_pipelined(name, payload, duration, pin))
            except Exception as exc:
                rows.append({"name": f"{name} pipelined", "payload": payload,
                             "skipped": f"failed: {exc!r}"})
    return rows


def format_tcp_table(rows: List[Dict[str, Any]]) -> str:
    """The tcp:// rows as a text table, with ratios to grpcio (insecure,
    the same mode: sequential to sequential, pipelined to pipelined)."""
    base = {(r["payload"], r["name"].endswith("pipelined")): r["calls_per_s"] for r in rows
            if r["name"] in ("grpc tcp", "grpc tcp pipelined") and "skipped" not in r}
    out = [f"{'contender':<26} {'payload':<7} {'calls/s':>10} {'p50 us':>8} {'p99 us':>8} "
           f"{'x grpc':>7}  note"]
    for r in rows:
        if "skipped" in r:
            out.append(f"{r['name']:<26} {r['payload']:<7} {'skipped: ' + r['skipped']}")
            continue
        key = (r["payload"], r["name"].endswith("pipelined"))
        ratio = r["calls_per_s"] / base[key] if key in base else float("nan")
        out.append(f"{r['name']:<26} {r['payload']:<7} {r['calls_per_s']:>10,.0f} "
                   f"{r['p50_us']:>8.1f} {r['p99_us']:>8.1f} {ratio:>7.1f}  {r['note']}")
    return "\n".join(out)



def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--duration", type=float, default=1.0, help="seconds per cell (default 1)")
    p.add_argument("--only", help="comma-separated contenders (default: all)")
    p.add_argument("--payloads", help="comma-separated payloads: int,1KiB (default: both), "
                   "or 64MiB (round trips of a 64 MiB bytes object)")
    p.add_argument("--tcp", action="store_true",
                   help="tcp:// on loopback instead: pyipc (CurveZMQ), grpcio, raw pyzmq")
    p.add_argument("--pin", choices=("split", "same", "none"), default="split",
                   help="--tcp: client and server on two CPUs (default), one, or unpinned")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else None
    payloads = args.payloads.split(",") if args.payloads else None
    allowed = list(PAYLOADS) + ([] if args.tcp else list(LARGE_PAYLOADS))
    if payloads is not None and not set(payloads) <= set(allowed):
        p.error(f"--payloads: choose from {', '.join(allowed)}")
    say: Callable[[str], None] = (lambda s: None) if args.quiet else (
        lambda s: print(s, file=sys.stderr))
    report: Dict[str, Any] = {"tcp": args.tcp}
    if args.tcp:
        cpus = _tcp_cpus(args.pin)
        say(f"pinning {args.pin}: client on CPU {cpus[0]}, server on CPU {cpus[1]}")
        rows = run_tcp_bench(args.duration, names, payloads, args.pin,
                             progress=lambda s: say(f"  {s}"))
        print(format_tcp_table(rows))
    else:
        cpus = pick_cpus()
        say(f"client on CPU {cpus[0]}, server on CPU {cpus[1]}" if cpus[0] is not None
            else "one CPU: unpinned")
        rows = run_rpc_bench(args.duration, names, payloads, progress=lambda s: say(f"  {s}"))
        print(format_rpc_table(rows))
        if names is None or "pyipc.rpc" in names:
            idle = measure_idle()
            report["idle"] = idle
            print(f"idle pyipc.rpc server: {idle['server_pct']:.2f} % of a core, "
                  f"idle client: {idle['client_pct']:.2f} %")
    report["cpus"] = list(cpus)
    report["rows"] = rows
    if args.json:
        import json

        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return 0
