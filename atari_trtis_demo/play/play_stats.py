"""The figures play reports: round-trip latency and how stale the applied actions were.

No Chainer, no pygame: the inference client records latency here too.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import numpy as np


def cpu_seconds() -> float:
    """This process's user + system CPU time (its threads included)."""
    t = os.times()
    return t.user + t.system


def staleness_summary(staleness: list[int]) -> dict[str, Any]:
    """Mean, p50, p99, max and the exact histogram of action ages in agent steps ({} when none)."""
    if not staleness:
        return {}
    s = np.array(staleness)
    return {
        "mean": float(s.mean()),
        "p50": float(np.percentile(s, 50)),
        "p99": float(np.percentile(s, 99)),
        "max": int(s.max()),
        "histogram": {str(k): v for k, v in sorted(Counter(staleness).items())},
    }


def staleness_buckets(staleness: list[int]) -> str:
    """A short histogram: exact counts for 0-2 steps, then doubling ranges (3-4, 5-8, ...)."""
    counts: Counter[str] = Counter()
    for age in staleness:
        if age <= 2:
            counts[str(age)] += 1
        else:
            high = 1 << (age - 1).bit_length()
            counts[f"{high // 2 + 1}-{high}"] += 1
    order = sorted(counts, key=lambda k: int(k.split("-")[0]))
    return ", ".join(f"{k}: {counts[k]}" for k in order)
