"""The live backend: every kind of probe over one core (see kuprobe/live/core.py)."""

from __future__ import annotations

from kuprobe.live.core import describe
from kuprobe.live.kprobe import KprobeOps
from kuprobe.live.uprobe import UprobeOps

__all__ = ["LiveBackend", "describe"]


class LiveBackend(UprobeOps, KprobeOps):
    """All live probes of this process. Use the module-level functions of kuprobe.live.api."""
