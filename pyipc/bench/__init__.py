"""``pyipc bench``: a cross-process benchmark of every transport.

``transports`` defines what is measured, ``runner`` how (two pinned
processes, medians of several runs), ``output`` how it is shown.  This
package itself holds only the defaults: ``pyipc`` imports the harness when
``pyipc bench`` runs, never for its other commands.
"""
from __future__ import annotations

__all__ = ["DEFAULT_SIZES", "DEFAULT_REPEAT", "DEFAULT_DURATION", "LATENCY_SIZE"]

DEFAULT_SIZES = (64, 4096, 65536, 1 << 20)
DEFAULT_REPEAT = 3
# The whole default table (about 90 cells) should take about two minutes on
# two CPUs: 1 s of producing per cell, split over the repetitions.
DEFAULT_DURATION = 1.0
LATENCY_SIZE = 64
