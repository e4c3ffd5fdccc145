"""The output of ``pyipc bench``: the table, JSON, the plot and progress."""
from __future__ import annotations

import importlib
import json
import sys
from typing import Any, Dict, List, Optional, TextIO, Tuple

from .._util import format_size
from . import LATENCY_SIZE
from .runner import Progress, Report
from .transports import BASELINE, BASELINE_OBJ, INTO_FROM

__all__ = ["format_table", "write_json", "write_plot", "stderr_progress"]


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def _cpu_line(cpus: Tuple[Optional[int], Optional[int]], mode: str = "throughput") -> str:
    consumer, producer = cpus
    a, b = ("client", "echo server") if mode == "latency" else ("producer", "consumer")
    if consumer is None:
        return f"only one CPU available: {a} and {b} share it (not pinned)"
    return f"{a} pinned to CPU {producer}, {b} to CPU {consumer}"


def format_table(report: Report) -> str:
    """The report as the text table printed at the end of ``pyipc bench``."""
    # The name column fits the longest name ("socket-seqpacket-batch").
    w = max([18] + [len(r["transport"]) + len(" (into)") * bool(r.get("receive")) + 2
                    for r in report.results])
    lines = [
        f"pyipc bench ({report.mode}): {_cpu_line(report.cpus, report.mode)}; "
        f"median of {report.repeat} runs of {report.duration / report.repeat:.2f} s per cell",
    ]
    if report.mode == "latency":
        lines.append("")
        lines.append(f"round trip of {LATENCY_SIZE} B messages (ping-pong)")
        lines.append(f"{'transport':<{w}}{'p50 us':>10}{'p99 us':>10}{'rounds':>10}")
        for row in report.results:
            if "error" in row:
                lines.append(f"{row['transport']:<{w}}  failed: {row['error']}")
            else:
                lines.append(f"{row['transport']:<{w}}{row['p50_us']:>10.1f}"
                             f"{row['p99_us']:>10.1f}{row['rounds']:>10}")
    else:
        groups: Dict[Optional[int], List[Dict[str, Any]]] = {}
        for row in report.results:
            groups.setdefault(row["size"], []).append(row)
        for size, rows in groups.items():
            lines.append("")
            if size is None:
                lines.append(f"Python objects: a tuple of five ints (ratio to {BASELINE_OBJ})")
            else:
                lines.append(f"messages of {format_size(size)} (ratio to {BASELINE})")
            lines.append(f"{'transport':<{w}}{'msg/s':>14}{'MB/s':>11}{'ratio':>9}")
            for row in rows:
                name = row["transport"] + (" (into)" if row.get("receive") else "")
                if "error" in row:
                    lines.append(f"{name:<{w}}  failed: {row['error']}")
                    continue
                mb = "" if row["mb_per_s"] is None else f"{row['mb_per_s']:,.1f}"
                ratio = f"{row['vs_mp_queue']:.2f}x" if "vs_mp_queue" in row else "-"
                lines.append(f"{name:<{w}}{_fmt_rate(row['msg_per_s']):>14}{mb:>11}{ratio:>9}")
    based = [r for r in report.results if "vs_baseline" in r]
    if based:
        lines.append("")
        lines.append("pyipc's channels against the same kernel primitive driven from Python"
                     " (same run)")
        lines.append(f"{'transport':<{w}}{'size':>9}  {'baseline':<16}{'ratio':>7}")
        for row in based:
            lines.append(f"{row['transport']:<{w}}{format_size(row['size']):>9}  "
                         f"{row['baseline']:<16}{row['vs_baseline']:>6.2f}x")
    if any(r.get("receive") for r in report.results):
        lines.append("")
        lines.append(f"(into): the ring receives with get_into into a reused buffer "
                     f"from {format_size(INTO_FROM)} on")
    if report.skipped:
        lines.append("")
        lines.append("skipped:")
        for s in report.skipped:
            where = "" if s["size"] is None else f" at {format_size(s['size'])}"
            lines.append(f"  {s['transport']}{where}: {s['reason']}")
    return "\n".join(lines)


def write_json(report: Report, path: str) -> None:
    """Write the report as JSON to ``path``.  Raises OSError."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report.to_json(), f, indent=2)
        f.write("\n")


def write_plot(report: Report, path: str) -> None:
    """Bar chart (log scale) of msg/s per transport and size, or of latency.

    Raises ImportError when matplotlib (the ``plot`` extra) is missing, and
    OSError when the file cannot be written.
    """
    # Looked up at run time, like every optional dependency of the benchmark,
    # so that the package type-checks where matplotlib is not installed.
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")  # no display needed: we only write a file
    plt = importlib.import_module("matplotlib.pyplot")

    rows = [r for r in report.results if "error" not in r]
    fig, ax = plt.subplots(figsize=(12, 6))
    if report.mode == "latency":
        names = [r["transport"] for r in rows]
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], [r["p50_us"] for r in rows], 0.4, label="p50")
        ax.bar([x + 0.2 for x in xs], [r["p99_us"] for r in rows], 0.4, label="p99")
        ax.set_ylabel("round trip, microseconds (log scale)")
        ax.set_title(f"pyipc bench: ping-pong of {LATENCY_SIZE} B messages")
    else:
        names = list(dict.fromkeys(r["transport"] for r in rows))
        groups = list(dict.fromkeys(r["size"] for r in rows))
        width = 0.8 / max(1, len(groups))
        xs = range(len(names))
        for g, size in enumerate(groups):
            by_name = {r["transport"]: r["msg_per_s"] for r in rows if r["size"] == size}
            label = "objects" if size is None else format_size(size)
            ax.bar([x + (g - (len(groups) - 1) / 2) * width for x in xs],
                   [by_name.get(n, 0) for n in names], width, label=label)
        ax.set_ylabel("messages per second (log scale)")
        ax.set_title(f"pyipc bench: throughput ({_cpu_line(report.cpus)})")
    ax.set_yscale("log")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def stderr_progress(stream: TextIO = sys.stderr) -> Progress:
    """A progress callback: one line rewritten in place on a terminal."""
    tty = stream.isatty()

    def show(text: str) -> None:
        if tty:
            stream.write("\r\x1b[K" + text)
        else:
            stream.write(text + "\n")
        stream.flush()

    return show
