"""The latency histogram's scale: 1-2-5 buckets from 100ns to 50s, their ranges, percentiles.

``Watch`` counts each entry→return time in its bucket (``bisect.bisect_right(LATENCY_BOUNDS,
ns)``); the dashboard reads the buckets back as ranges and percentiles.
"""

from __future__ import annotations

from collections.abc import Sequence

# Latency buckets by the 1-2-5 series, 100ns … 50s: bucket i holds [BOUNDS[i-1], BOUNDS[i]),
# bucket 0 everything under 100ns and the last everything from 50s. Handlers find the bucket
# with bisect.bisect_right(LATENCY_BOUNDS, ns).
LATENCY_BOUNDS: tuple[int, ...] = tuple(m * 10**e for e in range(2, 11) for m in (1, 2, 5))
LATENCY_BUCKETS = len(LATENCY_BOUNDS) + 1


def bucket_range(b: int) -> tuple[int, int | None]:
    """[low, high) of latency bucket ``b`` in ns; high is None for the last one."""
    low = LATENCY_BOUNDS[b - 1] if b else 0
    return low, (LATENCY_BOUNDS[b] if b < len(LATENCY_BOUNDS) else None)


def percentile(hist: Sequence[int], q: float) -> int | None:
    """The upper bound (ns) of the bucket holding quantile ``q``; None when empty.

    The last, open bucket reports its lower bound.
    """
    total = sum(hist)
    if not total:
        return None
    seen = 0
    for b, n in enumerate(hist):
        seen += n
        if seen >= q * total:
            low, high = bucket_range(b)
            return low if high is None else high
    return LATENCY_BOUNDS[-1]
