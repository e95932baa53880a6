"""The figures play reports: round-trip latency and how stale the applied actions were.

No Chainer, no pygame: the inference client records latency here too.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from typing import Any

import numpy as np


def cpu_seconds() -> float:
    """This process's user + system CPU time (its threads included)."""
    t = os.times()
    return t.user + t.system


class LatencyStats:
    """Round-trip times of completed requests; thread-safe (async answers arrive on other threads)."""

    def __init__(self) -> None:
        self._seconds: list[float] = []
        self._lock = threading.Lock()

    def record(self, seconds: float) -> None:
        with self._lock:
            self._seconds.append(seconds)

    @property
    def last_ms(self) -> float | None:
        with self._lock:
            return self._seconds[-1] * 1e3 if self._seconds else None

    @classmethod
    def merged(cls, parts: list[LatencyStats]) -> LatencyStats:
        """One set of every part's round trips (a part listed twice counts once): the aggregate of many games."""
        whole = cls()
        for part in {id(p): p for p in parts}.values():
            with part._lock:
                whole._seconds.extend(part._seconds)
        return whole

    def summary(self) -> dict[str, float]:
        """``count``, ``mean_ms``, ``median_ms``, ``p99_ms`` (zeros before any request)."""
        with self._lock:
            ms = np.array(self._seconds) * 1e3
        if ms.size == 0:
            return {"count": 0, "mean_ms": 0.0, "median_ms": 0.0, "p99_ms": 0.0}
        return {
            "count": int(ms.size),
            "mean_ms": float(ms.mean()),
            "median_ms": float(np.median(ms)),
            "p99_ms": float(np.percentile(ms, 99)),
        }


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
