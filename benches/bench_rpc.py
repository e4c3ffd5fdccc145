"""RPC round trips under pytest-benchmark: one round is one call of a no-op
``f(x) -> x``, ``pyipc.rpc`` beside its peers (the contenders and their
servers are ``pyipc.bench.rpc``; ``pyipc bench --rpc`` prints the full table
with submit, acall and idle cost, and ``python benches/bench_rpc.py`` is the
same).  Nothing here asserts a timing.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Iterator, Tuple

import pytest

from pyipc.bench.rpc import (CONTENDERS, PAYLOADS, TCP_CONTENDERS, CallFn, Running, RunningTcp,
                             _pin, _tcp_cpus, main, tcp_unavailable, unavailable)
from pyipc.bench.runner import pick_cpus


@pytest.fixture(params=list(CONTENDERS))
def contender(request: Any) -> Iterator[Tuple[str, CallFn]]:
    name = request.param
    reason = unavailable(name)
    if reason is not None:
        pytest.skip(reason)
    if CONTENDERS[name][2] is None:
        pytest.skip(f"{name}: asyncio-only, measured by the standalone mode")
    cpus = pick_cpus()
    before = os.sched_getaffinity(0)
    server = Running(name, cpus)
    try:
        _pin(cpus[0])
        call, close = CONTENDERS[name][2](server.path)
        try:
            yield name, call
        finally:
            close()
    finally:
        os.sched_setaffinity(0, before)
        server.stop()

@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_roundtrip(benchmark: Any, contender: Tuple[str, CallFn], payload: str) -> None:
    """One sequential call of f(x) -> x."""
    name, call = contender
    benchmark.group = f"rpc-roundtrip-{payload}"
    x = PAYLOADS[payload]
    assert call(x) == x
    benchmark(call, x)

@pytest.fixture(params=list(TCP_CONTENDERS))
def tcp_contender(request: Any) -> Iterator[Tuple[str, CallFn]]:
    name = request.param
    reason = tcp_unavailable(name)
    if reason is not None:
        pytest.skip(reason)
    cpus = _tcp_cpus("split")
    before = os.sched_getaffinity(0)
    server = RunningTcp(name, cpus)
    try:
        _pin(cpus[0])
        call, close = TCP_CONTENDERS[name][2](server.setup)
        try:
            yield name, call
        finally:
            close()
    finally:
        os.sched_setaffinity(0, before)
        server.stop()

@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_tcp_roundtrip(benchmark: Any, tcp_contender: Tuple[str, CallFn],
                       payload: str) -> None:
    """One sequential call of f(x) -> x over TCP loopback."""
    name, call = tcp_contender
    benchmark.group = f"rpc-tcp-roundtrip-{payload}"
    x = PAYLOADS[payload]
    assert call(x) == x
    benchmark(call, x)


if __name__ == "__main__":
    sys.exit(main())
