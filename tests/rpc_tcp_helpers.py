"""Helpers for the tcp:// RPC tests: key pairs, servers in child processes,
and running code inside a network namespace (importable by children)."""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import pickle
import signal
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Tuple

import pyipc.rpc as rpc

import rpc_helpers

CLONE_NEWNET = 0x40000000


def make_keys(directory: str) -> Dict[str, str]:
    """Key pairs ``server``, ``client`` and ``other`` (a client nobody
    allowed) in ``directory``; returns their file paths by role."""
    from pyipc.rpc import keys

    out = {}
    for name in ("server", "client", "other"):
        public, secret = keys.generate(name, directory)
        out[name] = public
        out[name + "_secret"] = secret
    return out


def enter_netns(name: str) -> None:
    """Move this process (a child with one thread) into network namespace
    ``name`` made by ``ip netns add``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), name)
    finally:
        os.close(fd)


def serve(address: str, keys: Dict[str, str], out: Any, heartbeat: float = 1.0,
          workers: int = 4, window: int = 4, netns: Optional[str] = None) -> None:
    """Run a tcp:// test server (rpc_helpers.Service) until killed or shut
    down; its resolved address is sent on ``out``."""
    if netns:
        enter_netns(netns)
    server = rpc.Server(address, secret_key=keys["server_secret"],
                        allowed_keys=[keys["client"]], heartbeat=heartbeat,
                        workers=workers, stream_window=window)
    server.register_instance(rpc_helpers.Service())
    server.register(server.close, "shutdown")
    out.send(server.address)
    out.close()
    server.serve_forever()


def start_server(address: str, keys: Dict[str, str], **opts: Any) -> Tuple[str, Any]:
    """``serve`` in a forked child; returns (resolved address, process)."""
    ctx = mp.get_context("fork")
    r, w = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=serve, args=(address, keys, w), kwargs=opts, daemon=True)
    proc.start()
    w.close()
    if not r.poll(20):
        proc.kill()
        proc.join(5)
        raise RuntimeError("the tcp test server did not start")
    try:
        resolved = r.recv()
    except EOFError:
        proc.join(5)
        raise RuntimeError(f"the tcp test server exited with {proc.exitcode}") from None
    return str(resolved), proc


def stop(proc: Any) -> None:
    """Kill a server process (also a stopped one) and reap it."""
    if proc.is_alive():
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.join(10)


def _run_child(netns: Optional[str], func: Callable[..., Any], args: Tuple[Any, ...],
               out: Any) -> None:
    try:
        if netns:
            enter_netns(netns)
        result: Tuple[str, Any] = ("ok", func(*args))
    except BaseException as exc:
        result = ("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
    try:
        out.send(pickle.dumps(result))
    except Exception as exc:
        out.send(pickle.dumps(("error", f"result did not pickle: {exc!r}")))
    out.close()


def run_in(netns: Optional[str], func: Callable[..., Any], *args: Any,
           timeout: float = 60.0) -> Any:
    """Run ``func(*args)`` in a forked child inside ``netns`` and return its
    result; an exception in the child fails the caller with its traceback."""
    ctx = mp.get_context("fork")
    r, w = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_run_child, args=(netns, func, args, w), daemon=True)
    proc.start()
    w.close()
    try:
        if not r.poll(timeout):
            raise TimeoutError(f"{getattr(func, '__name__', func)} did not finish in {timeout} s")
        status, value = pickle.loads(r.recv())
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(10)
    if status != "ok":
        raise AssertionError(f"in the child: {value}")
    return value


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def connect(address: Any, keys: Dict[str, str], client: str = "client",
            server: str = "server", **opts: Any) -> rpc.Client:
    """A tcp:// client with the named key pairs."""
    opts.setdefault("heartbeat", 1.0)
    return rpc.connect(address, server_key=keys[server], secret_key=keys[client + "_secret"],
                       **opts)
