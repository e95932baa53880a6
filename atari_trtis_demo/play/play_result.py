"""What a play session is asked to do (:class:`PlayConfig`) and what it reports (:class:`PlayResult`).

One shape for every number of games: the aggregate figures, one entry per game, the
scores of the finished episodes summarised as ChainerRL's evaluator does, and the
time the server was away. No Chainer, no pygame.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from atari_trtis_demo.core.atari_wrappers import EVAL_EPSILON
from atari_trtis_demo.core.cli_args import float_in, int_in, output_file
from atari_trtis_demo.core.contract import DEFAULT_ENV_ID, EVALUATION_EPISODE_CAP
from atari_trtis_demo.core.typed_flags import flag
from atari_trtis_demo.play.play_stats import staleness_buckets, staleness_summary
from atari_trtis_demo.play.screen import DEFAULT_SCALE

# The Atari's own pace: 60 frames/s, and one agent step is 4 frames (action repeat).
REAL_TIME_FPS = 15.0
# How long a player rides out a server that is away, by default (--reconnect).
RECONNECT_SECONDS = 30.0
# The remote player's per-request deadline, by default (--timeout).
REQUEST_TIMEOUT_SECONDS = 5.0
# How long the game-over screen stays where a key can come, by default (--game-over-seconds).
GAME_OVER_SECONDS = 10.0

# How an episode ended (EpisodeStats.end).
TERMINATED, TRUNCATED, STEP_LIMIT, CUT_SHORT = "terminated", "truncated", "step limit", "cut short"


@dataclass
class PlayConfig:
    """What both players are asked to do; each field with a flag is that flag's one definition (play_cli)."""

    # --env unset parses as None: the command sets the model's own game, else DEFAULT_ENV_ID.
    env_id: str | None = flag(
        DEFAULT_ENV_ID,
        "--env",
        unset=None,
        help=f"the game (default: the model's own, else {DEFAULT_ENV_ID} if it records none)",
    )
    # Parsed as None when not given: play_cli resolves it (1; with --web and no --max-steps, play on).
    episodes: int = flag(
        1,
        type=int_in(1),
        unset=None,
        help="whole games to play (all lives); with --web and no --max-steps, until stopped (default: 1)",
    )
    # None: the evaluation cap, EVALUATION_EPISODE_CAP (episode_cap)
    max_steps: int | None = flag(
        None,
        type=int_in(1),
        help=f"cap on agent steps per episode (default: {EVALUATION_EPISODE_CAP}, the cap of the reproduction's "
        "evaluation: 5 minutes of play)",
    )
    # The remote player's --sync; the standalone player declares its own (--sync/--async, on by default).
    sync: bool = flag(False, action="store_true", help="wait for each action (default: asynchronous inference)")
    headless: bool = flag(False, action="store_true", help="no window (servers, tests, benchmarks)")
    fps: float = flag(
        REAL_TIME_FPS,
        type=float_in(0, 10000),
        help="agent steps per second, window and headless alike (default: 15, the Atari's own pace, 60 frames/s "
        "with 4 frames a step; 0: as fast as possible, and async play then applies actions as many steps old "
        "as fit into one round trip)",
    )
    rendering_scale: float = flag(
        DEFAULT_SCALE,
        "--rendering_scale",
        type=float_in(0.5, 16),
        metavar="SCALE",
        help="size of the game in the window: each Atari pixel drawn SCALE x SCALE (160x210 at 1, 480x630 at 3; "
        "0.5 to 16, fractions allowed)",
    )
    seed: int = flag(0, type=int_in(0, 2**31 - 1), help="seeds the emulator, the no-op starts and the random actions")
    epsilon: float = flag(EVAL_EPSILON, type=float_in(0, 1), help="fraction of random actions, as the original")
    record: str | None = flag(None, type=output_file, help="write the gameplay to FILE.gif (or .mp4)")
    screenshot: str | None = flag(None, type=output_file, help="save the last window image to FILE.png")
    # FIRE at the start and after each lost life (envs.FireOnLifeLoss)
    fire_on_life_loss: bool = flag(
        False,
        action="store_true",
        help="press FIRE at the start and after each lost life, so that a barely trained agent's Breakout serves "
        "(an action override, not preprocessing; see docs/deviations.md)",
    )
    # 0: the first failed request ends play. A remote-only flag, like --timeout.
    reconnect: float = flag(
        RECONNECT_SECONDS,
        type=float_in(0, 86400),
        help="while the server is away, play on (sync waits, async plays its last action) for up to SECONDS, then "
        "end with exit code 1 (default: 30; 0: end at the first failed request)",
        metavar="SECONDS",
    )
    # A remote policy's per-request deadline: an answer older is lost. None: no deadline (tests, the local player).
    request_timeout: float | None = flag(
        None,
        "--timeout",
        unset=REQUEST_TIMEOUT_SECONDS,
        type=float_in(0, 600, low_open=True),
        metavar="SECONDS",
        help="how long one request may wait for its answer",
    )
    # None: GAME_OVER_SECONDS where a key can come, else 0
    game_over_seconds: float | None = flag(
        None,
        type=float_in(0, 3600),
        metavar="SECONDS",
        help=f"how long the window stays on the game-over screen unless a key is pressed (default: "
        f"{GAME_OVER_SECONDS:g} in a window; 0 where no key can come: --headless, SDL's dummy or offscreen driver)",
    )
    json: str | None = flag(None, type=output_file, help="write the statistics to FILE.json")
    # None: the pygame window (or none, --headless). Checked with its key by web_address.parse_web_address.
    web: str | None = flag(
        None,
        metavar="[HOST:]PORT",
        help="no window: show the game (the grid of --games N) as a page at http://HOST:PORT/ (HOST: 127.0.0.1 "
        "unless given; another needs ATARI_DEMO_KEY; PORT 0: a free one), and play on until stopped unless "
        "--episodes or --max-steps",
    )
    # Not a flag: the index of the first game played in this process (a worker's share: play_workers).
    first_game: int = 0

    @property
    def episode_cap(self) -> int:
        return self.max_steps or EVALUATION_EPISODE_CAP


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
    round_trips: Any = None  # play_stats.LatencyStats of every wave, for a worker's report
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
