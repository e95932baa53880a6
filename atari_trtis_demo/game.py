"""The one game loop of both players: the ALE game, a policy for the actions, a pygame window.

Only where the Q-values come from differs between ``src/app.py`` (a server, through
:class:`RemotePolicy`) and ``standalone_src/app.py`` (Chainer, :class:`LocalChainerPolicy`).
The game is the same env and preprocessing as training (:func:`envs.make_env`), so the
model sees exactly what it saw there. This module imports no Chainer; the local policy
imports it when it is built.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from atari_trtis_demo.envs import GameScore, RandomizeAction, find_wrapper, make_env, scale_observation
from atari_trtis_demo.errors import UserError
from atari_trtis_demo.inference_client import InferenceClient, InferenceError, LatencyStats

logger = logging.getLogger(__name__)
ATARI_SIZE = (160, 210)  # width, height of the ALE screen
RECORD_EVERY = 2  # agent steps per recorded GIF frame: keeps files small
FALLBACK_PROBE_SECONDS = 2.0


class Policy(Protocol):
    """Where the Q-values come from."""

    name: str
    n_actions: int
    latency: LatencyStats

    def q_values(self, frames: np.ndarray) -> np.ndarray:
        """Q-values (n_actions,) for one scaled (4, 84, 84) float32 stack; waits."""

    def q_values_async(self, frames: np.ndarray) -> concurrent.futures.Future:
        """The same, without waiting."""


class RemotePolicy:
    """Q-values from a KServe v2 server (Triton) through :class:`InferenceClient`."""

    def __init__(self, client: InferenceClient) -> None:
        self.client = client
        self.name = f"remote {client.address} model '{client.model}'"
        self.n_actions = client.n_actions
        self.latency = client.stats

    def q_values(self, frames: np.ndarray) -> np.ndarray:
        return self.client.infer(frames)

    def q_values_async(self, frames: np.ndarray) -> concurrent.futures.Future:
        return self.client.infer_async(frames)


class LocalChainerPolicy:
    """Q-values from the agent directory's Nature DQN, run by Chainer in this process."""

    def __init__(self, model_dir: str) -> None:
        from atari_trtis_demo.agent import greedy_q_values, load_q_function

        self._forward = greedy_q_values
        self.q_function, self.n_actions = load_q_function(model_dir)
        self.name = f"local Chainer {model_dir}"
        self.latency = LatencyStats()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-policy")

    def q_values(self, frames: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        q = self._forward(self.q_function, frames[None])[0]
        self.latency.record(time.perf_counter() - start)
        return q

    def q_values_async(self, frames: np.ndarray) -> concurrent.futures.Future:
        return self._executor.submit(self.q_values, frames)


class FallbackPolicy:
    """The primary (remote) policy, or the local one while the primary fails.

    After a failure every call goes to the fallback; every ``probe_seconds`` one
    synchronous call tries the primary again, and play returns to it when it answers.
    """

    def __init__(self, primary: Policy, fallback: Policy, probe_seconds: float = FALLBACK_PROBE_SECONDS) -> None:
        self.primary, self.fallback = primary, fallback
        self.name = primary.name
        self.n_actions = primary.n_actions
        self.latency = primary.latency
        self.probe_seconds = probe_seconds
        self.active = False
        self.switches = 0
        self._next_probe = 0.0

    def _fail(self, error: Exception) -> None:
        if not self.active:
            self.active, self.switches = True, self.switches + 1
            logger.warning("%s; playing on with local inference (%s)", error, self.fallback.name)
            print(f"warning: {error}; playing on with local inference", flush=True)
        self._next_probe = time.monotonic() + self.probe_seconds

    def _probe(self, frames: np.ndarray) -> np.ndarray | None:
        try:
            q = self.primary.q_values(frames)
        except InferenceError as e:
            self._fail(e)
            return None
        self.active = False
        logger.warning("the server answers again: back to remote inference")
        print("the server answers again: back to remote inference", flush=True)
        return q

    def q_values(self, frames: np.ndarray) -> np.ndarray:
        if self.active:
            if time.monotonic() >= self._next_probe and (q := self._probe(frames)) is not None:
                return q
            return self.fallback.q_values(frames)
        try:
            return self.primary.q_values(frames)
        except InferenceError as e:
            self._fail(e)
            return self.fallback.q_values(frames)

    def q_values_async(self, frames: np.ndarray) -> concurrent.futures.Future:
        if self.active:
            if time.monotonic() >= self._next_probe and (q := self._probe(frames)) is not None:
                done: concurrent.futures.Future = concurrent.futures.Future()
                done.set_result(q)
                return done
            return self.fallback.q_values_async(frames)
        try:
            future = self.primary.q_values_async(frames)
        except InferenceError as e:
            self._fail(e)
            return self.fallback.q_values_async(frames)
        result: concurrent.futures.Future = concurrent.futures.Future()

        def settle(f: concurrent.futures.Future) -> None:
            error = f.exception()
            if error is None:
                result.set_result(f.result())
            elif isinstance(error, InferenceError):
                self._fail(error)
                local = self.fallback.q_values_async(frames)
                local.add_done_callback(lambda g: _copy_future(g, result))
            else:
                result.set_exception(error)

        future.add_done_callback(settle)
        return result


def _copy_future(source: concurrent.futures.Future, target: concurrent.futures.Future) -> None:
    error = source.exception()
    if error is None:
        target.set_result(source.result())
    else:
        target.set_exception(error)


@dataclass
class PlayConfig:
    env_id: str = "BreakoutNoFrameskip-v4"
    episodes: int = 1
    max_steps: int | None = None
    sync: bool = False
    headless: bool = False
    fps: float = 60.0
    rendering_scale: int = 3
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

    def staleness_summary(self) -> dict[str, Any]:
        if not self.staleness:
            return {}
        s = np.array(self.staleness)
        return {
            "mean": float(s.mean()),
            "p50": float(np.percentile(s, 50)),
            "p99": float(np.percentile(s, 99)),
            "max": int(s.max()),
            "histogram": {str(k): v for k, v in sorted(Counter(self.staleness).items())},
        }

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
            "staleness_steps": self.staleness_summary(),
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
            s = self.staleness_summary()
            lines.append(
                f"  staleness of applied actions (agent steps): mean {s['mean']:.2f}, p50 {s['p50']:g}, "
                f"p99 {s['p99']:g}, max {s['max']}; histogram {staleness_buckets(self.staleness)}"
            )
        if self.fallback_switches:
            lines.append(f"  fell back to local inference {self.fallback_switches} time(s)")
        return "\n".join(lines)


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


class Screen:
    """The pygame window (or, headless, an off-screen surface) with the overlay.

    Headless play draws only when a recording or screenshot needs the pixels.
    """

    def __init__(self, config: PlayConfig) -> None:
        self.config = config
        self.scale = config.rendering_scale
        self.draws = not config.headless or bool(config.record or config.screenshot)
        self.frames: list[np.ndarray] = []
        self.surface = None
        if not self.draws:
            return
        if config.headless:
            os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        import pygame

        self.pygame = pygame
        if not config.headless:
            pygame.display.init()
        pygame.font.init()
        size = (ATARI_SIZE[0] * self.scale, ATARI_SIZE[1] * self.scale)
        if config.headless:
            self.surface = pygame.Surface(size)
        else:
            self.surface = pygame.display.set_mode(size)
            pygame.display.set_caption(f"{config.env_id}: {'sync' if config.sync else 'async'} inference")
        self.font = pygame.font.Font(None, max(16, 8 * self.scale))
        self.clock = pygame.time.Clock()

    def closed(self) -> bool:
        """Whether the user closed the window (events are pumped here)."""
        if not self.draws or self.config.headless:
            return False
        return any(event.type == self.pygame.QUIT for event in self.pygame.event.get())

    def draw(self, rgb: np.ndarray, overlay: list[str], warning: str | None, step: int) -> None:
        if not self.draws:
            return
        pg = self.pygame
        game = pg.surfarray.make_surface(rgb.swapaxes(0, 1))
        pg.transform.scale(game, self.surface.get_size(), self.surface)
        # The overlay sits at the bottom, below the paddle, where the game draws nothing.
        labels = [
            self.font.render(text, True, (255, 80, 80) if text == warning else (255, 255, 255), (0, 0, 0))
            for text in overlay + ([warning] if warning else [])
        ]
        y = self.surface.get_height() - sum(label.get_height() for label in labels) - 2
        for label in labels:
            self.surface.blit(label, (4, y))
            y += label.get_height()
        if self.config.record and step % RECORD_EVERY == 0:
            self.frames.append(pg.surfarray.array3d(self.surface).swapaxes(0, 1))
        if not self.config.headless:
            pg.display.flip()
            if self.config.fps > 0:
                self.clock.tick(self.config.fps)

    def finish(self) -> None:
        if not self.draws:
            return
        if self.config.screenshot:
            self.pygame.image.save(self.surface, self.config.screenshot)
        if self.config.record and self.frames:
            # Real time: 60 emulator frames/s are 15 agent steps/s.
            write_recording(self.config.record, self.frames, fps=15 / RECORD_EVERY)
        self.pygame.quit()


def write_recording(path: str, frames: list[np.ndarray], fps: float) -> None:
    import imageio.v2 as imageio

    if path.lower().endswith(".gif"):
        imageio.mimsave(path, frames, duration=1000 / fps, loop=0)
    else:
        imageio.mimsave(path, frames, fps=fps)


def check_record_path(path: str | None) -> None:
    """``--record`` takes .gif (imageio), or .mp4 when imageio-ffmpeg is installed."""
    if not path:
        return
    if path.lower().endswith(".mp4"):
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError as e:
            raise UserError(
                f"--record {path}: .mp4 needs imageio-ffmpeg (pip install imageio-ffmpeg); or use .gif"
            ) from e
    elif not path.lower().endswith(".gif"):
        raise UserError(f"--record {path}: use a .gif or .mp4 file name")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UserError(f"--record {path}: directory {parent} does not exist")


def play(policy: Policy, config: PlayConfig) -> PlayResult:
    """Play ``config.episodes`` games; stops early on a closed window, Ctrl-C or a policy error."""
    check_record_path(config.record)
    env = make_env(config.env_id, train=False, epsilon=config.epsilon)
    if env.action_space.n != policy.n_actions:
        raise UserError(
            f"{policy.name} has {policy.n_actions} actions but {config.env_id} has {env.action_space.n}: "
            "serve or load a model trained on this game (--env)"
        )
    find_wrapper(env, RandomizeAction).rng = np.random.default_rng(config.seed)
    score_keeper = find_wrapper(env, GameScore)
    mode = "sync" if config.sync else "async"
    result = PlayResult(mode=mode, policy=policy.name)
    screen = Screen(config)
    start = time.perf_counter()
    score, steps = 0.0, 0
    try:
        for episode in range(config.episodes):
            obs, _ = env.reset(seed=config.seed + episode)
            score, steps = 0.0, 0
            action, pending, pending_step, source_step = 0, None, 0, None
            while config.max_steps is None or steps < config.max_steps:
                if screen.closed():
                    result.stopped_by_user = True
                    break
                frames = scale_observation(obs)
                if config.sync:
                    action = int(np.argmax(policy.q_values(frames)))
                    result.requests += 1
                else:
                    # At most one request in flight, always on the newest stack; until
                    # the first answer the agent plays NOOP (action 0).
                    if pending is not None and pending.done():
                        action, source_step, pending = int(np.argmax(pending.result())), pending_step, None
                    if pending is None:
                        pending, pending_step = policy.q_values_async(frames), steps
                        result.requests += 1
                    if source_step is not None:
                        result.staleness.append(steps - source_step)
                obs, reward, terminated, truncated, _ = env.step(action)
                score += float(reward)
                steps += 1
                fallback = isinstance(policy, FallbackPolicy) and policy.active
                latency = policy.latency.last_ms
                overlay = [
                    f"score {score:g}   episode {episode + 1}/{config.episodes}",
                    f"{steps / max(time.perf_counter() - start, 1e-9):.0f} steps/s   "
                    f"rtt {latency:.1f} ms   {mode.upper()}"
                    if latency is not None
                    else f"rtt -   {mode.upper()}",
                ]
                screen.draw(env.unwrapped.ale.getScreenRGB(), overlay, "LOCAL FALLBACK" if fallback else None, steps)
                if terminated or truncated:
                    break
            if pending is not None:
                pending.cancel()
            result.episodes.append(EpisodeStats(score, steps, score_keeper.score))
            result.steps += steps
            if result.stopped_by_user:
                break
    except (InferenceError, KeyboardInterrupt) as e:
        if isinstance(e, InferenceError):
            result.error = str(e)
        else:
            result.stopped_by_user = True
        if steps:  # the episode cut short counts with what it scored so far
            result.episodes.append(EpisodeStats(score, steps, score_keeper.score))
            result.steps += steps
    finally:
        result.seconds = time.perf_counter() - start
        result.latency = policy.latency.summary()
        if isinstance(policy, FallbackPolicy):
            result.fallback_switches = policy.switches
        screen.finish()
        env.close()
    return result


def write_json(path: str, result: PlayResult) -> None:
    with open(path, "w") as f:
        json.dump(result.to_json(), f, indent=2)
