"""The banks of a play session: the games that step together and ask the server together.

A bank is a :class:`~atari_trtis_demo.core.game_banks.GameBank` (the envs) with its games and
its wave: the stacks of its games that play on, sent as one batch.
"""

from __future__ import annotations

import concurrent.futures
import time

import numpy as np

from atari_trtis_demo.client.latency import LatencyStats
from atari_trtis_demo.core.envs import scale_observation
from atari_trtis_demo.core.game_banks import GameBank, Stepped
from atari_trtis_demo.play.games import Game
from atari_trtis_demo.play.play_result import STEP_LIMIT, TERMINATED, TRUNCATED
from atari_trtis_demo.play.policies import Policy


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
