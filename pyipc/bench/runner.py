"""How ``pyipc bench`` measures: processes, runs, medians.

A *transport* moves messages one way between two processes.  For each
transport and message size, a consumer and a producer run in two forked
processes pinned to two different CPUs; the producer sends for a fixed time,
then an empty message (a tuple for object transports) that tells the consumer
to stop.  The consumer counts what it received and checks every message's
size; throughput is messages over the time between the first message and the
stop message, at the consumer, so process start-up and attach costs are left
out.  Each cell is run a few times and the median is reported, because the
machines this runs on are shared and noisy.

The same transports serve the round-trip mode (``--latency``): two links,
one each way, a client that sends and waits for the echo, a server that
echoes.

Every segment, queue, socket and temporary directory a run makes is removed
by the parent process in a ``finally`` block, even when a child fails or the
user presses Ctrl-C.
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import platform
import signal
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple, cast

from .._util import format_size
from ..errors import MessageTooLarge
from . import DEFAULT_DURATION, DEFAULT_REPEAT, DEFAULT_SIZES, LATENCY_SIZE
from .transports import BASELINE, BASELINE_OBJ, BATCH, OBJ, TRANSPORTS, Recv, Send, Transport

__all__ = [
    "DEFAULT_SIZES",
    "DEFAULT_REPEAT",
    "DEFAULT_DURATION",
    "LATENCY_SIZE",
    "Report",
    "parse_sizes",
    "format_size",
    "pick_cpus",
    "run_throughput",
    "run_latency",
    "run_bench",
]

# How long the parent waits for a run beyond its duration before it decides
# that a child is stuck and kills it.
GRACE = 30.0


_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "KIB": 1024, "M": 1 << 20, "MB": 1 << 20,
          "MIB": 1 << 20}


def parse_sizes(text: str) -> List[int]:
    """Parse ``"64,4K,1M"`` into byte counts (K and M are binary: KiB, MiB).

    Raises ValueError on anything else, or on a size below 1 byte.
    """
    sizes = []
    for item in text.split(","):
        item = item.strip().upper()
        digits = item.rstrip("KMIB")
        unit = item[len(digits):]
        if not digits.isdigit() or unit not in _UNITS:
            raise ValueError(f"not a size: {item!r} (examples: 64, 4K, 1M)")
        size = int(digits) * _UNITS[unit]
        if size < 1:
            raise ValueError("sizes must be at least 1 byte")
        sizes.append(size)
    return sizes


def pick_cpus() -> Tuple[Optional[int], Optional[int]]:
    """Return (consumer CPU, producer CPU), or (None, None) with only one CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return cpus[0], cpus[1]


def _pin(cpu: Optional[int]) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


# --------------------------------------------------------------------------
# The child processes
# --------------------------------------------------------------------------


def _sentinel(kind: str) -> Any:
    if kind == "obj":
        return ()
    if kind == "batch":
        return [b""]
    return b""


def _consume(recv: Recv, kind: str, size: int) -> Dict[str, Any]:
    """Receive until the stop message; count, check sizes, time first to last."""
    if kind == "obj":
        size = len(OBJ)
    perf = time.perf_counter
    count = 0
    bad = 0
    fill = b"\x5a" * size
    if kind == "batch":
        first = recv()
        t0 = perf()
        # Sizes are checked on every message, contents on the first only:
        # comparing every byte would cost more than moving them.
        if first[0] and first[0] != fill:
            bad += 1
        batch = first
        while True:
            stop = False
            for m in batch:
                n = len(m)
                if n == 0:
                    stop = True
                    break
                if n != size:
                    bad += 1
                count += 1
            if stop:
                break
            batch = recv()
    else:
        into = kind == "into"
        first = recv()
        t0 = perf()
        n = first if into else len(first)
        if not into and n and first != (OBJ if kind == "obj" else fill):
            bad += 1
        while n:
            if n != size:
                bad += 1
            count += 1
            m = recv()
            n = m if into else len(m)
    t1 = perf()
    return {"received": count, "bad_sizes": bad, "elapsed": t1 - t0}


def _produce(send: Send, kind: str, size: int, duration: float,
             count: Optional[int] = None) -> int:
    """Send for ``duration`` seconds (or ``count`` messages, rounded up to
    whole batches), then the stop message; return how many were sent."""
    if kind == "obj":
        msg: Any = OBJ
    else:
        msg = b"\x5a" * size
    if kind == "batch":
        msg = [msg] * BATCH
        per_call = BATCH
    else:
        per_call = 1
    if count is not None:
        calls = -(-count // per_call)
        for _ in range(calls):
            send(msg)
        send(_sentinel(kind))
        return calls * per_call
    # Look at the clock every few calls only, more often for big messages.
    chunk = max(1, min(16, (1 << 20) // max(size, 1) // 4))
    loop = range(chunk)
    perf = time.perf_counter
    end = perf() + duration
    calls = 0
    while True:
        for _ in loop:
            send(msg)
        calls += chunk
        if perf() >= end:
            break
    send(_sentinel(kind))
    return calls * per_call


def throughput_child(role: str, transport: Transport, state: Any, size: int,
                     duration: float, cpu: Optional[int], ready: Any, done: Any, out: Any,
                     count: Optional[int] = None) -> None:
    """Entry point of both children of a throughput run; sends its result
    dict on ``out``.  The benches run it too (see ``_produce`` for ``count``)."""
    # Ctrl-C reaches the whole process group; only the parent handles it
    # (and terminates the children), so that cleanup happens in one place.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    result: Dict[str, Any]
    try:
        _pin(cpu)
        kind = transport.kind_for(size)
        if role == "consumer":
            recv, close = transport.receiver(state, size)
            ready.set()
            try:
                result = _consume(recv, kind, size)
            finally:
                done.set()
                close()
        else:
            # Connect only once the consumer is there: a publish/subscribe
            # transport (iceoryx2) delivers only to subscribers it saw at
            # connection time.
            if not ready.wait(GRACE):
                raise TimeoutError("the consumer never became ready")
            send, close = transport.sender(state, size)
            try:
                result = {"sent": _produce(send, kind, size, duration, count)}
                # Some transports (iceoryx2) drop what a closed publisher
                # left in flight: close only once everything has arrived.
                done.wait(GRACE)
            finally:
                close()
    except BaseException as exc:  # reported to the parent, never lost
        result = {"error": f"{role}: {type(exc).__name__}: {exc}",
                  "too_large": isinstance(exc, MessageTooLarge)}
    out.send(result)
    out.close()


def pingpong_child(role: str, transport: Transport, there: Any, back: Any,
                    duration: float, cpu: Optional[int], ready: Any, ready_back: Any,
                    done: Any, out: Any) -> None:
    """Entry point of both children of a latency run (client or echo server)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    result: Dict[str, Any]
    size = LATENCY_SIZE
    kind = transport.kind_for(size)
    closers: List[Callable[[], None]] = []
    try:
        _pin(cpu)
        # Each link's receiver exists before its sender connects (see
        # throughput_child): the server listens, then the client listens and
        # connects, then the server connects its reply link.
        if role == "server":
            recv, c1 = transport.receiver(there, size)
            closers.append(c1)
            ready.set()
            if not ready_back.wait(GRACE):
                raise TimeoutError("the client never became ready")
            send, c2 = transport.sender(back, size)
            closers.append(c2)
            rounds = 0
            while True:
                m = recv()
                if len(m) == 0:
                    break
                send(m)
                rounds += 1
            done.set()
            result = {"echoed": rounds}
        else:
            recv, c1 = transport.receiver(back, size)
            closers.append(c1)
            ready_back.set()
            if not ready.wait(GRACE):
                raise TimeoutError("the echo server never became ready")
            send, c2 = transport.sender(there, size)
            closers.append(c2)
            result = _ping(send, recv, kind, duration)
            send(_sentinel(kind))
            # Close only once the server has the stop message (as in
            # throughput_child).
            done.wait(GRACE)
    except BaseException as exc:
        result = {"error": f"{role}: {type(exc).__name__}: {exc}",
                  "too_large": isinstance(exc, MessageTooLarge)}
    finally:
        for close in reversed(closers):
            try:
                close()
            except Exception:
                pass
    out.send(result)
    out.close()


def _ping(send: Send, recv: Recv, kind: str, duration: float) -> Dict[str, Any]:
    msg = b"\x5a" * LATENCY_SIZE
    clock = time.perf_counter_ns
    # Warm up caches, branch predictors and lazy set-up before measuring.
    for _ in range(200):
        send(msg)
        recv()
    rtts = []
    end = clock() + int(duration * 1e9)
    bad = 0
    while True:
        t0 = clock()
        send(msg)
        m = recv()
        t1 = clock()
        rtts.append(t1 - t0)
        if len(m) != LATENCY_SIZE:
            bad += 1
        if t1 >= end:
            break
    rtts.sort()
    return {
        "rounds": len(rtts),
        "bad_sizes": bad,
        "p50_us": rtts[len(rtts) // 2] / 1e3,
        "p99_us": rtts[min(len(rtts) - 1, (len(rtts) * 99) // 100)] / 1e3,
    }


# --------------------------------------------------------------------------
# The parent: one run
# --------------------------------------------------------------------------


def _collect(procs: Sequence[Any], conns: Sequence[Any], timeout: float) -> List[Dict[str, Any]]:
    """Wait for one result from each child; kill the rest if one fails or time runs out."""
    results: List[Optional[Dict[str, Any]]] = [None] * len(conns)
    deadline = time.monotonic() + timeout
    pending = {c: i for i, c in enumerate(conns)}
    why = f"no result within {timeout:.0f} s"
    try:
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for c in multiprocessing.connection.wait(list(pending), left):
                conn = cast(multiprocessing.connection.Connection, c)
                i = pending.pop(conn)
                try:
                    results[i] = conn.recv()
                except EOFError:
                    results[i] = {"error": "a child died without reporting"}
            if any(r is not None and "error" in r for r in results):
                # The other side would wait for ever for its peer.
                why = "stopped: its peer failed"
                break
    finally:
        for p in procs:
            p.join(1.0 if not pending else 0)
            if p.is_alive():
                p.kill()
                p.join()
    return [r if r is not None else {"error": why} for r in results]


def _first_error(results: Sequence[Dict[str, Any]]) -> Optional[str]:
    """The errors the children reported, their own before those of the parent."""
    errors = [r["error"] for r in results if "error" in r]
    errors.sort(key=lambda e: e.startswith(("no result", "stopped")))
    return "; ".join(errors) if errors else None


def _spawn(target: Callable[..., None], args_list: List[Tuple[Any, ...]],
           timeout: float) -> List[Dict[str, Any]]:
    ctx = multiprocessing.get_context("fork")
    conns = []
    procs = []
    try:
        for args in args_list:
            r, w = ctx.Pipe(duplex=False)
            p = ctx.Process(target=target, args=args + (w,), daemon=True)
            p.start()
            w.close()
            conns.append(r)
            procs.append(p)
        return _collect(procs, conns, timeout)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        for c in conns:
            c.close()


def run_throughput(transport: Transport, size: int, duration: float,
                   cpus: Tuple[Optional[int], Optional[int]]) -> Dict[str, Any]:
    """One throughput run of ``transport`` at ``size``: a dict with msg_per_s,
    or error, or skip (the transport cannot carry messages that large)."""
    ctx = multiprocessing.get_context("fork")
    state = transport.create(size)
    try:
        ready = ctx.Event()
        done = ctx.Event()
        consumer, producer = _spawn(throughput_child, [
            ("consumer", transport, state, size, duration, cpus[0], ready, done),
            ("producer", transport, state, size, duration, cpus[1], ready, done),
        ], duration + GRACE)
    finally:
        transport.destroy(state)
    if consumer.get("too_large") or producer.get("too_large"):
        # A packet-based channel's kernel limit, not a failure.
        return {"skip": f"a {format_size(size)} message is too large for it"}
    error = _first_error([consumer, producer])
    if error is not None:
        return {"error": error}
    if consumer["received"] != producer["sent"]:
        return {"error": f"sent {producer['sent']} messages, received {consumer['received']}"}
    if consumer["bad_sizes"]:
        return {"error": f"{consumer['bad_sizes']} messages arrived with the wrong size "
                         "or contents"}
    # The stop message ends the interval, so it counts as the last arrival.
    elapsed = consumer["elapsed"]
    count = consumer["received"]
    rate = count / elapsed if elapsed > 0 else 0.0
    return {"messages": count, "elapsed": elapsed, "msg_per_s": rate}


def run_latency(transport: Transport, duration: float,
                cpus: Tuple[Optional[int], Optional[int]]) -> Dict[str, Any]:
    """One ping-pong run; a dict with p50_us, p99_us and rounds, or error."""
    ctx = multiprocessing.get_context("fork")
    there = transport.create(LATENCY_SIZE)
    try:
        back = transport.create(LATENCY_SIZE)
        try:
            ready = ctx.Event()
            ready_back = ctx.Event()
            done = ctx.Event()
            events = (ready, ready_back, done)
            server, client = _spawn(pingpong_child, [
                ("server", transport, there, back, duration, cpus[0], *events),
                ("client", transport, there, back, duration, cpus[1], *events),
            ], duration + GRACE)
        finally:
            transport.destroy(back)
    finally:
        transport.destroy(there)
    error = _first_error([server, client])
    if error is not None:
        return {"error": error}
    if client["bad_sizes"]:
        return {"error": f"{client['bad_sizes']} replies arrived with the wrong size"}
    return client


# --------------------------------------------------------------------------
# The whole table
# --------------------------------------------------------------------------


@dataclass
class Report:
    """What ``run_bench`` measured, ready for the table, JSON and the plot."""

    mode: str
    duration: float
    repeat: int
    sizes: List[int]
    cpus: Tuple[Optional[int], Optional[int]]
    results: List[Dict[str, Any]] = field(default_factory=list)
    skipped: List[Dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> Dict[str, Any]:
        """A JSON-ready dict: environment, settings, results and skipped cells."""
        import pyipc

        consumer, producer = self.cpus
        return {
            "pyipc_version": pyipc.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "mode": self.mode,
            "duration_per_cell": self.duration,
            "repeat": self.repeat,
            "sizes": self.sizes,
            "pinned": consumer is not None,
            "consumer_cpu": consumer,
            "producer_cpu": producer,
            "results": self.results,
            "skipped": self.skipped,
        }


Progress = Callable[[str], None]


def _cells(names: Iterable[str], sizes: Sequence[int], mode: str,
           skipped: List[Dict[str, Any]]) -> List[Tuple[Transport, Optional[int]]]:
    """The (transport, size) pairs to run; the rest go to ``skipped`` with a reason."""
    cells: List[Tuple[Transport, Optional[int]]] = []
    for name in names:
        t = TRANSPORTS[name]
        reason = t.unavailable()
        if reason is not None:
            skipped.append({"transport": name, "size": None, "reason": reason})
            continue
        if mode == "latency":
            if t.kind in ("batch", "obj"):
                skipped.append({"transport": name, "size": None,
                                "reason": "round trips are timed one bytes message per call"})
            else:
                cells.append((t, LATENCY_SIZE))
            continue
        if t.kind == "obj":
            cells.append((t, None))
            continue
        for size in sizes:
            if t.max_size is not None and size > t.max_size:
                skipped.append({"transport": name, "size": size,
                                "reason": f"messages are capped at {format_size(t.max_size)}"})
            else:
                cells.append((t, size))
    return cells


def run_bench(names: Sequence[str], sizes: Sequence[int], duration: float,
              repeat: int = DEFAULT_REPEAT, latency: bool = False,
              progress: Optional[Progress] = None) -> Report:
    """Run every cell ``repeat`` times and keep the medians.

    ``duration`` is the producing time of one cell, split evenly over its
    repetitions.  Raises KeyError for an unknown transport name; failures of
    a transport are reported in its cell, not raised.
    """
    for name in names:
        if name not in TRANSPORTS:
            raise KeyError(name)
    mode = "latency" if latency else "throughput"
    cpus = pick_cpus()
    report = Report(mode, duration, repeat, list(sizes), cpus)
    cells = _cells(names, sizes, mode, report.skipped)
    per_run = duration / repeat
    runs: List[List[Dict[str, Any]]] = [[] for _ in cells]
    # Repetition by repetition over the whole table, not cell by cell: a
    # burst of load from a neighbour then spoils one run of many cells
    # (which the median drops) rather than every run of one cell.
    too_large: Set[int] = set()
    for rep in range(repeat):
        for i, (t, size) in enumerate(cells):
            if i in too_large:
                continue
            if progress is not None:
                label = "objects" if size is None else format_size(size)
                progress(f"run {rep + 1}/{repeat} [{i + 1}/{len(cells)}] {t.name} {label}")
            if latency:
                runs[i].append(run_latency(t, per_run, cpus))
            else:
                run = run_throughput(t, size or 0, per_run, cpus)
                if "skip" in run:
                    too_large.add(i)
                    report.skipped.append({"transport": t.name, "size": size,
                                           "reason": run["skip"]})
                runs[i].append(run)
    for i, ((t, size), cell_runs) in enumerate(zip(cells, runs)):
        if i not in too_large:
            report.results.append(_summarise(t, size, cell_runs, latency))
    if not latency:
        _add_ratios(report.results)
        _add_baseline_ratios(report.results)
    return report


def _summarise(t: Transport, size: Optional[int], runs: List[Dict[str, Any]],
               latency: bool) -> Dict[str, Any]:
    row: Dict[str, Any] = {
        "transport": t.name,
        "size": size,
        "note": t.note,
        "runs": runs,
    }
    if size is not None and t.kind_for(size) == "into":
        row["receive"] = "get_into"
    errors = [r["error"] for r in runs if "error" in r]
    if errors:
        row["error"] = errors[0]
        return row
    if latency:
        row["p50_us"] = statistics.median(r["p50_us"] for r in runs)
        row["p99_us"] = statistics.median(r["p99_us"] for r in runs)
        row["rounds"] = sum(r["rounds"] for r in runs)
    else:
        rate = statistics.median(r["msg_per_s"] for r in runs)
        row["msg_per_s"] = rate
        row["mb_per_s"] = rate * size / 1e6 if size is not None else None
    return row


def _add_ratios(rows: List[Dict[str, Any]]) -> None:
    base: Dict[Optional[int], float] = {}
    for row in rows:
        if row["transport"] in (BASELINE, BASELINE_OBJ) and "msg_per_s" in row:
            base[row["size"]] = row["msg_per_s"]
    for row in rows:
        ref = base.get(row["size"])
        if "msg_per_s" in row and ref:
            row["vs_mp_queue"] = row["msg_per_s"] / ref


def _add_baseline_ratios(rows: List[Dict[str, Any]]) -> None:
    """Each row whose transport names a baseline gets ``vs_baseline``: its
    rate over the baseline's at the same size, in the same run."""
    rates = {(r["transport"], r["size"]): r["msg_per_s"] for r in rows if "msg_per_s" in r}
    for row in rows:
        base = TRANSPORTS[row["transport"]].baseline if row["transport"] in TRANSPORTS else None
        ref = rates.get((base, row["size"])) if base else None
        if ref and "msg_per_s" in row:
            row["baseline"] = base
            row["vs_baseline"] = row["msg_per_s"] / ref
