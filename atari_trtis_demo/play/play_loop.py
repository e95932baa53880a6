"""The one play loop, for one game or many: each game its own env and policy, one window, one pace.

``game.play`` is one game of it and ``many_games.play_games`` N; the episode cap,
fallback, pace, statistics, JSON and the game-over screen are the same for every N.
Every game sends its own request per agent step (``Policy.q_values_async``: gRPC
futures for a remote policy), so Triton's dynamic batcher, not this client, forms the
batches. ``sync``: each game steps on its own answer, as soon as it is in;
asynchronous: each game keeps at most one request in flight, always made from its
newest frames, and plays its last answered action (NOOP until the first).

A server that is away (unreachable, no answer within the deadline, shutting down) is
ridden out for ``config.reconnect`` seconds: sync games wait, retrying at the pace,
with the window alive; async games play their last action. Any other failure ends
play with the statistics so far; a refused key is raised (one line, exit 2).
No Chainer here.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable

from atari_trtis_demo.core.envs import make_env, scale_observation
from atari_trtis_demo.play.grid_screen import GridScreen
from atari_trtis_demo.play.inference_client import BadResponse, InferenceError, RequestTimeout
from atari_trtis_demo.play.play_parts import Game, Outage, check_action_count, checked_action, overlay_lines
from atari_trtis_demo.play.play_result import CUT_SHORT, GAME_OVER_SECONDS, STEP_LIMIT, Pace, PlayConfig, PlayResult
from atari_trtis_demo.play.play_stats import LatencyStats
from atari_trtis_demo.play.policies import Policy
from atari_trtis_demo.play.screen import Screen, check_record_path
from atari_trtis_demo.play.web_address import PLAY_ON_EPISODES

WAIT_SLICE = 0.05  # a loop waiting for answers looks at the keys this often
OVERLAY_SECONDS = 1.0  # the many-game overlay's percentiles are recomputed this often (they cover every request)


class PlayLoop:
    """One session of play; :func:`play_games` runs it."""

    def __init__(self, policies: list[Policy], config: PlayConfig) -> None:
        self.config, self.n = config, len(policies)
        self.mode = "sync" if config.sync else "async"
        self.result = PlayResult(mode=self.mode, policy=policies[0].name)
        self.outage = Outage(config.reconnect, self.result.outage)
        # An answer older than the deadline is lost, also where the future would never resolve.
        self.deadline = None if config.request_timeout is None else config.request_timeout + 1.0
        self.games: list[Game] = []
        try:
            # Game i plays seeds seed + i * episodes onwards; a worker's share starts at first_game (play_workers).
            for i, policy in enumerate(policies, config.first_game):
                seed = config.seed + i * config.episodes
                env = make_env(
                    config.env_id,
                    train=False,
                    epsilon=config.epsilon,
                    seed=seed,
                    fire_on_life_loss=config.fire_on_life_loss,
                )
                self.games.append(Game(i, seed, env, policy, config.episodes, config.episode_cap))
            check_action_count(policies[0].name, policies[0].n_actions, self.games[0].env, config.env_id)
            options = dict(scale=config.rendering_scale, headless=config.headless, record=config.record)
            if config.web is not None:  # a page in the browser instead of a window, for 1 or N games
                from atari_trtis_demo.play.web_screen import WebScreen

                games = "" if self.n == 1 else f"{self.n} games, "
                title = f"{config.env_id}: {games}{policies[0].name}, {self.mode} inference"
                self.screen = WebScreen(title, config.web, record=config.record, screenshot=config.screenshot)
            elif self.n == 1:
                title = f"{config.env_id}: {policies[0].name}, {self.mode} inference"
                self.screen: Screen = Screen(title, screenshot=config.screenshot, **options)
            else:
                title = f"{config.env_id}: {self.n} games, {policies[0].name}, {self.mode} inference"
                self.screen = GridScreen(title, self.n, screenshot=config.screenshot, **options)
        except BaseException:
            self.close_envs()
            raise
        self.pace = Pace(config.fps)
        self.start = time.perf_counter()
        self.quit = False
        self.overlay: list[str] = []
        self.overlay_at = 0.0

    def clock(self) -> float:
        """Playing time: paused time does not count."""
        return time.perf_counter() - self.start - self.screen.paused_seconds

    def close_envs(self) -> None:
        for g in self.games:
            g.env.close()

    # -- answers -----------------------------------------------------------------------

    def take_answer(self, g: Game, now: float) -> int | None:
        """The action of ``g``'s finished request (None: none finished, or it failed and play rides it out)."""
        future = g.pending
        if future is None:
            return None
        if not future.done():
            if self.deadline is not None and now - g.asked_time > self.deadline:
                g.drop_request()
                self.outage.failed(RequestTimeout(f"{g.policy.name}: no answer within {self.deadline:g} s"), now)
            return None
        g.pending = None
        try:
            q = future.result()
        except InferenceError as e:
            self.outage.failed(e, now)
            return None
        except Exception as e:  # an answer the client itself could not read
            raise BadResponse(f"{g.policy.name}: unreadable answer ({type(e).__name__}: {e})") from None
        action = checked_action(q, g.policy.n_actions, g.policy.name)
        g.answered_at = g.asked_at
        self.outage.answered(now)
        return action

    def tick_sync(self, playing: list[Game]) -> None:
        now = time.monotonic()
        g = playing[0]
        if self.n == 1 and not self.outage.active and g.pending is None:
            # One game and a server that answers: a plain blocking call, the shortest round trip.
            g.requests += 1
            try:
                q = g.policy.q_values(scale_observation(g.obs))
            except InferenceError as e:
                self.outage.failed(e, time.monotonic())
                return
            except Exception as e:  # an answer the client itself could not read
                raise BadResponse(f"{g.policy.name}: unreadable answer ({type(e).__name__}: {e})") from None
            g.step(checked_action(q, g.policy.n_actions, g.policy.name), self.clock())
            return
        for g in playing:
            if g.pending is None:
                g.ask(now)
        waiting = playing
        while waiting:
            futures = [g.pending for g in waiting if g.pending is not None]
            concurrent.futures.wait(futures, timeout=WAIT_SLICE, return_when=concurrent.futures.FIRST_COMPLETED)
            now, still = time.monotonic(), []
            for g in waiting:
                action = self.take_answer(g, now)
                if action is not None:  # each game steps as soon as its own answer is in
                    g.step(action, self.clock())
                elif g.pending is not None:
                    still.append(g)
            waiting = still
            if waiting and self.screen.player_quit():  # the window stays alive while a server is slow or away
                self.quit = True
                return

    def tick_async(self, playing: list[Game]) -> None:
        now = time.monotonic()
        # Every game's request first, then every env step: the requests of one tick reach Triton together.
        for g in playing:
            action = self.take_answer(g, now)
            if action is not None:
                g.action = action
            if g.pending is None:
                g.ask(now)
            if g.answered_at is not None:
                g.staleness.append(g.steps - g.answered_at)
        for g in playing:
            g.step(g.action, self.clock())

    # -- the window --------------------------------------------------------------------

    def draw(self, tick: int) -> None:
        if not self.screen.draws:
            return
        steps = sum(e.steps for g in self.games for e in g.episodes) + sum(g.steps for g in self.games if not g.done)
        elapsed = max(self.clock(), 1e-9)
        away = None
        if self.outage.active:
            waited = time.monotonic() - (self.outage.since or 0.0)
            away = f"SERVER AWAY: waiting {waited:.0f} of {self.outage.limit:g} s"
        if self.n == 1:
            g = self.games[0]
            episode = f"{min(len(g.episodes) + 1, g.episodes_to_play)}"
            episode += f"/{g.episodes_to_play}" if g.episodes_to_play < PLAY_ON_EPISODES else ""
            overlay = overlay_lines(g.policy, self.mode, g.score, episode, steps / elapsed)
            warning = away or ("LOCAL FALLBACK" if g.policy.on_fallback else None)
            self.screen.draw(g.env.unwrapped.ale.getScreenRGB(), overlay, warning, tick)
            return
        if not self.overlay or time.monotonic() - self.overlay_at >= OVERLAY_SECONDS:
            self.overlay_at = time.monotonic()
            lat = LatencyStats.merged([g.policy.latency for g in self.games]).summary()
            requests = sum(g.requests for g in self.games)
            self.overlay = [
                f"{self.n} games   {steps / elapsed / self.n:.1f} steps/s per game   {self.mode.upper()}",
                f"{requests / elapsed:.0f} requests/s   rtt p50 {lat['median_ms']:.1f} ms   p99 {lat['p99_ms']:.1f} ms",
            ]
        overlay = self.overlay[:1] + [away] if away else self.overlay
        screens = [g.env.unwrapped.ale.getScreenRGB() for g in self.games]
        labels = [f"{g.index + 1}: {g.score:g}" for g in self.games]
        self.screen.draw_grid(screens, labels, overlay, tick)  # type: ignore[attr-defined]

    def game_over(self) -> None:
        ended_by_cap = all(g.episodes and g.episodes[-1].end == STEP_LIMIT for g in self.games)
        headline = "STEP LIMIT REACHED" if ended_by_cap else "GAME OVER"
        if self.n == 1:
            episodes = self.games[0].episodes
            lines = [f"final score {episodes[-1].score:g}" if episodes else "final score 0"]
            if len(episodes) > 1:
                lines.append("episodes: " + ", ".join(f"{e.score:g}" for e in episodes))
        else:
            ev = self.result.evaluation
            lines = [f"{self.n} games, mean score {ev.get('mean', 0):g}, max {ev.get('max', 0):g}"]
        seconds = self.config.game_over_seconds
        if seconds is None:  # no wait where no key can come (SDL's dummy or offscreen driver)
            seconds = GAME_OVER_SECONDS if self.screen.keys_can_come else 0.0
        self.screen.game_over(headline, lines, seconds)

    # -- the session -------------------------------------------------------------------

    def play(self) -> None:
        tick = 0
        try:
            for g in self.games:
                if g.obs is None:  # a worker resets its games before the common start (play_workers)
                    g.start_episode()
            self.start = time.perf_counter()  # the first step starts the clock: N seeded resets are not play
            while playing := [g for g in self.games if not g.done]:
                if self.screen.player_quit():
                    self.quit = True
                self.outage.check(time.monotonic())
                if not self.quit:
                    (self.tick_sync if self.config.sync else self.tick_async)(playing)
                if self.quit:
                    self.result.stopped_by_user = True
                    break
                tick += 1
                self.draw(tick)
                if self.outage.active and not self.pace.period:
                    time.sleep(WAIT_SLICE)  # unpaced: no busy loop of retries against a server that is away
                self.pace.wait()
        except KeyboardInterrupt:
            self.result.stopped_by_user = True
        except InferenceError as e:  # a refused key is a UserError: it ends play as the usage error it is
            self.result.error = str(e)

    def summarise(self) -> PlayResult:
        r = self.result
        r.seconds = self.clock()
        self.outage.close(time.monotonic())
        for g in self.games:
            if not g.done:  # cut short: counts with what it scored so far, not as a finished episode
                if g.steps:
                    g.end_episode(r.seconds, CUT_SHORT)
                g.done, g.seconds = True, g.seconds or r.seconds
            r.episodes.extend(g.episodes)
            r.staleness.extend(g.staleness)
        r.games = self.games
        r.steps = sum(e.steps for e in r.episodes)
        r.requests = sum(g.requests for g in self.games)
        # Round trips as of now, once: an async answer may still land after play ended, and the
        # games' figures must add up to the whole's (games sharing a policy's stats count them once).
        frozen = {id(g.policy.latency): LatencyStats.merged([g.policy.latency]) for g in self.games}
        for g in self.games:
            g.latency = frozen[id(g.policy.latency)].summary()
        r.latency = LatencyStats.merged(list(frozen.values())).summary()
        r.fallback_switches = max(g.policy.fallback_switches for g in self.games)
        return r


def play_games(
    policies: list[Policy], config: PlayConfig, announce: Callable[[PlayResult], None] | None = None
) -> PlayResult:
    """Play ``config.episodes`` episodes in each of ``len(policies)`` games at once, game ``i`` on ``policies[i]``.

    Stops early on Esc/Q, a closed window, Ctrl-C or a failure that is not ridden out.
    ``announce`` gets the statistics as soon as play ends, before the game-over screen
    (which stays ``config.game_over_seconds``, or until a key, where a key can come).
    """
    check_record_path(config.record)
    loop = PlayLoop(policies, config)
    try:
        loop.play()
        result = loop.summarise()
        if announce is not None:
            announce(result)
        if not result.stopped_by_user and not result.error:
            try:
                loop.game_over()
            except KeyboardInterrupt:
                pass
        return result
    finally:
        loop.screen.finish()
        loop.close_envs()
