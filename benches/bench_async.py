"""pytest-benchmark benches of the asyncio path; the measuring code is in
``pyipc.bench.aio`` (also ``pyipc bench --latency --async``).  Run with
``pytest benches/ -k bench_async --benchmark-only`` (the ``bench`` extra).
"""
from __future__ import annotations

import statistics
from typing import Any, List

import pytest

from pyipc.bench.aio import CPUS, ROUNDTRIP, THROUGHPUT, _quantiles, _unavailable, idle_cpu, roundtrip, throughput

# ---- pytest-benchmark ------------------------------------------------------------

ROUNDS = 5


def _skip_unavailable(name: str) -> None:
    why = _unavailable(name)
    if why:
        pytest.skip(f"{name}: {why}")


@pytest.mark.parametrize("name", ROUNDTRIP)
def test_roundtrip(benchmark: Any, name: str) -> None:
    """64 B round trips with an echo server in a pinned child; one round is 5,000."""
    _skip_unavailable(name)
    benchmark.group = "async-roundtrip-64 B"
    trips = 5000
    lat: List[int] = []

    def one_round() -> None:
        lat.extend(roundtrip(name, rounds=trips))

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    benchmark.extra_info.update(_quantiles(lat))
    benchmark.extra_info["pinned"] = CPUS[0] is not None


@pytest.mark.parametrize("name", THROUGHPUT)
def test_throughput(benchmark: Any, name: str) -> None:
    """64 B messages from (or to) a pinned peer; ``ring-*`` rows also measure
    ``ring-sync`` in the same rounds and report ``ratio_to_sync``."""
    _skip_unavailable(name)
    benchmark.group = "async-throughput-64 B"
    count = 200_000
    rates: List[float] = []
    sync: List[float] = []

    stalls: List[str] = []

    def one_round() -> None:
        for _ in range(3):
            try:
                rates.append(throughput(name, count))
                break
            except RuntimeError as e:  # a baseline that stalled: say so, run again
                stalls.append(str(e))
        if name.startswith("ring") and name != "ring-sync":
            sync.append(throughput("ring-sync", count))

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    if not rates:
        pytest.fail(f"{name} never completed a round: {stalls}")
    benchmark.extra_info["stalls"] = stalls
    benchmark.extra_info["msg_per_s"] = statistics.median(rates)
    if sync:
        benchmark.extra_info["ratio_to_sync"] = statistics.median(rates) / statistics.median(sync)
    benchmark.extra_info["pinned"] = CPUS[0] is not None


def test_idle_cpu(benchmark: Any) -> None:
    """Share of a core used by 1,000 coroutines idle on 1,000 rings for 5 s."""
    benchmark.group = "async-idle"
    shares: List[float] = []
    benchmark.pedantic(lambda: shares.append(idle_cpu(1000, 5.0)), rounds=1, iterations=1)
    benchmark.extra_info["cpu_share"] = shares[0]


