"""Round-trip times of a client's requests (and of a player's waves), thread-safe, and their summary."""

from __future__ import annotations

import threading

import numpy as np


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
