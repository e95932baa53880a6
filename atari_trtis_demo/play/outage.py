"""The server being away while play goes on (``--reconnect``): which failures are ridden out, and for how long."""

from __future__ import annotations

from atari_trtis_demo.client.errors import InferenceError, RequestTimeout, ServerError, ServerUnavailable
from atari_trtis_demo.play.play_result import OutageStats

# The server is away, not the request wrong: these are ridden out (ServerGoingAway is a ServerUnavailable).
OUTAGE_ERRORS = (ServerUnavailable, RequestTimeout)


def server_away(error: InferenceError) -> bool:
    """Whether ``error`` says the server is away rather than that it answered wrongly.

    A Triton shutting down cancels the requests in flight (CANCELLED), which the client
    reports as a ServerError: that too is the server going away.
    """
    return isinstance(error, OUTAGE_ERRORS) or (isinstance(error, ServerError) and error.status == "CANCELLED")


class Outage:
    """The server being away: counted, announced once per spell, and ended as an error after ``limit`` s."""

    def __init__(self, limit: float, stats: OutageStats) -> None:
        self.limit, self.stats = limit, stats
        self.since: float | None = None
        self.error: InferenceError | None = None

    @property
    def active(self) -> bool:
        return self.since is not None

    def failed(self, error: InferenceError, now: float) -> None:
        """A request failed: ridden out when the server is away (within ``limit``), else raised again."""
        if not server_away(error):
            raise error
        self.stats.requests_failed += 1
        if self.limit <= 0:  # --reconnect 0: the first failed request ends play, as before --reconnect
            raise error
        self.error = error
        if self.since is None:
            self.since = now
            self.stats.outages += 1
            print(
                f"warning: {error}; playing on, waiting up to {self.limit:g} s for the server (--reconnect)", flush=True
            )
        self.check(now)

    def answered(self, now: float) -> None:
        if self.since is not None:
            self.stats.seconds += now - self.since
            print(f"the server answers again after {now - self.since:.1f} s", flush=True)
            self.since = None

    def check(self, now: float) -> None:
        if self.since is not None and now - self.since > self.limit:
            raise type(self.error)(f"{self.error}; no answer for {self.limit:g} s (--reconnect)")

    def close(self, now: float) -> None:
        """A spell still open at the end counts up to now."""
        if self.since is not None:
            self.stats.seconds += now - self.since
            self.since = None
