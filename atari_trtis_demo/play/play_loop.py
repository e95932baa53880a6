"""The one play loop, for one game or many: banks of games, one wave of requests per bank and step, one window.

The games step in banks (``core.game_banks``): one game alone in the wrappers' env
(the emulator's own screen, today's path), many games :data:`BANK_SIZE` at a time in
ale-py's vector env, a C++ thread per bank. Each bank asks the server once per step
for all its games that play on (a wave: one request, or as few as the model's batch
limit allows) and gives each game the action of its own row; while one bank's wave is
on the server, another's emulators step.

``sync``: a bank steps on its wave's answer; several banks ask again as soon as their
new frames are in (the answer is then ready for the next tick), one bank asks with a
plain blocking call at the start of the tick; asynchronous: each bank keeps at
most one wave in flight, always made from its newest frames, and its games play their
last answered action (NOOP until the first).

A server that is away (unreachable, no answer within the deadline, shutting down) is
ridden out for ``config.reconnect`` seconds: sync banks wait, asking again at the pace,
with the window alive; async games play their last action. Any other failure ends play
with the statistics so far; a refused key is raised (one line, exit 2).
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from atari_trtis_demo.client.errors import BadResponse, InferenceError, RequestTimeout
from atari_trtis_demo.client.latency import LatencyStats
from atari_trtis_demo.core.game_banks import BANK_SIZE, GameBank, VectorGames, WrappedGames, bank_sizes
from atari_trtis_demo.core.game_id import check_action_count
from atari_trtis_demo.play.banks import Bank
from atari_trtis_demo.play.games import Game
from atari_trtis_demo.play.grid_screen import GridScreen
from atari_trtis_demo.play.outage import Outage
from atari_trtis_demo.play.overlay import Overlay, game_over_lines
from atari_trtis_demo.play.pace import Pace
from atari_trtis_demo.play.play_config import GAME_OVER_SECONDS, PlayConfig
from atari_trtis_demo.play.play_result import CUT_SHORT, STEP_LIMIT, PlayResult, cpu_seconds
from atari_trtis_demo.play.policies import Policy
from atari_trtis_demo.play.screen import Screen, View

if TYPE_CHECKING:
    import numpy as np

    from atari_trtis_demo.play.web_screen import WebScreen

WAIT_SLICE = 0.05  # a loop waiting for answers looks at the keys this often


def make_screen(
    title: str, n: int, *, scale: float, headless: bool, record: str | None, screenshot: str | None, web: str | None
) -> Screen | WebScreen:
    """The window of one game, or the grid of ``n`` (headless: an off-screen surface, drawn only when needed);
    with ``web``, the page at that address instead of a window, for one game or many."""
    if web is not None:  # aiohttp loads only here: a player without --web never imports it
        from atari_trtis_demo.play.web_screen import WebScreen

        return WebScreen(title, web, record=record, screenshot=screenshot)
    if n == 1:
        return Screen(title, scale=scale, headless=headless, record=record, screenshot=screenshot)
    return GridScreen(title, n, scale=scale, headless=headless, record=record, screenshot=screenshot)


class PlayLoop:
    """One session of play; :func:`play_games` runs it."""

    def __init__(self, policy: Policy, n: int, config: PlayConfig) -> None:
        self.policy, self.config, self.n = policy, config, n
        self.mode = "sync" if config.sync else "async"
        self.result = PlayResult(mode=self.mode, policy=policy.name)
        self.outage = Outage(config.reconnect, self.result.outage)
        # An answer older than the deadline is lost, also where the future would never resolve.
        self.deadline = None if config.request_timeout is None else config.request_timeout + 1.0
        # Game i plays seeds seed + i * episodes onwards; a worker's share starts at first_game (play_workers).
        first = config.first_game
        self.games = [
            Game(i, config.seed + i * config.episodes, config.episodes, config.episode_cap)
            for i in range(first, first + n)
        ]
        what = f"{n} games, " if n > 1 else ""
        title = f"{config.env_id}: {what}{policy.name}, {self.mode} inference"
        self.screen = make_screen(
            title, n, scale=config.rendering_scale, headless=config.headless, record=config.record,
            screenshot=config.screenshot, web=config.web,
        )  # fmt: skip
        self.banks: list[Bank] = []
        self.round_trips = LatencyStats()  # every wave's, recorded as the loop takes its answer
        try:
            self.make_banks()
        except BaseException:
            self.close()
            raise
        self.pace = Pace(config.fps)
        self.start = time.perf_counter()
        self.quit = False
        self.started = False
        self.overlay = Overlay()
        self.cpu_start = cpu_seconds()

    # -- start-up ----------------------------------------------------------------------

    def progress(self, what: str, done: int, since: float) -> None:
        """One line per bank while many games start (ROM loads: about 0.1 s a game), and the window's keys."""
        if self.n > BANK_SIZE:
            elapsed = time.monotonic() - since
            eta = elapsed / max(done, 1) * (self.n - done)
            print(f"{what} {self.n} games: {done}/{self.n}, {elapsed:.0f} s, about {eta:.0f} s left", flush=True)
        if self.screen.player_quit():
            raise KeyboardInterrupt

    def make_banks(self) -> None:
        config, since, offset = self.config, time.monotonic(), 0
        for size in bank_sizes(self.n):
            games = self.games[offset : offset + size]
            seeds = [g.seed for g in games]
            kind = VectorGames if self.n > 1 else WrappedGames
            envs: GameBank = kind(
                config.env_id, size, epsilon=config.epsilon, seeds=seeds, fire_on_life_loss=config.fire_on_life_loss
            )
            self.banks.append(Bank(games, envs, self.round_trips))
            if len(self.banks) == 1:  # every bank plays the same game: checked once, before the others load
                remedy = "serve or load a model trained on this game (--env)"
                check_action_count(self.policy.name, self.policy.n_actions, config.env_id, envs.n_actions, remedy)
            offset += size
            self.progress("creating", offset, since)

    def start_games(self) -> None:
        """Every game's first episode (seeded resets reload the ROM): before the clock starts."""
        since, done = time.monotonic(), 0
        for bank in self.banks:
            bank.envs.start([g.next_seed for g in bank.games])
            done += len(bank.games)
            self.progress("starting", done, since)
        self.started = True

    def close(self) -> None:
        for bank in self.banks:
            bank.drop_wave()
            bank.envs.close()

    def clock(self) -> float:
        """Playing time: paused time does not count."""
        return time.perf_counter() - self.start - self.screen.paused_seconds

    # -- answers -----------------------------------------------------------------------

    def q_values_or_outage(self, answer: Callable[[], np.ndarray]) -> np.ndarray | None:
        """The wave's Q-values, or None when the server failed it (the outage logic rides that out).

        The one place an answer's failure is sorted: the server's (an :class:`InferenceError`) is
        an outage; anything else means an answer the client could not read, and ends play.
        """
        try:
            return answer()
        except InferenceError as e:
            self.outage.failed(e, time.monotonic())
            return None
        except Exception as e:
            raise BadResponse(f"{self.policy.name}: unreadable answer ({type(e).__name__}: {e})") from None

    def take_answer(self, bank: Bank, now: float) -> bool:
        """Whether ``bank``'s wave brought its games' actions (False: not yet, or it failed and play rides it out)."""
        wave = bank.wave
        if wave is None:
            return False
        if not wave.done():
            if self.deadline is not None and now - bank.asked_time > self.deadline:
                bank.drop_wave()
                self.outage.failed(RequestTimeout(f"{self.policy.name}: no answer within {self.deadline:g} s"), now)
            return False
        q = self.q_values_or_outage(wave.result)
        if q is None:
            bank.wave = None
            return False
        # The future's own callback notes when it came; it runs just after done() turns true, so maybe not yet.
        came = bank.answered_time if bank.answered_time >= bank.asked_time else now
        bank.answered(q, came - bank.asked_time, staleness=not self.config.sync)
        self.outage.answered(now)
        return True

    def answer_now(self, bank: Bank) -> bool:
        """Ask for ``bank``'s actions and wait for them (a plain blocking call); False when the server is away."""
        asked = time.monotonic()
        q = self.q_values_or_outage(lambda: bank.ask_and_wait(self.policy, asked))
        if q is None:
            return False
        now = time.monotonic()
        bank.answered(q, now - asked, staleness=False)
        self.outage.answered(now)
        return True

    def tick_sync(self, banks: list[Bank]) -> None:
        if len(self.banks) == 1 and not self.outage.active:
            # One bank and a server that answers: a plain blocking call, the shortest round trip (a future
            # costs a hand-over between threads each way), and no other bank to step meanwhile.
            bank = banks[0]
            if self.answer_now(bank):
                bank.step()
                bank.finish_step(self.clock(), flag_stale=False)
            return
        now = time.monotonic()
        for bank in banks:
            if bank.wave is None:  # the first tick, or asking again after a failure
                bank.ask(self.policy, now)
        waiting, stepping = banks, []
        while waiting:
            waves = [b.wave for b in waiting if b.wave is not None and not b.wave.done()]
            if waves:
                concurrent.futures.wait(waves, timeout=WAIT_SLICE, return_when=concurrent.futures.FIRST_COMPLETED)
            now, still = time.monotonic(), []
            for bank in waiting:
                if self.take_answer(bank, now):
                    bank.step()  # its emulators step in their own thread while other waves are answered
                    stepping.append(bank)
                elif bank.wave is not None:
                    still.append(bank)
            waiting = still
            if waiting and self.screen.player_quit():  # the window stays alive while a server is slow or away
                self.quit = True
                break
        for bank in stepping:
            bank.finish_step(self.clock(), flag_stale=False)
            if bank.playing and len(self.banks) > 1:  # the next wave goes out now: ready when the next tick comes
                bank.ask(self.policy, time.monotonic())

    def tick_async(self, banks: list[Bank]) -> None:
        now = time.monotonic()
        # Every bank's wave first, then every step: the waves of one tick reach the server together.
        for bank in banks:
            self.take_answer(bank, now)
            if bank.wave is None:
                bank.ask(self.policy, now)
        for bank in banks:
            bank.step()
        for bank in banks:
            bank.finish_step(self.clock(), flag_stale=True)

    # -- the window --------------------------------------------------------------------

    def view(self) -> View:
        away = None
        if self.outage.active:
            waited = time.monotonic() - (self.outage.since or 0.0)
            away = f"SERVER AWAY: waiting {waited:.0f} of {self.outage.limit:g} s"
        elapsed = max(self.clock(), 1e-9)
        screens = [screen for bank in self.banks for screen in bank.envs.screens()]
        labels = [f"{g.index + 1}: {g.score:g}" for g in self.games]
        warning = away or ("LOCAL FALLBACK" if self.policy.on_fallback else None)
        return View(
            screens, labels, self.overlay.text(self.games, self.policy, self.round_trips, self.mode, elapsed), warning
        )

    def game_over(self) -> None:
        ended_by_cap = all(g.episodes and g.episodes[-1].end == STEP_LIMIT for g in self.games)
        headline = "STEP LIMIT REACHED" if ended_by_cap else "GAME OVER"
        seconds = self.config.game_over_seconds
        if seconds is None:  # no wait where no key can come (SDL's dummy or offscreen driver)
            seconds = GAME_OVER_SECONDS if self.screen.keys_can_come else 0.0
        self.screen.game_over(headline, game_over_lines(self.games, self.result.evaluation), seconds)

    # -- the session -------------------------------------------------------------------

    def play(self) -> None:
        tick = 0
        try:
            if not self.started:  # a worker starts its games before the common start (play_workers)
                self.start_games()
            self.start = time.perf_counter()  # the first step starts the clock: N seeded resets are not play
            self.cpu_start = cpu_seconds()
            while banks := [b for b in self.banks if b.playing]:
                if self.screen.player_quit():
                    self.quit = True
                self.outage.check(time.monotonic())
                if not self.quit:
                    (self.tick_sync if self.config.sync else self.tick_async)(banks)
                if self.quit:
                    self.result.stopped_by_user = True
                    break
                tick += 1
                if self.screen.draws:
                    self.screen.show(self.view(), tick)
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
        r.cpu_seconds = cpu_seconds() - self.cpu_start
        self.outage.close(time.monotonic())
        for g in self.games:
            if not g.done:  # cut short: counts with what it scored so far, not as a finished episode
                if g.steps:
                    g.end_episode(r.seconds, CUT_SHORT, g.score)
                g.done, g.seconds = True, g.seconds or r.seconds
            r.episodes.extend(g.episodes)
            r.staleness.extend(g.staleness)
        r.games = self.games
        r.steps = sum(e.steps for e in r.episodes)
        r.requests = sum(g.requests for g in self.games)
        r.round_trips = self.round_trips
        r.latency = self.round_trips.summary()
        r.fallback_switches = self.policy.fallback_switches
        return r


def play_games(
    policy: Policy, n: int, config: PlayConfig, announce: Callable[[PlayResult], None] | None = None
) -> PlayResult:
    """Play ``config.episodes`` episodes in each of ``n`` games at once, every game's actions from ``policy``.

    Stops early on Esc/Q, a closed window, Ctrl-C or a failure that is not ridden out.
    ``announce`` gets the statistics as soon as play ends, before the game-over screen
    (which stays ``config.game_over_seconds``, or until a key, where a key can come).
    """
    try:
        loop = PlayLoop(policy, n, config)
    except KeyboardInterrupt:  # Ctrl-C or Esc while the games' emulators load
        print(f"stopped while starting {n} game{'s' if n > 1 else ''}: nothing played", flush=True)
        return PlayResult(mode="sync" if config.sync else "async", policy=policy.name, stopped_by_user=True)
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
        loop.close()
