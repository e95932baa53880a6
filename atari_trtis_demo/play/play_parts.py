"""The parts of the one play loop (``play_loop``): a game, the server's outages, the checks on answers.

No Chainer here.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from atari_trtis_demo.core.envs import GameScore, find_wrapper, scale_observation
from atari_trtis_demo.core.errors import UserError
from atari_trtis_demo.play.inference_client import InferenceError, RequestTimeout, ServerError, ServerUnavailable
from atari_trtis_demo.play.play_result import CUT_SHORT, STEP_LIMIT, TERMINATED, TRUNCATED, EpisodeStats, OutageStats
from atari_trtis_demo.play.play_stats import staleness_summary
from atari_trtis_demo.play.policies import Policy, checked_q_values

# The server is away, not the request wrong: these are ridden out (ServerGoingAway is a ServerUnavailable).
OUTAGE_ERRORS = (ServerUnavailable, RequestTimeout)


def server_away(error: InferenceError) -> bool:
    """Whether ``error`` says the server is away rather than that it answered wrongly.

    A Triton shutting down cancels the requests in flight (CANCELLED), which the client
    reports as a ServerError: that too is the server going away.
    """
    return isinstance(error, OUTAGE_ERRORS) or (isinstance(error, ServerError) and error.status == "CANCELLED")


def checked_action(q: Any, n_actions: int, source: str) -> int:
    """The greedy action of one answer, which must be ``n_actions`` finite numbers (NaN must not play NOOP)."""
    return int(np.argmax(checked_q_values(q, n_actions, source)))


def check_action_count(player: str, n_actions: int, env: Any, env_id: str) -> None:
    """A model must have one Q-value per action of the game it plays: one line naming both when not."""
    if env.action_space.n != n_actions:
        raise UserError(
            f"{player} has {n_actions} actions but {env_id} has {env.action_space.n}: "
            "serve or load a model trained on this game (--env)"
        )


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
        if self.limit <= 0:  # --reconnect 0: the first failure ends play, as before --reconnect
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


@dataclass
class Game:
    """One of the games: its env, its policy, its request in flight, its episodes and figures."""

    index: int
    seed: int  # episode j plays seed + j
    env: Any
    policy: Policy
    episodes_to_play: int
    cap: int
    obs: Any = None
    score: float = 0.0
    steps: int = 0  # in the episode being played
    requests: int = 0
    seconds: float = 0.0  # playing time when its last episode ended
    done: bool = False
    episodes: list[EpisodeStats] = field(default_factory=list)
    finished_scores: list[float] = field(default_factory=list)  # episodes played to their end (or the cap)
    staleness: list[int] = field(default_factory=list)
    latency: dict[str, float] | None = None  # round trips, frozen when play ends (else live)
    action: int = 0  # async: the last answered action (NOOP until the first)
    pending: concurrent.futures.Future | None = None
    asked_at: int = 0  # the step of the frames behind the request in flight
    asked_time: float = 0.0
    answered_at: int | None = None

    def start_episode(self) -> None:
        self.obs, _ = self.env.reset(seed=self.seed + len(self.episodes))
        self.score, self.steps, self.action, self.answered_at = 0.0, 0, 0, None

    def ask(self, now: float) -> None:
        self.pending = self.policy.q_values_async(scale_observation(self.obs))
        self.asked_at, self.asked_time = self.steps, now
        self.requests += 1

    def drop_request(self) -> None:
        if self.pending is not None:
            self.pending.cancel()
            self.pending = None

    def step(self, action: int, now: float) -> None:
        self.obs, reward, terminated, truncated, _ = self.env.step(action)
        self.score += float(reward)
        self.steps += 1
        if terminated or truncated or self.steps >= self.cap:
            self.end_episode(now, TERMINATED if terminated else TRUNCATED if truncated else STEP_LIMIT)

    def end_episode(self, now: float, end: str) -> None:
        self.drop_request()  # the episode is over: an answer in flight is of no use
        self.episodes.append(EpisodeStats(self.score, self.steps, find_wrapper(self.env, GameScore).score, end))
        if end != CUT_SHORT:
            self.finished_scores.append(self.score)
        self.seconds = now
        if len(self.episodes) < self.episodes_to_play and end != CUT_SHORT:
            self.start_episode()
        else:
            self.done = True

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
            "latency_ms": self.policy.latency.summary() if self.latency is None else self.latency,
            "staleness_steps": staleness_summary(self.staleness),
        }


def overlay_lines(policy: Policy, mode: str, score: float, episode: str, steps_per_second: float) -> list[str]:
    """The two lines at the bottom of the one-game window: the game, then the inference and what it measures."""
    latency = policy.latency.last_ms
    if policy.on_fallback:
        rtt = "rtt - (server down)"  # the last server round trip is not news
    elif not policy.remote:
        rtt = "local inference -" if latency is None else f"local inference {latency:.1f} ms"
    else:
        rtt = "rtt -" if latency is None else f"rtt {latency:.1f} ms"
    return [f"score {score:g}   episode {episode}", f"{steps_per_second:.0f} steps/s   {rtt}   {mode.upper()}"]
