"""What a play session reports (:class:`PlayResult`), and the figures it is made of.

One shape for every number of games: the aggregate figures, one entry per game, the
scores of the finished episodes summarised as ChainerRL's evaluator does, how stale the
applied actions were, the client's CPU, and the time the server was away.
"""

from __future__ import annotations

import json
import os
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
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


# How an episode ended (EpisodeStats.end).
TERMINATED, TRUNCATED, STEP_LIMIT, CUT_SHORT = "terminated", "truncated", "step limit", "cut short"


@dataclass
class EpisodeStats:
    score: float
    steps: int
    ale_score: float  # the emulator's own sum of rewards (GameScore wrapper): a cross-check
    end: str = TERMINATED  # TERMINATED, TRUNCATED, STEP_LIMIT or CUT_SHORT


def evaluation_summary(scores: list[float]) -> dict[str, float]:
    """As ``chainerrl.experiments.evaluator.eval_performance``: episodes, mean, median, stdev, max, min."""
    if not scores:
        return {}
    return {
        "episodes": len(scores),
        "mean": statistics.mean(scores),
        "median": statistics.median(scores),
        "stdev": statistics.stdev(scores) if len(scores) >= 2 else 0.0,
        "max": max(scores),
        "min": min(scores),
    }


@dataclass
class OutageStats:
    """The time the server was away while play went on (``--reconnect``)."""

    outages: int = 0  # spells from a failed request to the next answer
    seconds: float = 0.0  # their total length (a spell still open at the end counts up to then)
    requests_failed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "outages": self.outages,
            "seconds_without_server": self.seconds,
            "requests_failed": self.requests_failed,
        }


@dataclass
class PlayResult:
    """The aggregate of every game (for one game: that game), ``games`` one entry each (see ``play_loop.Game``)."""

    mode: str
    policy: str
    episodes: list[EpisodeStats] = field(default_factory=list)  # every game's, in game order
    steps: int = 0
    seconds: float = 0.0  # until the last game ended: the game-over screen is not playing time
    requests: int = 0
    latency: dict[str, float] = field(default_factory=dict)
    staleness: list[int] = field(default_factory=list)
    fallback_switches: int = 0
    error: str | None = None
    stopped_by_user: bool = False
    outage: OutageStats = field(default_factory=OutageStats)
    games: list[Any] = field(default_factory=list)  # play_loop.Game, each with to_json() and finished_scores
    cpu_seconds: float = 0.0  # this process's CPU in play (with workers: theirs and the parent's)
    round_trips: Any = None  # client.latency.LatencyStats of every wave, for a worker's report
    # Calls each server answered, by address (InferenceClient.answered_by_server, through play_cli.announcer).
    servers: dict[str, int] = field(default_factory=dict)

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else 0.0

    @property
    def evaluation(self) -> dict[str, float]:
        """The summary of the episodes played to their end or cap (cut-short ones are left out)."""
        return evaluation_summary([s for g in self.games for s in g.finished_scores])

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "policy": self.policy,
            "episodes": [asdict(e) for e in self.episodes],
            "steps": self.steps,
            "seconds": self.seconds,
            "steps_per_second": self.steps_per_second,
            "requests": self.requests,
            "latency_ms": self.latency,
            "client_cpu_seconds": self.cpu_seconds,
            "staleness_steps": staleness_summary(self.staleness),
            "fallback_switches": self.fallback_switches,
            "error": self.error,
            "stopped_by_user": self.stopped_by_user,
            "outage": self.outage.to_json(),
            "games": [g.to_json() for g in self.games],
            "evaluation": self.evaluation,
            "servers": self.servers,
        }

    def report(self) -> str:
        n = len(self.games)
        lines = [f"{self.mode} play of {n} game{'s' if n != 1 else ''} with {self.policy}"]
        if n <= 1:
            for i, e in enumerate(self.episodes, 1):
                lines.append(
                    f"  episode {i}: score {e.score:g}, {e.steps} steps"
                    + ("" if e.end == TERMINATED else f" ({e.end})")
                )
        for game in (g.to_json() for g in self.games) if n > 1 else ():
            lat = game["latency_ms"]
            scores = ", ".join(f"{e['score']:g}" for e in game["episodes"]) or "-"
            lines.append(
                f"  game {game['game'] + 1}: scores {scores}; {game['steps']} steps, "
                f"{game['steps_per_second']:.1f} steps/s, rtt p50 {lat['median_ms']:.1f} ms p99 {lat['p99_ms']:.1f} ms"
            )
        lat = self.latency
        # Many games ask in waves (one per bank and step): the round trips are the waves'.
        waves = f" (frame stacks, in {lat.get('count', 0)} waves)" if n > 1 else ""
        lines.append(
            f"  requests {self.requests}{waves}, {self.requests / max(self.seconds, 1e-9):.0f}/s; "
            f"latency mean {lat.get('mean_ms', 0):.2f} ms, median {lat.get('median_ms', 0):.2f} ms, "
            f"p99 {lat.get('p99_ms', 0):.2f} ms"
        )
        per_game = f" ({self.steps_per_second / n:.1f} per game)" if n > 1 else ""
        lines.append(
            f"  {self.steps} agent steps in {self.seconds:.1f} s: {self.steps_per_second:.1f} steps/s{per_game}"
        )
        if self.staleness:
            s = staleness_summary(self.staleness)
            lines.append(
                f"  staleness of applied actions (agent steps): mean {s['mean']:.2f}, p50 {s['p50']:g}, "
                f"p99 {s['p99']:g}, max {s['max']}; histogram {staleness_buckets(self.staleness)}"
            )
        if len(self.servers) > 1:
            answered = ", ".join(f"{address} {count}" for address, count in self.servers.items())
            lines.append(f"  calls answered by {len(self.servers)} servers: {answered}")
        if self.fallback_switches:
            lines.append(f"  fell back to local inference {self.fallback_switches} time(s)")
        if self.outage.outages:
            o = self.outage
            lines.append(
                f"  server away {o.outages} time(s), {o.seconds:.1f} s in all; {o.requests_failed} request(s) failed"
            )
        ev = self.evaluation
        if ev:  # the line ChainerRL's evaluation prints
            lines.append(
                f"  n_episodes: {ev['episodes']} mean: {ev['mean']:g} median: {ev['median']:g} "
                f"stdev: {ev['stdev']:g} max: {ev['max']:g} min: {ev['min']:g}"
            )
        return "\n".join(lines)


def write_json(path: str, result: PlayResult) -> None:
    with open(path, "w") as f:
        json.dump(result.to_json(), f, indent=2)
