"""Many games through one server from one process: ``src/app.py --games N``.

Each game has its own env (seeded apart: game ``i`` plays seeds ``seed + i * episodes``
onwards) and sends its own ModelInfer requests, as N separate players would: per agent
step one request per game, all in flight at once on the one gRPC channel (gRPC
futures), so that Triton's dynamic batcher, not this client, forms the batches.
``--sync`` waits for every game's answer before each game steps (each game steps as
soon as its own answer is in); asynchronous play keeps at most one request in flight
per game (:class:`~atari_trtis_demo.game.AsyncActions`). Every game keeps the pace
(``--fps``, real time by default). Episodes are capped at 4,500 agent steps (5 minutes
of play, the reproduction's evaluation cap) unless ``--max-steps`` says otherwise, and
the scores of the finished episodes are summarised as ChainerRL's evaluator does.
No Chainer here.
"""

from __future__ import annotations

import concurrent.futures
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from atari_trtis_demo.envs import GameScore, find_wrapper, make_env, scale_observation
from atari_trtis_demo.game import AsyncActions, EpisodeStats, Pace, PlayConfig, PlayResult, check_action_count
from atari_trtis_demo.grid_screen import GridScreen
from atari_trtis_demo.inference_client import InferenceClient, InferenceError
from atari_trtis_demo.play_stats import LatencyStats, staleness_summary
from atari_trtis_demo.policies import Policy
from atari_trtis_demo.screen import check_record_path

# ChainerRL's reproduction evaluates episodes of at most 5 minutes: 18,000 frames, 4,500 agent steps.
EVALUATION_EPISODE_CAP = 4500


class GamePolicy(Policy):
    """One game's requests through the shared client; the game's own round-trip times."""

    def __init__(self, client: InferenceClient) -> None:
        self.client = client
        self.name = f"remote {client.address} model '{client.model}'"
        self.latency = LatencyStats()

    @property
    def n_actions(self) -> int:  # type: ignore[override]
        return self.client.n_actions

    def q_values(self, frames: np.ndarray) -> np.ndarray:
        return self.q_values_async(frames).result()

    def q_values_async(self, frames: np.ndarray) -> concurrent.futures.Future:
        start = time.perf_counter()
        future = self.client.infer_async(frames)

        def answered(done: concurrent.futures.Future) -> None:
            if not done.cancelled() and done.exception() is None:
                self.latency.record(time.perf_counter() - start)

        future.add_done_callback(answered)
        return future


@dataclass
class Game:
    """One of the games: its env, requests, episodes and figures."""

    index: int
    seed: int
    env: Any
    policy: GamePolicy
    episodes_to_play: int
    cap: int
    obs: Any = None
    score: float = 0.0
    steps: int = 0  # in the episode being played
    requests: int = 0
    seconds: float = 0.0
    done: bool = False
    episodes: list[EpisodeStats] = field(default_factory=list)
    finished_scores: list[float] = field(default_factory=list)  # episodes played to their end (or the cap)
    staleness: list[int] = field(default_factory=list)
    actions: AsyncActions | None = None

    def start_episode(self) -> None:
        self.obs, _ = self.env.reset(seed=self.seed + len(self.episodes))
        self.score, self.steps = 0.0, 0
        self.actions = AsyncActions(self.policy)

    def frames(self) -> np.ndarray:
        return scale_observation(self.obs)

    def step(self, action: int, now: float) -> None:
        self.obs, reward, terminated, truncated, _ = self.env.step(action)
        self.score += float(reward)
        self.steps += 1
        if terminated or truncated or self.steps >= self.cap:
            self.end_episode(now, finished=True)

    def end_episode(self, now: float, finished: bool) -> None:
        if self.actions is not None:
            self.actions.cancel()
        self.episodes.append(EpisodeStats(self.score, self.steps, find_wrapper(self.env, GameScore).score))
        if finished:
            self.finished_scores.append(self.score)
        self.seconds = now
        if len(self.episodes) < self.episodes_to_play and finished:
            self.start_episode()
        else:
            self.done = True

    def to_json(self) -> dict[str, Any]:
        steps = sum(e.steps for e in self.episodes) + (0 if self.done else self.steps)
        return {
            "game": self.index,
            "seed": self.seed,
            "episodes": [asdict(e) for e in self.episodes],
            "score": sum(e.score for e in self.episodes),
            "steps": steps,
            "seconds": self.seconds,
            "steps_per_second": steps / self.seconds if self.seconds > 0 else 0.0,
            "requests": self.requests,
            "latency_ms": self.policy.latency.summary(),
            "staleness_steps": staleness_summary(self.staleness),
        }


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
class GamesResult:
    """The aggregate (PlayResult's figures and keys), one entry per game, and the evaluation summary."""

    aggregate: PlayResult
    games: list[Game]

    @property
    def evaluation(self) -> dict[str, float]:
        return evaluation_summary([s for g in self.games for s in g.finished_scores])

    def to_json(self) -> dict[str, Any]:
        figures = self.aggregate.to_json()
        figures["games"] = [g.to_json() for g in self.games]
        figures["evaluation"] = self.evaluation
        return figures

    def report(self) -> str:
        a = self.aggregate
        lines = [f"{a.mode} play of {len(self.games)} games with {a.policy}"]
        for g in self.games:
            game = g.to_json()
            lat = game["latency_ms"]
            scores = ", ".join(f"{e.score:g}" for e in g.episodes) or "-"
            lines.append(
                f"  game {g.index + 1}: scores {scores}; {game['steps']} steps, "
                f"{game['steps_per_second']:.1f} steps/s, rtt p50 {lat['median_ms']:.1f} ms p99 {lat['p99_ms']:.1f} ms"
            )
        lat = a.latency
        lines.append(
            f"  requests {a.requests} ({a.requests / max(a.seconds, 1e-9):.0f}/s), "
            f"latency mean {lat.get('mean_ms', 0):.2f} ms, median {lat.get('median_ms', 0):.2f} ms, "
            f"p99 {lat.get('p99_ms', 0):.2f} ms"
        )
        lines.append(
            f"  {a.steps} agent steps in {a.seconds:.1f} s: {a.steps_per_second:.1f} steps/s "
            f"({a.steps_per_second / len(self.games):.1f} per game)"
        )
        if a.staleness:
            s = staleness_summary(a.staleness)
            lines.append(f"  staleness (agent steps): mean {s['mean']:.2f}, p99 {s['p99']:g}, max {s['max']}")
        ev = self.evaluation
        if ev:  # the line ChainerRL's evaluation prints
            lines.append(
                f"  n_episodes: {ev['episodes']} mean: {ev['mean']:g} median: {ev['median']:g} "
                f"stdev: {ev['stdev']:g} max: {ev['max']:g} min: {ev['min']:g}"
            )
        return "\n".join(lines)


def aggregate_overlay(result: PlayResult, client: InferenceClient, n: int, elapsed: float) -> list[str]:
    lat = client.stats.summary()  # once a second: a percentile over every request so far
    return [
        f"{n} games   {result.steps / max(elapsed, 1e-9) / n:.1f} steps/s per game   {result.mode.upper()}",
        f"{result.requests / max(elapsed, 1e-9):.0f} requests/s   rtt p50 {lat['median_ms']:.1f} ms   "
        f"p99 {lat['p99_ms']:.1f} ms",
    ]


def play_games(client: InferenceClient, config: PlayConfig, n: int) -> GamesResult:
    """Play ``config.episodes`` episodes in each of ``n`` games at once; see the module's doc."""
    check_record_path(config.record)
    cap = config.max_steps or EVALUATION_EPISODE_CAP
    mode = "sync" if config.sync else "async"
    result = PlayResult(mode=mode, policy=f"remote {client.address} model '{client.model}'")
    games: list[Game] = []
    try:
        for i in range(n):
            seed = config.seed + i * config.episodes
            env = make_env(config.env_id, train=False, epsilon=config.epsilon, seed=seed)
            games.append(Game(i, seed, env, GamePolicy(client), config.episodes, cap))
        check_action_count(result.policy, client.n_actions, games[0].env, config.env_id)
        screen = GridScreen(
            f"{config.env_id}: {n} games, {result.policy}, {mode} inference",
            n,
            scale=config.rendering_scale,
            headless=config.headless,
            record=config.record,
            screenshot=config.screenshot,
        )
    except BaseException:
        for g in games:
            g.env.close()
        raise
    for g in games:
        g.start_episode()
    pace = Pace(config.fps)
    start, tick = time.perf_counter(), 0
    overlay: list[str] = []
    clock = lambda: time.perf_counter() - start - screen.paused_seconds  # noqa: E731
    try:
        while playing := [g for g in games if not g.done]:
            if screen.player_quit():
                result.stopped_by_user = True
                break
            if config.sync:
                asked = {g.policy.q_values_async(g.frames()): g for g in playing}
                for g in playing:
                    g.requests += 1
                result.requests += len(asked)
                # Each game steps as soon as its own answer is in: the env work overlaps the server's.
                for future in concurrent.futures.as_completed(asked, timeout=client.timeout + 1):
                    asked[future].step(int(np.argmax(future.result())), clock())
            else:
                # Every game's request first, then every env step: the requests of one tick reach
                # Triton together, where the batcher can merge them.
                for g in playing:
                    assert g.actions is not None
                    sent = g.actions.step(g.frames(), g.steps)
                    g.requests += sent
                    result.requests += sent
                    if g.actions.age is not None:
                        g.staleness.append(g.actions.age)
                for g in playing:
                    assert g.actions is not None
                    g.step(g.actions.action, clock())
            result.steps += len(playing)
            tick += 1
            if screen.draws:
                if not overlay or tick % max(1, round(config.fps or 15)) == 0:
                    overlay = aggregate_overlay(result, client, n, clock())
                labels = [f"{g.index + 1}: {g.score:g}" for g in games]
                screens = [g.env.unwrapped.ale.getScreenRGB() for g in games]
                screen.draw_grid(screens, labels, overlay, tick)
            pace.wait()
        if not result.stopped_by_user:
            scores = evaluation_summary([s for g in games for s in g.finished_scores])
            screen.game_over([f"{n} games, mean score {scores.get('mean', 0):g}, max {scores.get('max', 0):g}"])
    except (InferenceError, KeyboardInterrupt, concurrent.futures.TimeoutError) as e:
        if isinstance(e, KeyboardInterrupt):
            result.stopped_by_user = True
        else:
            result.error = str(e) or f"no answer within {client.timeout + 1:g} s"
    finally:
        result.seconds = clock()
        for g in games:
            if not g.done:  # cut short: counts with what it scored so far, not as a finished episode
                if g.steps:
                    g.end_episode(result.seconds, finished=False)
                g.done, g.seconds = True, g.seconds or result.seconds
            result.episodes.extend(g.episodes)
            result.staleness.extend(g.staleness)
            g.env.close()
        result.steps = sum(e.steps for e in result.episodes)
        result.latency = client.stats.summary()
        screen.finish()
    return GamesResult(result, games)


def remote_games_main(client: InferenceClient, config: PlayConfig, n: int, json_path: str | None) -> int:
    """``src/app.py --games N`` once the client is connected and the game chosen (play_cli.remote_main)."""
    outcome = play_games(client, config, n)
    print(outcome.report(), flush=True)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(outcome.to_json(), f, indent=2)
    if outcome.aggregate.error:
        print(f"error: {outcome.aggregate.error} (play ended early; statistics above are up to then)", file=sys.stderr)
        return 1
    return 0
