"""Fixed-bucket histograms, so that percentiles over long ranges come from small rollup rows.

A histogram is a list of counts, one per bucket; bucket i holds values up to BOUNDS[i] (the
last bucket everything above). Percentiles interpolate within the bucket, so they are exact to
within a bucket's width.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

TTFT_MS_BOUNDS = (
    5,
    10,
    20,
    30,
    50,
    75,
    100,
    150,
    200,
    300,
    500,
    750,
    1000,
    1500,
    2000,
    3000,
    5000,
    7500,
    10000,
    15000,
    20000,
    30000,
    60000,
)
TOKENS_PER_SECOND_BOUNDS = (
    1,
    2,
    5,
    10,
    15,
    20,
    25,
    30,
    40,
    50,
    60,
    70,
    80,
    90,
    100,
    110,
    120,
    130,
    140,
    150,
    175,
    200,
    250,
    300,
    400,
    500,
    750,
    1000,
)


def added(histogram: Sequence[int], bounds: Sequence[float], value: float) -> list[int]:
    """The histogram with one more value."""
    counts = list(histogram) or [0] * (len(bounds) + 1)
    counts[bisect.bisect_left(bounds, value)] += 1
    return counts


def merged(histograms: Iterable[Sequence[int]], bounds: Sequence[float]) -> list[int]:
    total = [0] * (len(bounds) + 1)
    for histogram in histograms:
        for index, count in enumerate(histogram):
            total[index] += count
    return total


def percentile(histogram: Sequence[int], bounds: Sequence[float], fraction: float) -> float | None:
    """The value below which `fraction` of the values lie (None for an empty histogram)."""
    total = sum(histogram)
    if not total:
        return None
    rank = fraction * total
    seen = 0
    for index, count in enumerate(histogram):
        if count and seen + count >= rank:
            low = bounds[index - 1] if index else 0
            high = bounds[index] if index < len(bounds) else bounds[-1] * 2
            return low + (high - low) * (rank - seen) / count
        seen += count
    return bounds[-1] * 2
