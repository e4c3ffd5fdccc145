"""A pipeline of stages, each its own process, joined by pyipc queues.

    source -> parse -> enrich -> main process (sink)

Each stage reads from the queue on its left and writes to the one on its
right; ``maxsize`` gives back-pressure, so a fast stage waits for a slow one
instead of filling memory.  A ``None`` travels down the line to stop it.

    python examples/pipeline.py
"""
from __future__ import annotations

import multiprocessing as mp
from typing import Any, Callable, Optional

import pyipc

LINES = 5_000
BATCH = 64


def source(out: pyipc.Queue) -> None:
    # put_many: many objects per lock round trip, in order.
    lines = [f"{i},sensor-{i % 7},{(i * 37) % 1000 / 10}" for i in range(LINES)]
    for start in range(0, len(lines), BATCH):
        out.put_many(lines[start : start + BATCH])
    out.put(None)


def stage(inq: pyipc.Queue, out: pyipc.Queue, fn: Callable[[Any], Any]) -> None:
    while True:
        # get_many: wait for one object, take whatever else is queued.
        for item in inq.get_many(BATCH):
            if item is None:
                out.put(None)
                return
            out.put(fn(item))


def parse(line: str) -> tuple[int, str, float]:
    seq, sensor, value = line.split(",")
    return int(seq), sensor, float(value)


def enrich(rec: tuple[int, str, float]) -> dict[str, Any]:
    seq, sensor, value = rec
    return {"seq": seq, "sensor": sensor, "value": value, "alarm": value > 90.0}


def main() -> None:
    raw = pyipc.Queue(maxsize=256)
    parsed = pyipc.Queue(maxsize=256)
    enriched = pyipc.Queue(maxsize=256)
    procs = [
        mp.Process(target=source, args=(raw,)),
        mp.Process(target=stage, args=(raw, parsed, parse)),
        mp.Process(target=stage, args=(parsed, enriched, enrich)),
    ]
    for p in procs:
        p.start()

    count = alarms = 0
    last: Optional[int] = None
    in_order = True
    while True:
        rec = enriched.get()
        if rec is None:
            break
        count += 1
        alarms += rec["alarm"]
        # One producer per queue, so order is kept end to end.
        in_order = in_order and (last is None or rec["seq"] == last + 1)
        last = rec["seq"]
    for p in procs:
        p.join()
    for q in (raw, parsed, enriched):
        q.close()
    print(f"pipeline: {count} records through 3 stages, {alarms} alarms, "
          f"in order: {in_order}")


if __name__ == "__main__":
    main()
