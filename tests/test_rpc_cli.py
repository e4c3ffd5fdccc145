"""``pyipc rpc`` and ``python -m pyipc.rpc`` against a real server."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from typing import Iterator, List

import pytest

import pyipc.rpc as rpc
from pyipc.rpc.local import runtime_dir


@pytest.fixture
def server() -> Iterator[rpc.Server]:
    """A named server in this process, closed after the test."""
    s = rpc.Server(f"cli-{os.getpid()}-{uuid.uuid4().hex[:8]}")

    @s.register
    def add(a: int, b: int = 0, *, c: int = 0) -> int:
        return a + b + c

    @s.register
    def count(n: int) -> Iterator[int]:
        yield from range(n)

    @s.register
    def fail() -> None:
        raise KeyError("nope")

    s.register(lambda x: x, "echo")
    s.start()
    try:
        yield s
    finally:
        s.close()


def _run(*argv: str, module: str = "pyipc") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *argv], capture_output=True,
                          text=True, timeout=60, check=False)


def _name(s: rpc.Server) -> str:
    return os.path.basename(s.address)


@pytest.mark.timeout(90)
def test_call_prints_the_result(server: rpc.Server) -> None:
    """`pyipc rpc call` reads arguments as literals and prints the result's repr."""
    out = _run("rpc", "call", _name(server), "add", "1", "2", "-k", "c=3")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "6\n"
    out = _run("call", server.address, "echo", "[1, 'a']", module="pyipc.rpc")
    assert out.stdout == "[1, 'a']\n"
    out = _run("rpc", "call", _name(server), "echo", "not a literal")
    assert out.stdout == "'not a literal'\n"


@pytest.mark.timeout(90)
def test_call_streams_and_errors(server: rpc.Server) -> None:
    """A stream prints one item per line; a remote error exits 1 with one line."""
    out = _run("rpc", "call", _name(server), "count", "3")
    assert out.stdout.splitlines() == ["0", "1", "2"]
    out = _run("rpc", "call", _name(server), "fail")
    assert out.returncode == 1
    assert out.stderr.startswith("pyipc: KeyError") and "Traceback" not in out.stderr
    out = _run("rpc", "call", "no-such-server-" + uuid.uuid4().hex, "x")
    assert out.returncode == 1 and "FileNotFoundError" in out.stderr
    out = _run("rpc", "call", _name(server), "add", "-k", "bad")
    assert out.returncode == 2


@pytest.mark.timeout(90)
def test_ls_lists_named_servers(server: rpc.Server) -> None:
    """`pyipc rpc ls` lists the named server as listening."""
    out = _run("rpc", "ls", "--json")
    assert out.returncode == 0, out.stderr
    rows: List[dict] = json.loads(out.stdout)
    mine = [r for r in rows if r["name"] == _name(server)]
    assert mine == [{"name": _name(server), "listening": True,
                     "path": os.path.join(runtime_dir(), _name(server))}]
    assert _name(server) in _run("rpc", "ls").stdout


@pytest.mark.timeout(60)
def test_key_options_need_a_tcp_address(server: rpc.Server) -> None:
    """--server-key/--secret-key with a local address: exit 2, one line, no call made."""
    out = _run("rpc", "call", _name(server), "add", "1", "--server-key", "k", "--secret-key", "s")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "pyipc: --server-key and --secret-key are for tcp:// addresses"]
    assert out.stdout == ""
