"""What a ``--workers`` worker sends back of its games, and the parent's one result of them all.

The plain
records that cross the pipe and their merge into one :class:`PlayResult`, in game order,
as one process would have reported the same games (the processes are
:mod:`atari_trtis_demo.play.play_workers`').
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from atari_trtis_demo.client.latency import LatencyStats
from atari_trtis_demo.play.play_result import EpisodeStats, OutageStats, PlayResult


@dataclass
class GameRecord:
    """One game as a worker reported it: what ``PlayResult`` needs of a game (``to_json``, ``finished_scores``)."""

    figures: dict[str, Any]
    finished_scores: list[float]

    @property
    def index(self) -> int:
        return int(self.figures["game"])

    def to_json(self) -> dict[str, Any]:
        return self.figures


@dataclass
class WorkerReport:
    """What one worker sends back when its games end (plain data: it crosses a pipe)."""

    games: list[GameRecord]
    episodes: list[EpisodeStats]
    staleness: list[int]
    round_trips: list[float]  # seconds, every wave of this worker: the parent's percentiles cover them all
    requests: int
    seconds: float
    outage: OutageStats
    fallback_switches: int
    error: str | None
    stopped_by_user: bool
    policy: str
    mode: str
    cpu_seconds: float = 0.0  # this worker's user + system CPU while playing (from the start to its report)
    servers: dict[str, int] = field(default_factory=dict)  # calls each server answered this worker


def worker_report(result: PlayResult, servers: dict[str, int] | None = None) -> WorkerReport:
    """What a worker sends back of its ``result``: plain data, raw round trips; ``servers``: its client's
    count of the calls each server answered."""
    games = [GameRecord(g.to_json(), list(g.finished_scores)) for g in result.games]
    # Raw round trips, not a summary: percentiles of percentiles would be wrong.
    round_trips = list(LatencyStats.merged([result.round_trips])._seconds) if result.round_trips else []
    return WorkerReport(
        games=games,
        episodes=list(result.episodes),
        staleness=list(result.staleness),
        round_trips=round_trips,
        requests=result.requests,
        seconds=result.seconds,
        outage=result.outage,
        fallback_switches=result.fallback_switches,
        error=result.error,
        stopped_by_user=result.stopped_by_user,
        policy=result.policy,
        mode=result.mode,
        cpu_seconds=result.cpu_seconds,
        servers=dict(servers or {}),
    )


def merge(reports: list[WorkerReport]) -> PlayResult:
    """One :class:`PlayResult` of every worker's games, in game order, as one process would report them."""
    reports = sorted(reports, key=lambda r: r.games[0].index if r.games else 0)
    first = reports[0]
    result = PlayResult(mode=first.mode, policy=first.policy)
    latency = LatencyStats()
    for r in reports:
        result.games.extend(r.games)
        result.episodes.extend(r.episodes)
        result.staleness.extend(r.staleness)
        for seconds in r.round_trips:
            latency.record(seconds)
        result.requests += r.requests
        result.seconds = max(result.seconds, r.seconds)  # the workers started together: until the last game ended
        # The server away is one event every worker sees: its spells and length are the longest worker's.
        result.outage.outages = max(result.outage.outages, r.outage.outages)
        result.outage.seconds = max(result.outage.seconds, r.outage.seconds)
        result.outage.requests_failed += r.outage.requests_failed
        result.fallback_switches = max(result.fallback_switches, r.fallback_switches)
        result.error = result.error or r.error
        result.stopped_by_user = result.stopped_by_user or r.stopped_by_user
        for address, count in r.servers.items():
            result.servers[address] = result.servers.get(address, 0) + count
    result.steps = sum(e.steps for e in result.episodes)
    result.latency = latency.summary()
    result.servers = dict(sorted(result.servers.items()))
    return result
