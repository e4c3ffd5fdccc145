"""pyipc.rpc over tcp:// between two network namespaces made by the test.

Namespaces ``A`` (server, 10.99.0.1/24) and ``B`` (client, 10.99.0.2/24)
joined by a veth pair; no other address is ever used.  Needs root and
``ip`` (iproute2): skipped with the reason otherwise.  The namespaces are
deleted by the fixture even when a test fails.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from typing import Any, Dict, Iterator, List, Tuple

import pytest

pytest.importorskip("zmq")

import pyipc.rpc as rpc  # noqa: E402

import rpc_tcp_helpers as H  # noqa: E402

SERVER_IP = "10.99.0.1"
CLIENT_IP = "10.99.0.2"
HEARTBEAT = 1.0
SECRET = b"pyipc-plaintext-canary-7f3a9c"
ETH_P_ALL = 0x0003


class Net:
    """Two namespaces and the veth pair between them."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.a, self.b = f"pyipc-{tag}-a", f"pyipc-{tag}-b"
        self.va, self.vb = f"pyv{tag}a", f"pyv{tag}b"  # at most 15 characters

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    def create(self) -> None:
        self.ip("netns", "add", self.a)
        self.ip("netns", "add", self.b)
        self.ip("link", "add", self.va, "type", "veth", "peer", "name", self.vb)
        self.ip("link", "set", self.va, "netns", self.a)
        self.ip("link", "set", self.vb, "netns", self.b)
        for ns, dev, addr in ((self.a, self.va, SERVER_IP), (self.b, self.vb, CLIENT_IP)):
            self.ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            self.ip("-n", ns, "link", "set", dev, "up")
            self.ip("-n", ns, "link", "set", "lo", "up")

    def link(self, up: bool) -> None:
        """Cut (or restore) the wire: the server's end of the veth goes down."""
        self.ip("-n", self.a, "link", "set", self.va, "up" if up else "down")

    def delete(self) -> None:
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    """Namespaces A and B joined by a veth pair; deleted after the module's tests."""
    if shutil.which("ip") is None:
        pytest.skip("needs `ip` (apt-get install iproute2)")
    if os.geteuid() != 0:
        pytest.skip("needs root to make network namespaces")
    n = Net()
    try:
        try:
            n.create()
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"cannot make network namespaces here: {exc.stderr.decode().strip()}")
        yield n
    finally:
        n.delete()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: Any) -> Dict[str, str]:
    """Key pairs for a server, an allowed client and a client nobody allowed."""
    return H.make_keys(str(tmp_path_factory.mktemp("keys")))


@pytest.fixture
def server(net: Net, keys: Dict[str, str]) -> Iterator[Tuple[str, Any]]:
    """A tcp:// server in namespace A, killed after the test."""
    address, proc = H.start_server(f"tcp://{SERVER_IP}:0", keys, heartbeat=HEARTBEAT,
                                   workers=2, netns=net.a)
    try:
        yield address, proc
    finally:
        H.stop(proc)


# ---- what the client does, in namespace B -------------------------------------------


def _calls(address: str, keys: Dict[str, str]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    with H.connect(address, keys) as c:
        out["add"] = c.call("add", 1, 2, c=3)
        out["stream"] = list(c.call("count", 20))
        try:
            c.call("boom", "key")
        except KeyError as exc:
            out["error"] = (type(exc).__name__, isinstance(exc.__cause__, rpc.RemoteTraceback))
        busy = c.submit("slow", 1.0)
        c.submit("slow", 1.0)  # both workers busy
        time.sleep(0.1)
        try:
            c.call("slow", 0, "expired", timeout=0.2)
        except TimeoutError:
            out["timeout"] = True
        busy.result(10)
        c.call("slow", 0.1)
        out["expired_ran"] = "expired" in c.call("get_log")
        out["array"] = c.call("echo", bytes(range(256)) * 4096) == bytes(range(256)) * 4096
    return out


def _refused(address: str, keys: Dict[str, str], client: str, server: str) -> str:
    try:
        H.connect(address, keys, client=client, server=server).close()
    except PermissionError as exc:
        return f"PermissionError: {exc}"
    return "connected"


class _Capture:
    """Every frame seen on interface ``dev`` (of this process's namespace)
    while it runs, through a raw AF_PACKET socket."""

    def __init__(self, dev: str) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind((dev, 0))
        self.sock.settimeout(0.1)
        self.frames: List[bytes] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.frames.append(self.sock.recv(65536))
            except socket.timeout:
                continue

    def finish(self) -> bytes:
        time.sleep(0.2)
        self.stop.set()
        self.thread.join(5)
        self.sock.close()
        return b"".join(self.frames)


def _capture_rpc(address: str, keys: Dict[str, str], dev: str) -> Tuple[int, bool]:
    cap = _Capture(dev)
    with H.connect(address, keys) as c:
        for _ in range(5):
            assert c.call("echo", SECRET) == SECRET
        c.call("record", SECRET)
    wire = cap.finish()
    return len(wire), SECRET in wire


def _capture_plain(address: str, dev: str) -> Tuple[int, bool]:
    import zmq

    cap = _Capture(dev)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.connect(address)
    sock.send(SECRET)
    assert sock.recv() == SECRET
    sock.close(0)
    ctx.term()
    wire = cap.finish()
    return len(wire), SECRET in wire


def _plain_echo(address: str, ready: Any) -> None:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    sock.bind(address)
    ready.send(True)
    sock.send(sock.recv())


def _cut_and_restore(address: str, keys: Dict[str, str], ctl: Any) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    with H.connect(address, keys) as c:
        assert c.call("echo", 1) == 1
        fut = c.submit("slow", 30)
        ctl.send("cut me")
        assert ctl.recv() == "cut"
        t0 = time.monotonic()
        try:
            fut.result(20)
            out["gone"] = False
        except rpc.ServerGone:
            out["gone"] = True
        out["waited"] = time.monotonic() - t0
        ctl.send("restore me")
        assert ctl.recv() == "restored"
        end = time.monotonic() + 20
        while time.monotonic() < end:
            try:
                out["after"] = c.call("add", 40, 2, timeout=2)
                break
            except (rpc.ServerGone, TimeoutError):
                time.sleep(0.1)
    return out


# ---- tests ----------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_calls_streams_errors_deadlines_across_namespaces(
        net: Net, keys: Dict[str, str], server: Tuple[str, Any]) -> None:
    """Calls, streams, exceptions and deadlines work between two network namespaces."""
    address, _ = server
    assert address.startswith(f"tcp://{SERVER_IP}:")
    out = H.run_in(net.b, _calls, address, keys)
    assert out == {"add": 6, "stream": list(range(20)), "error": ("KeyError", True),
                   "timeout": True, "expired_ran": False, "array": True}


@pytest.mark.timeout(90)
def test_refused_across_namespaces(net: Net, keys: Dict[str, str],
                                   server: Tuple[str, Any]) -> None:
    """An unknown client key, and a wrong server key, are refused with PermissionError."""
    address, _ = server
    refused = H.run_in(net.b, _refused, address, keys, "other", "server")
    assert refused.startswith("PermissionError") and "refused this client's key" in refused
    wrong = H.run_in(net.b, _refused, address, keys, "client", "other")
    assert wrong.startswith("PermissionError") and "handshake failed" in wrong


@pytest.mark.timeout(90)
def test_traffic_is_not_readable_on_the_wire(net: Net, keys: Dict[str, str],
                                             server: Tuple[str, Any]) -> None:
    """A known argument never appears on the veth in the clear; without Curve it does (control)."""
    address, _ = server
    size, seen = H.run_in(net.b, _capture_rpc, address, keys, net.vb)
    assert size > 1000  # the capture saw the calls' packets
    assert not seen
    # The control: the same capture sees a raw, unencrypted ZeroMQ message.
    import multiprocessing as mp

    plain = f"tcp://{SERVER_IP}:{_free_port_in(net)}"
    ctx = mp.get_context("fork")
    r, w = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=H._run_child, args=(net.a, _plain_echo, (plain, w), w),
                       daemon=True)
    proc.start()
    try:
        assert r.poll(20)
        size, seen = H.run_in(net.b, _capture_plain, plain, net.vb)
        assert size > 0 and seen
    finally:
        H.stop(proc)


def _free_port_in(net: Net) -> int:
    return int(H.run_in(net.a, _free_port))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((SERVER_IP, 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(120)
def test_cut_network_gives_server_gone_then_recovers(net: Net, keys: Dict[str, str],
                                                     server: Tuple[str, Any]) -> None:
    """A cut wire fails waiting calls with ServerGone within the heartbeat; once restored, calls succeed."""
    import multiprocessing as mp

    address, _ = server
    ctx = mp.get_context("fork")
    ctl, child_ctl = ctx.Pipe()
    r, w = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=H._run_child,
                       args=(net.b, _cut_and_restore, (address, keys, child_ctl), w), daemon=True)
    proc.start()
    restored = False
    try:
        assert ctl.poll(30) and ctl.recv() == "cut me"
        net.link(False)
        ctl.send("cut")
        assert ctl.poll(30) and ctl.recv() == "restore me"
        net.link(True)
        restored = True
        ctl.send("restored")
        assert r.poll(60)
        import pickle

        status, out = pickle.loads(r.recv())
        assert status == "ok", out
    finally:
        if not restored:
            net.link(True)
        H.stop(proc)
    assert out["gone"] and out["waited"] < HEARTBEAT + 1.0, out
    assert out["after"] == 42
