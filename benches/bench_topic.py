"""pytest-benchmark benches of topics (broadcast), side by side with the baselines.

Run with ``pytest benches/bench_topic.py --benchmark-only`` (needs the
``bench`` extra), or ``python benches/bench_topic.py`` for the table that
``pyipc bench --topic`` prints.  One publisher pinned to one CPU, 1 and 4
subscriber processes pinned to the other; 64 B and 1 MiB messages; pyipc
topics beside ZeroMQ XPUB/SUB over ``ipc://`` (lossless: ``XPUB_NODROP``
and high-water marks), iceoryx2 publish-subscribe and one
``multiprocessing.Queue`` per subscriber.  The work lives in
``pyipc/bench/topic.py``; each bench here is one cell, a round is one run
of it, and ``extra_info["deliveries_per_s"]`` holds the figure (messages
delivered, summed over subscribers, per second).  The ceilings (the
subscribers' loop fed by a receive that costs nothing; NumPy's sum alone)
are benches of their own in the same groups.
"""
from __future__ import annotations

from typing import Any

import pytest

from pyipc.bench import topic as tb

MIB = tb.MIB
ROUNDS = 3
SECONDS = 1.0


def _label(size: int) -> str:
    return "64 B" if size == 64 else "1 MiB"


CELLS = [(name, size, n) for name, c in tb.CONTENDERS.items() for size in c.sizes for n in (1, 4)]


@pytest.mark.parametrize("name,size,nsubs", CELLS, ids=[f"{n}-{_label(s)}-{k}sub" for n, s, k in CELLS])
def test_broadcast(benchmark: Any, name: str, size: int, nsubs: int) -> None:
    """One publisher, nsubs subscriber processes: deliveries per second."""
    why = tb.CONTENDERS[name].unavailable()
    if why:
        pytest.skip(why)
    benchmark.group = f"broadcast-{_label(size)}-{nsubs}sub"
    rates = []

    def one() -> None:
        res = tb.run_cell(name, size, nsubs, SECONDS)
        assert res["ok"], res["error"]
        rates.append(res["rate"])

    benchmark.pedantic(one, rounds=ROUNDS, iterations=1)
    benchmark.extra_info["deliveries_per_s"] = sorted(rates)[len(rates) // 2]


CEILINGS = [("one", 64, n) for n in (1, 4)] + [("batch", 64, n) for n in (1, 4)] + [("sum", MIB, n) for n in (1, 4)]


@pytest.mark.parametrize("kind,size,nsubs", CEILINGS, ids=[f"ceiling-{k}-{_label(s)}-{n}sub" for k, s, n in CEILINGS])
def test_ceiling(benchmark: Any, kind: str, size: int, nsubs: int) -> None:
    """The subscribers' own loop fed by a receive that costs nothing (or NumPy's sum alone)."""
    if kind == "sum":
        pytest.importorskip("numpy")
    benchmark.group = f"broadcast-{_label(size)}-{nsubs}sub"
    rates = []
    benchmark.pedantic(lambda: rates.append(tb.ceiling(kind, size, nsubs, SECONDS)), rounds=ROUNDS, iterations=1)
    benchmark.extra_info["deliveries_per_s"] = sorted(rates)[len(rates) // 2]


@pytest.mark.parametrize("nsubs", [1, 4])
def test_overwrite_publisher_rate(benchmark: Any, nsubs: int) -> None:
    """An "overwrite" topic: the publisher's rate with nsubs subscribers reading (a cursor each, not a copy)."""
    benchmark.group = "overwrite-publisher-64 B"
    rates = []
    benchmark.pedantic(lambda: rates.append(tb.overwrite_rate(nsubs, SECONDS)), rounds=ROUNDS, iterations=1)
    benchmark.extra_info["published_per_s"] = sorted(rates)[len(rates) // 2]


if __name__ == "__main__":
    print(tb.format_topic_table(tb.run_topic_bench(progress=lambda s: print(s, flush=True))))
