"""The pace of play: a loop held to so many steps a second on an absolute schedule."""

from __future__ import annotations

import time


class Pace:
    """Holds a loop to ``fps`` iterations per second on an absolute schedule (``fps`` 0: no pace).

    A step that ran late is made up by the next ones' waits, so the mean pace holds;
    after a stall of more than a quarter second (a pause, a slow machine) the schedule
    restarts rather than rushing to catch up.
    """

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / fps if fps > 0 else 0.0
        self._next: float | None = None

    def wait(self) -> None:
        if not self.period:
            return
        now = time.perf_counter()
        if self._next is None or now - self._next > 0.25:
            self._next = now
        elif self._next > now:
            time.sleep(self._next - now)
        self._next += self.period
