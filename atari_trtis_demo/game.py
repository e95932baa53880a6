"""The one game loop of both players: the ALE game, a policy for the actions, a screen.

Only where the Q-values come from differs between ``src/app.py`` (a server, through
:class:`~atari_trtis_demo.policies.RemotePolicy`) and ``standalone_src/app.py``
(Chainer, :class:`~atari_trtis_demo.policies.LocalChainerPolicy`). The game is the
same env and preprocessing as training (:func:`envs.make_env`), so the model sees
exactly what it saw there. This module imports no Chainer.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from atari_trtis_demo.envs import DEFAULT_ENV_ID, GameScore, find_wrapper, make_env, scale_observation
from atari_trtis_demo.errors import UserError
from atari_trtis_demo.inference_client import InferenceError
from atari_trtis_demo.play_stats import staleness_buckets, staleness_summary
from atari_trtis_demo.policies import Policy
from atari_trtis_demo.screen import Screen, check_record_path

# The Atari's own pace: 60 frames/s, and one agent step is 4 frames (action repeat).
REAL_TIME_FPS = 15.0


@dataclass
class PlayConfig:
    env_id: str = DEFAULT_ENV_ID
    episodes: int = 1
    max_steps: int | None = None
    sync: bool = False
    headless: bool = False
    fps: float = REAL_TIME_FPS
    rendering_scale: float = 3.0
    seed: int = 0
    epsilon: float = 0.05
    record: str | None = None
    screenshot: str | None = None


@dataclass
class EpisodeStats:
    score: float
    steps: int
    ale_score: float  # the emulator's own sum of rewards (GameScore wrapper): a cross-check


@dataclass
class PlayResult:
    mode: str
    policy: str
    episodes: list[EpisodeStats] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    requests: int = 0
    latency: dict[str, float] = field(default_factory=dict)
    staleness: list[int] = field(default_factory=list)
    fallback_switches: int = 0
    error: str | None = None
    stopped_by_user: bool = False

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else 0.0

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
            "staleness_steps": staleness_summary(self.staleness),
            "fallback_switches": self.fallback_switches,
            "error": self.error,
            "stopped_by_user": self.stopped_by_user,
        }

    def report(self) -> str:
        lines = [f"{self.mode} play with {self.policy}"]
        for i, e in enumerate(self.episodes, 1):
            lines.append(f"  episode {i}: score {e.score:g}, {e.steps} steps")
        lat = self.latency
        lines.append(
            f"  requests {self.requests}, latency mean {lat.get('mean_ms', 0):.2f} ms, "
            f"median {lat.get('median_ms', 0):.2f} ms, p99 {lat.get('p99_ms', 0):.2f} ms"
        )
        lines.append(f"  {self.steps} agent steps in {self.seconds:.1f} s: {self.steps_per_second:.1f} steps/s")
        if self.staleness:
            s = staleness_summary(self.staleness)
            lines.append(
                f"  staleness of applied actions (agent steps): mean {s['mean']:.2f}, p50 {s['p50']:g}, "
                f"p99 {s['p99']:g}, max {s['max']}; histogram {staleness_buckets(self.staleness)}"
            )
        if self.fallback_switches:
            lines.append(f"  fell back to local inference {self.fallback_switches} time(s)")
        return "\n".join(lines)


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


class AsyncActions:
    """Asynchronous inference for one game: at most one request in flight, always on the newest stack.

    The agent plays the last answered action (NOOP, action 0, until the first answer);
    :attr:`age` is how many agent steps old the stack behind it was.
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.action = 0
        self.age: int | None = None
        self._pending: concurrent.futures.Future | None = None
        self._asked_at = 0
        self._answered_at: int | None = None

    def step(self, frames: np.ndarray, step: int) -> bool:
        """Take a finished answer, ask again if nothing is in flight; True when a request was sent."""
        if self._pending is not None and self._pending.done():
            self.action = int(np.argmax(self._pending.result()))
            self._answered_at, self._pending = self._asked_at, None
        sent = self._pending is None
        if sent:
            self._pending, self._asked_at = self.policy.q_values_async(frames), step
        self.age = None if self._answered_at is None else step - self._answered_at
        return sent

    def cancel(self) -> None:
        """Drop the request in flight (the episode is over; its answer is of no use)."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None


def check_action_count(player: str, n_actions: int, env: Any, env_id: str) -> None:
    """A model must have one Q-value per action of the game it plays: one line naming both when not."""
    if env.action_space.n != n_actions:
        raise UserError(
            f"{player} has {n_actions} actions but {env_id} has {env.action_space.n}: "
            "serve or load a model trained on this game (--env)"
        )


def overlay_lines(policy: Policy, mode: str, score: float, episode: str, steps_per_second: float) -> list[str]:
    """The two lines at the bottom of the window: the game, then the inference."""
    latency = policy.latency.last_ms
    if policy.on_fallback:
        rtt = "rtt - (server down)"  # the last server round trip is not news
    else:
        rtt = "rtt -" if latency is None else f"rtt {latency:.1f} ms"
    return [f"score {score:g}   episode {episode}", f"{steps_per_second:.0f} steps/s   {rtt}   {mode.upper()}"]


def play(policy: Policy, config: PlayConfig) -> PlayResult:
    """Play ``config.episodes`` games; stops early on Esc/Q, a closed window, Ctrl-C or a policy error.

    In the window, P or Space pauses; after the last episode the window stays on a
    game-over screen until a key is pressed or it is closed.
    """
    check_record_path(config.record)
    env = make_env(config.env_id, train=False, epsilon=config.epsilon, seed=config.seed)
    check_action_count(policy.name, policy.n_actions, env, config.env_id)
    score_keeper = find_wrapper(env, GameScore)
    mode = "sync" if config.sync else "async"
    result = PlayResult(mode=mode, policy=policy.name)
    screen = Screen(
        f"{config.env_id}: {policy.name}, {mode} inference",
        scale=config.rendering_scale,
        headless=config.headless,
        record=config.record,
        screenshot=config.screenshot,
    )
    pace = Pace(config.fps)
    start, end = time.perf_counter(), None
    score, steps = 0.0, 0
    try:
        for episode in range(config.episodes):
            obs, _ = env.reset(seed=config.seed + episode)
            score, steps = 0.0, 0
            actions = AsyncActions(policy)
            while config.max_steps is None or steps < config.max_steps:
                if screen.player_quit():
                    result.stopped_by_user = True
                    break
                frames = scale_observation(obs)
                if config.sync:
                    action = int(np.argmax(policy.q_values(frames)))
                    result.requests += 1
                else:
                    result.requests += actions.step(frames, steps)
                    action = actions.action
                    if actions.age is not None:
                        result.staleness.append(actions.age)
                obs, reward, terminated, truncated, _ = env.step(action)
                score += float(reward)
                steps += 1
                rate = (result.steps + steps) / max(time.perf_counter() - start - screen.paused_seconds, 1e-9)
                overlay = overlay_lines(policy, mode, score, f"{episode + 1}/{config.episodes}", rate)
                warning = "LOCAL FALLBACK" if policy.on_fallback else None
                screen.draw(env.unwrapped.ale.getScreenRGB(), overlay, warning, steps)
                pace.wait()
                if terminated or truncated:
                    break
            actions.cancel()
            result.episodes.append(EpisodeStats(score, steps, score_keeper.score))
            result.steps += steps
            if result.stopped_by_user:
                break
        end = time.perf_counter()
        if not result.stopped_by_user:
            scores = ", ".join(f"{e.score:g}" for e in result.episodes)
            screen.game_over([f"final score {score:g}"] + ([f"episodes: {scores}"] if config.episodes > 1 else []))
    except (InferenceError, KeyboardInterrupt) as e:
        if isinstance(e, InferenceError):
            result.error = str(e)
        else:
            result.stopped_by_user = True
        if steps:  # the episode cut short counts with what it scored so far
            result.episodes.append(EpisodeStats(score, steps, score_keeper.score))
            result.steps += steps
    finally:
        result.seconds = (end or time.perf_counter()) - start - screen.paused_seconds
        result.latency = policy.latency.summary()
        result.fallback_switches = policy.fallback_switches
        screen.finish()
        env.close()
    return result


def write_json(path: str, result: PlayResult) -> None:
    with open(path, "w") as f:
        json.dump(result.to_json(), f, indent=2)
