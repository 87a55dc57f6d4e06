"""What the dashboard reads of a session: every probe's counters at one instant, a ``Sample``.

A ``CounterSource`` (``kuprobe.cli.session.Session`` is one) hands a new ``Sample`` whenever
it is asked; the display derives rates and trends from successive ones and never waits on the
event path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class ProbeSample:
    """One probe's counters at one instant."""

    label: str
    is_return: bool
    hits: int
    nmissed: int = 0
    lost: int = 0
    handler_errors: int = 0
    latency: tuple[int, ...] | None = None  # LATENCY_BUCKETS counts, return probes only
    dropped: int = 0  # recorded, never handled (an unregister that timed out, exit, a signal)
    entry_lost: int = 0  # a return probe's entry events lost (``lost`` counts its returns)


@dataclass(frozen=True)
class Sample:
    """Every probe's counters and the hits per (pid, comm), at ``time`` (monotonic s)."""

    time: float
    probes: tuple[ProbeSample, ...]
    tasks: Mapping[tuple[int, str], int] = field(default_factory=dict)


class CounterSource(Protocol):
    """What the dashboard reads: ``kuprobe.cli.session.Session`` is one."""

    def sample(self) -> Sample: ...
