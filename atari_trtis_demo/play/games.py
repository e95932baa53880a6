"""Each game's record in a play session: its seed, its episodes as they end, and its figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from atari_trtis_demo.client.latency import LatencyStats
from atari_trtis_demo.play.play_result import CUT_SHORT, EpisodeStats, staleness_summary


@dataclass
class Game:
    """One of the games: its seed, its episodes and its figures (its env is a row of its bank)."""

    index: int
    seed: int  # its first episode's; the one game's episode j plays seed + j (game_banks: a bank's differ)
    episodes_to_play: int
    cap: int
    score: float = 0.0
    steps: int = 0  # in the episode being played
    requests: int = 0  # frame stacks sent for it (each in its bank's wave)
    seconds: float = 0.0  # playing time when its last episode ended
    done: bool = False
    episodes: list[EpisodeStats] = field(default_factory=list)
    finished_scores: list[float] = field(default_factory=list)  # episodes played to their end (or the cap)
    staleness: list[int] = field(default_factory=list)
    latency: LatencyStats = field(default_factory=LatencyStats)  # its waves' round trips
    answered_at: int | None = None  # async: the step of the frames behind the last answered action

    @property
    def next_seed(self) -> int:
        return self.seed + len(self.episodes)

    def stepped(self, reward: float) -> None:
        self.score += reward
        self.steps += 1

    def end_episode(self, now: float, end: str, ale_score: float) -> bool:
        """Record the episode that ended; whether another one follows."""
        self.episodes.append(EpisodeStats(self.score, self.steps, ale_score, end))
        if end != CUT_SHORT:
            self.finished_scores.append(self.score)
        self.seconds = now
        self.score, self.steps, self.answered_at = 0.0, 0, None
        self.done = len(self.episodes) >= self.episodes_to_play or end == CUT_SHORT
        return not self.done

    def to_json(self) -> dict[str, Any]:
        steps = sum(e.steps for e in self.episodes) + (0 if self.done else self.steps)
        return {
            "game": self.index,
            "seed": self.seed,
            "episodes": [vars(e).copy() for e in self.episodes],
            "score": sum(e.score for e in self.episodes),
            "steps": steps,
            "seconds": self.seconds,
            "steps_per_second": steps / self.seconds if self.seconds > 0 else 0.0,
            "requests": self.requests,
            "latency_ms": self.latency.summary(),
            "staleness_steps": staleness_summary(self.staleness),
        }
