"""The parts of the one play loop (``play_loop``): a game's record, a bank of games and its wave, the server's outages.

No Chainer here.
"""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from atari_trtis_demo.client.errors import InferenceError, RequestTimeout, ServerError, ServerUnavailable
from atari_trtis_demo.client.latency import LatencyStats
from atari_trtis_demo.core.envs import scale_observation
from atari_trtis_demo.core.errors import UserError
from atari_trtis_demo.core.game_banks import GameBank, Stepped
from atari_trtis_demo.play.play_result import CUT_SHORT, STEP_LIMIT, TERMINATED, TRUNCATED, EpisodeStats, OutageStats
from atari_trtis_demo.play.play_stats import staleness_summary
from atari_trtis_demo.play.policies import Policy
from atari_trtis_demo.play.web_address import PLAY_ON_EPISODES

# The server is away, not the request wrong: these are ridden out (ServerGoingAway is a ServerUnavailable).
OUTAGE_ERRORS = (ServerUnavailable, RequestTimeout)


def server_away(error: InferenceError) -> bool:
    """Whether ``error`` says the server is away rather than that it answered wrongly.

    A Triton shutting down cancels the requests in flight (CANCELLED), which the client
    reports as a ServerError: that too is the server going away.
    """
    return isinstance(error, OUTAGE_ERRORS) or (isinstance(error, ServerError) and error.status == "CANCELLED")


def check_action_count(player: str, n_actions: int, game_actions: int, env_id: str) -> None:
    """A model must have one Q-value per action of the game it plays: one line naming both when not."""
    if game_actions != n_actions:
        raise UserError(
            f"{player} has {n_actions} actions but {env_id} has {game_actions}: "
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


class Bank:
    """Games whose envs step together (a :class:`GameBank`) and ask the server together: one wave per step.

    A wave holds the newest frame stack of every game still playing, sent as one batch
    (the policy splits it at the model's batch limit); its answer gives each game the
    action of its own row.
    """

    def __init__(self, games: list[Game], envs: GameBank, round_trips: LatencyStats) -> None:
        self.games, self.envs = games, envs
        self.round_trips = round_trips  # every bank's waves (the loop's), each once
        self.actions = np.zeros(len(games), np.int64)  # async: the last answered actions (NOOP until the first)
        self.wave: concurrent.futures.Future | None = None
        self.rows: list[int] = []  # the games (local indices) of the wave in flight
        self.asked: list[tuple[int, int]] = []  # (episode, step) of each of them when it was asked
        self.asked_time = 0.0
        self.answered_time = 0.0  # when the wave in flight was answered (its future done)

    @property
    def playing(self) -> bool:
        return any(not g.done for g in self.games)

    def _wave(self, now: float) -> np.ndarray:
        """The scaled stacks of the games that play on, noted as asked at ``now``."""
        self.rows = [i for i, g in enumerate(self.games) if not g.done]
        self.asked = [(len(self.games[i].episodes), self.games[i].steps) for i in self.rows]
        self.asked_time = now
        for i in self.rows:
            self.games[i].requests += 1
        return scale_observation(self.envs.stacks[self.rows])

    def ask(self, policy: Policy, now: float) -> None:
        """Send the wave; its answer is looked at later (:attr:`wave`), its round trip ends when it came."""
        self.wave = wave = policy.q_values_async(self._wave(now))

        def came(done: concurrent.futures.Future) -> None:
            if done is self.wave:
                self.answered_time = time.monotonic()

        wave.add_done_callback(came)

    def ask_and_wait(self, policy: Policy, now: float) -> np.ndarray:
        """Send the wave and wait for its Q-values (the policy's errors are raised)."""
        return policy.q_values(self._wave(now))

    def drop_wave(self) -> None:
        if self.wave is not None:
            self.wave.cancel()
            self.wave = None

    def answered(self, q: np.ndarray, round_trip: float, staleness: bool) -> None:
        """The wave's Q-values: each game's greedy action, its round trip and (async) how old its frames are."""
        self.wave = None
        self.round_trips.record(round_trip)
        for row, i in enumerate(self.rows):
            g = self.games[i]
            g.latency.record(round_trip)
            episode, step = self.asked[row]
            if g.done or len(g.episodes) != episode:  # its episode ended meanwhile: the answer is of no use
                continue
            self.actions[i] = int(np.argmax(q[row]))
            if staleness:
                g.answered_at = step

    def step(self) -> None:
        """Start every game's step with its action (a finished game idles on NOOP)."""
        self.envs.send(np.where([g.done for g in self.games], 0, self.actions))

    def finish_step(self, now: float, flag_stale: bool) -> None:
        """Collect the step; record rewards, ends of episodes (restarting the next ones) and staleness."""
        stepped: Stepped = self.envs.recv()
        restart: list[int] = []
        for i, g in enumerate(self.games):
            if g.done:
                continue
            if flag_stale and g.answered_at is not None:
                g.staleness.append(g.steps - g.answered_at)
            g.stepped(float(stepped.rewards[i]))
            terminated, truncated = bool(stepped.terminated[i]), bool(stepped.truncated[i])
            if terminated or truncated or g.steps >= g.cap:
                end = TERMINATED if terminated else TRUNCATED if truncated else STEP_LIMIT
                if g.end_episode(now, end, float(stepped.ale_scores[i])):
                    restart.append(i)
                self.actions[i] = 0
        if restart:
            self.envs.restart(restart, [self.games[i].next_seed for i in restart])
        if not self.playing:
            self.drop_wave()


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


OVERLAY_SECONDS = 1.0  # the many-game overlay's percentiles are recomputed this often (they cover every wave)


class Overlay:
    """The overlay's lines: one game's score, episode and last round trip; or the figures of many games."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.at = 0.0

    def text(self, games: list[Game], policy: Policy, waves: LatencyStats, mode: str, elapsed: float) -> list[str]:
        steps = sum(e.steps for g in games for e in g.episodes) + sum(g.steps for g in games if not g.done)
        if len(games) == 1:
            g = games[0]
            episode = f"{min(len(g.episodes) + 1, g.episodes_to_play)}"
            episode += f"/{g.episodes_to_play}" if g.episodes_to_play < PLAY_ON_EPISODES else ""  # else: until stopped
            return overlay_lines(policy, mode, g.score, episode, steps / elapsed)
        now = time.monotonic()
        if not self.lines or now - self.at >= OVERLAY_SECONDS:
            self.at = now
            lat = waves.summary()
            stacks = sum(g.requests for g in games)
            self.lines = [
                f"{len(games)} games   {steps / elapsed / len(games):.1f} steps/s per game   {mode.upper()}",
                f"{stacks / elapsed:.0f} stacks/s in {lat['count'] / elapsed:.0f} waves/s   "
                f"rtt p50 {lat['median_ms']:.1f} ms   p99 {lat['p99_ms']:.1f} ms",
            ]
        return self.lines


def game_over_lines(games: list[Game], evaluation: dict[str, float]) -> list[str]:
    """The game-over screen's lines below its headline: the final score(s), or the many games' summary."""
    if len(games) > 1:
        return [f"{len(games)} games, mean score {evaluation.get('mean', 0):g}, max {evaluation.get('max', 0):g}"]
    episodes = games[0].episodes
    lines = [f"final score {episodes[-1].score:g}" if episodes else "final score 0"]
    if len(episodes) > 1:
        lines.append("episodes: " + ", ".join(f"{e.score:g}" for e in episodes))
    return lines
