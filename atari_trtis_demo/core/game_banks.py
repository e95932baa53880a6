"""The games a player steps together, one bank at a time: what the play loop asks of its envs.

Two kinds of bank, one interface (:class:`GameBank`), both with the preprocessing of
:func:`~atari_trtis_demo.core.envs.make_env` (ChainerRL's DeepMind wrappers):

- :class:`WrappedGames`: each game its own ``make_env`` chain, stepped one after the
  other in Python. The single game and the standalone player use it: the emulator's
  own last screen for the window, and each episode seeded ``seed + episode``.
- :class:`VectorGames`: up to :data:`BANK_SIZE` games stepped by ale-py's
  ``AtariVectorEnv`` in a C++ thread of its own (off the GIL): the action repeat and the
  max of the last two RGB frames happen there, grayscale and resize of every game at
  once in :func:`~atari_trtis_demo.core.atari_wrappers.warp_frames`, and the frame
  stacks here, the first frame of an episode repeated as ChainerRL's FrameStack does.
  The same pixels as the wrappers (tests/test_game_banks.py). ``--games N`` uses it.

Where a vector bank differs from the wrappers, and why (docs/deviations.md): the number
of no-op frames at an episode's start is drawn by the ALE's generator (seeded by the
game's seed) rather than gymnasium's, and only a game's first episode is seeded (later
episodes continue its generators: a seeded reset reloads the ROM, 0.1 s); a finished
game's emulator keeps stepping until its bank's last game ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from atari_trtis_demo.core.atari_wrappers import (
    ACTION_REPEAT,
    NOOP_MAX,
    FireRule,
    GameScore,
    epsilon_action,
    warp_frames,
)
from atari_trtis_demo.core.contract import FRAME_STACK_SHAPE
from atari_trtis_demo.core.envs import MAX_FRAMES_PER_EPISODE, check_env_id, find_wrapper, make_env

# Games per vector bank: each bank is one wave of requests and one C++ thread, so that one bank
# steps while another's wave is on the server; a bank is also the unit of start-up progress.
BANK_SIZE = 32
ALE_SCREEN = (210, 160)  # height, width of every ALE game's screen


def bank_sizes(n: int) -> list[int]:
    """``n`` games in banks of at most :data:`BANK_SIZE`, as even as can be."""
    banks = -(-n // BANK_SIZE)
    return [n // banks + (i < n % banks) for i in range(banks)]


@dataclass
class Stepped:
    """What one step of a bank gave each of its games."""

    rewards: np.ndarray  # (n,) float: this step's raw reward
    terminated: np.ndarray  # (n,) bool: the game is over
    truncated: np.ndarray  # (n,) bool: the emulator's frame cap (108,000 frames)
    ale_scores: np.ndarray  # (n,) float: the emulator's own sum of the episode's rewards, this step included


class GameBank(Protocol):
    """``n`` games of one Atari id: started, stepped (send, then recv) and restarted together."""

    n: int
    n_actions: int
    # (n, 4, 84, 84) uint8: each game's newest frame stack (valid until the next recv or restart)
    stacks: np.ndarray

    def start(self, seeds: Sequence[int]) -> None:
        """Every game's first episode, game ``i`` seeded ``seeds[i]``."""

    def send(self, actions: np.ndarray) -> None:
        """Start one agent step of every game; ``actions``: (n,) the policy's choices (before epsilon and FIRE)."""

    def recv(self) -> Stepped:
        """Finish the step started by :meth:`send`; ``stacks`` are then the new frames."""

    def restart(self, games: Sequence[int], seeds: Sequence[int]) -> None:
        """New episodes for ``games`` (local indices) whose episode just ended (seeds: see each kind)."""

    def screens(self) -> list[np.ndarray]:
        """Each game's RGB screen, (210, 160, 3) uint8, to draw."""

    def close(self) -> None: ...


class WrappedGames:
    """Each game its own :func:`make_env` chain (ChainerRL's wrappers in Python), stepped one after the other.

    Episode ``j`` of a game starts with ``reset(seed=seeds[...])`` as given by the loop.
    """

    def __init__(self, env_id: str, n: int, *, epsilon: float, seeds: Sequence[int], fire_on_life_loss: bool) -> None:
        self.envs: list[gym.Env] = []
        try:
            for seed in seeds[:n]:
                env = make_env(env_id, train=False, epsilon=epsilon, seed=seed, fire_on_life_loss=fire_on_life_loss)
                self.envs.append(env)
        except BaseException:
            self.close()
            raise
        self.n, self.n_actions = n, int(self.envs[0].action_space.n)
        self.stacks = np.zeros((n, *FRAME_STACK_SHAPE), np.uint8)
        self._actions = np.zeros(n, np.int64)

    def start(self, seeds: Sequence[int]) -> None:
        self.restart(range(self.n), seeds)

    def restart(self, games: Sequence[int], seeds: Sequence[int]) -> None:
        for i, seed in zip(games, seeds, strict=True):
            obs, _ = self.envs[i].reset(seed=seed)
            self.stacks[i] = obs

    def send(self, actions: np.ndarray) -> None:
        self._actions = actions

    def recv(self) -> Stepped:
        stepped = Stepped(np.zeros(self.n), np.zeros(self.n, bool), np.zeros(self.n, bool), np.zeros(self.n))
        for i, (env, action) in enumerate(zip(self.envs, self._actions, strict=True)):
            obs, reward, terminated, truncated, _ = env.step(int(action))
            self.stacks[i] = obs
            stepped.rewards[i], stepped.terminated[i], stepped.truncated[i] = reward, terminated, truncated
            stepped.ale_scores[i] = find_wrapper(env, GameScore).score
        return stepped

    def screens(self) -> list[np.ndarray]:
        return [env.unwrapped.ale.getScreenRGB() for env in self.envs]

    def close(self) -> None:
        for env in self.envs:
            env.close()


def vector_env_settings(env_id: str) -> dict[str, Any]:
    """``AtariVectorEnv``'s settings for ``env_id``: the registered game, sticky actions and action set of
    :func:`~atari_trtis_demo.core.envs.make_atari_emulator`'s env, ChainerRL's frame skip and max-pool over
    RGB, full-size RGB frames out (grayscale and resize are :func:`warp_frames`'), one frame a step (the
    stacks are kept here), raw rewards, no FIRE at reset (``--fire-on-life-loss`` is the loop's), and an
    automatic reset within the step that ends an episode (no extra call, no ROM reload)."""
    check_env_id(env_id)
    spec = gym.spec(env_id).kwargs
    return {
        "game": spec["game"],
        "repeat_action_probability": float(spec.get("repeat_action_probability", 0.25)),
        "full_action_space": bool(spec.get("full_action_space", False)),
        "max_num_frames_per_episode": MAX_FRAMES_PER_EPISODE,
        "frameskip": ACTION_REPEAT,
        "maxpool": True,
        "grayscale": False,
        "img_height": ALE_SCREEN[0],
        "img_width": ALE_SCREEN[1],
        "stack_num": 1,
        "noop_max": NOOP_MAX,
        "episodic_life": False,
        "reward_clipping": False,
        "use_fire_reset": False,
        "autoreset_mode": "SameStep",
        "num_threads": 1,
    }


class VectorGames:
    """``n`` games stepped by one ale-py ``AtariVectorEnv`` in a C++ thread, with ChainerRL's preprocessing.

    ``send`` applies each game's random actions (``epsilon``, drawn from the game's own
    generator as :class:`~atari_trtis_demo.core.atari_wrappers.RandomizeAction` does) and
    FIRE (``fire_on_life_loss``), then starts the step in C++ and returns; ``recv`` waits
    for it and brings every game's stack up to date. An episode that ends by itself
    restarts within that step; ``restart`` starts a new one for a game cut by the loop's
    step cap.
    """

    def __init__(
        self,
        env_id: str,
        n: int,
        *,
        epsilon: float,
        seeds: Sequence[int],
        fire_on_life_loss: bool,
        noop_max: int = NOOP_MAX,
    ) -> None:
        from ale_py.vector_env import AtariVectorEnv

        self.env = AtariVectorEnv(num_envs=n, **(vector_env_settings(env_id) | {"noop_max": noop_max}))
        self.n, self.epsilon = n, epsilon
        meanings = [action.name for action in self.env.ale.get_action_set()]
        self.n_actions = len(meanings)
        self.fire = [FireRule(meanings) for _ in range(n)] if fire_on_life_loss else None
        self.rngs = [np.random.default_rng(seed) for seed in seeds[:n]]  # RandomizeAction's, seeded alike
        self.stacks = np.zeros((n, *FRAME_STACK_SHAPE), np.uint8)
        self._rgb = np.zeros((n, *ALE_SCREEN, 3), np.uint8)
        self._scores = np.zeros(n)
        self._restarted = np.zeros(n, bool)  # the games whose episode ended (and restarted) in the last step
        self._sent = False

    def _new_episodes(self, games: np.ndarray, lives: np.ndarray) -> None:
        """``games`` begin an episode: the first frame repeated (ChainerRL's FrameStack), no score, FIRE due."""
        self.stacks[games] = self.stacks[games, -1:]
        self._scores[games] = 0.0
        for i in games if self.fire is not None else ():
            self.fire[i].start(int(lives[i]))

    def start(self, seeds: Sequence[int]) -> None:
        observations, info = self.env.reset(seed=np.asarray(seeds[: self.n], dtype=np.int64))
        self._rgb[:] = observations[:, 0]
        self.stacks[:, -1] = warp_frames(self._rgb)
        self._new_episodes(np.arange(self.n), info["lives"])

    def send(self, actions: np.ndarray) -> None:
        played = np.array(actions, dtype=np.int64)
        for i, rng in enumerate(self.rngs):
            action = epsilon_action(rng, self.epsilon, self.n_actions, int(played[i]))[0]
            played[i] = action if self.fire is None else self.fire[i].action(action)
        self.env.send(played)
        self._sent = True

    def recv(self) -> Stepped:
        observations, rewards, terminated, truncated, info = self.env.recv()
        self._sent = False
        self._scores += rewards
        stepped = Stepped(rewards.astype(float), terminated.astype(bool), truncated.astype(bool), self._scores.copy())
        self._rgb[:] = observations[:, 0]
        self.stacks[:, :-1] = self.stacks[:, 1:]
        self.stacks[:, -1] = warp_frames(self._rgb)
        self._restarted = stepped.terminated | stepped.truncated
        for i, rule in enumerate(self.fire or ()):
            if not self._restarted[i]:
                rule.stepped(int(info["lives"][i]))
        # An ended episode restarted within the step (SameStep): its frame is the new episode's first.
        self._new_episodes(np.flatnonzero(self._restarted), info["lives"])
        return stepped

    def restart(self, games: Sequence[int], seeds: Sequence[int]) -> None:
        """New episodes for ``games`` (the seeds are not used: see the module's note)."""
        cut = np.zeros(self.n, bool)
        cut[list(games)] = True
        cut &= ~self._restarted  # those restarted within their last step already
        if not cut.any():
            return
        observations, info = self.env.reset(options={"reset_mask": cut})
        self._rgb[cut] = observations[cut, 0]
        self.stacks[cut, -1] = warp_frames(self._rgb[cut])
        self._new_episodes(np.flatnonzero(cut), info["lives"])

    def screens(self) -> list[np.ndarray]:
        return list(self._rgb)

    def close(self) -> None:
        if self._sent:  # a step in flight is collected before the threads stop
            self.env.recv()
        self.env.close()
