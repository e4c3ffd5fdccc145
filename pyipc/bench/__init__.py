"""``pyipc bench``: a cross-process benchmark of every transport.

``transports`` defines what is measured, ``runner`` how (two pinned
processes, medians of several runs), ``output`` how it is shown.
"""
from __future__ import annotations

from .output import format_table, stderr_progress, write_json, write_plot
from .runner import (
    DEFAULT_DURATION,
    DEFAULT_REPEAT,
    DEFAULT_SIZES,
    LATENCY_SIZE,
    Report,
    format_size,
    parse_sizes,
    pick_cpus,
    run_bench,
    run_latency,
    run_throughput,
)
from .transports import TRANSPORTS, Transport

__all__ = [
    "DEFAULT_DURATION",
    "DEFAULT_REPEAT",
    "DEFAULT_SIZES",
    "LATENCY_SIZE",
    "Report",
    "TRANSPORTS",
    "Transport",
    "format_size",
    "format_table",
    "parse_sizes",
    "pick_cpus",
    "run_bench",
    "run_latency",
    "run_throughput",
    "stderr_progress",
    "write_json",
    "write_plot",
]
