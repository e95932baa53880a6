"""The DeepMind Atari wrappers, as ChainerRL's ``atari_wrappers`` has them, on gymnasium.

ChainerRL's own (a fork of OpenAI baselines') need the retired ``gym`` API and Chainer
itself, and the client side of this project must not need Chainer: they are written
again here, the same frames in, the same pixels out. :func:`atari_trtis_demo.core.envs.make_env`
puts them together; this module imports neither Chainer nor ChainerRL.
"""

from __future__ import annotations

from collections import deque
from typing import Any, SupportsFloat

import cv2
import gymnasium as gym
import numpy as np
from gymnasium import spaces

from atari_trtis_demo.core.contract import EVAL_EPSILON, FRAME_SIZE, STACK_SIZE
from atari_trtis_demo.core.errors import UserError

NOOP_MAX = 30
ACTION_REPEAT = 4

cv2.ocl.setUseOpenCL(False)


class LazyFrames:
    """A frame stack that shares its frames with its neighbours until converted.

    A replay buffer of 10^6 transitions would need 56 GB if each observation held
    its own 4x84x84 copy; sharing the 84x84 frames brings it to about 7 GB.
    ``np.asarray(lazy)`` gives the (4, 84, 84) uint8 array.
    """

    __slots__ = ("_frames",)

    def __init__(self, frames: list[np.ndarray]) -> None:
        self._frames = frames

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.concatenate(self._frames, axis=0)
        return out if dtype is None else out.astype(dtype)

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def shape(self) -> tuple[int, ...]:
        first = self._frames[0]
        return (len(self._frames) * first.shape[0],) + first.shape[1:]


class NoopReset(gym.Wrapper):
    """On reset, take a random number (1..noop_max) of no-op frames."""

    def __init__(self, env: gym.Env, noop_max: int = NOOP_MAX) -> None:
        super().__init__(env)
        meanings = env.unwrapped.get_action_meanings()
        if meanings[0] != "NOOP":
            raise UserError(f"action 0 of {env.spec.id if env.spec else env} is {meanings[0]}, not NOOP")
        self.noop_max = noop_max

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        obs, info = self.env.reset(**kwargs)
        noops = int(self.unwrapped.np_random.integers(1, self.noop_max + 1))
        for _ in range(noops):
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:
                obs, info = self.env.reset()
        return obs, info


class MaxAndSkip(gym.Wrapper):
    """Repeat each action ``skip`` frames; observe the max of the last two RGB frames.

    The max removes the flicker of sprites that the Atari draws every other frame.
    As in ChainerRL, the max is taken over RGB before grayscale conversion.
    """

    def __init__(self, env: gym.Env, skip: int = ACTION_REPEAT) -> None:
        super().__init__(env)
        self._skip = skip
        self._obs_buffer = np.zeros((2,) + env.observation_space.shape, dtype=np.uint8)

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict]:
        total_reward = 0.0
        terminated = truncated = False
        info: dict = {}
        for i in range(self._skip):
            obs, reward, terminated, truncated, info = self.env.step(action)
            if i >= self._skip - 2:
                self._obs_buffer[i - (self._skip - 2)] = obs
            total_reward += float(reward)
            if terminated or truncated:
                break
        return self._obs_buffer.max(axis=0), total_reward, terminated, truncated, info


class EpisodicLife(gym.Wrapper):
    """Make the loss of a life terminal for learning; reset only on a real game over.

    After a lost life, ``reset`` takes one no-op step instead of restarting the game,
    so every state stays reachable.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.lives = 0
        self.needs_real_reset = True

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.needs_real_reset = terminated or truncated
        lives = self.unwrapped.ale.lives()
        if 0 < lives < self.lives:
            terminated = True
        self.lives = lives
        return obs, reward, terminated, truncated, info

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        if self.needs_real_reset:
            obs, info = self.env.reset(**kwargs)
        else:
            obs, _, terminated, truncated, info = self.env.step(0)
            # ChainerRL ignores a game over on this no-op step and plays on in a
            # finished game; a real reset is the only sound answer.
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        self.needs_real_reset = False
        self.lives = self.unwrapped.ale.lives()
        return obs, info


class WarpFrame(gym.ObservationWrapper):
    """RGB (210, 160, 3) -> grayscale (1, 84, 84) uint8 with area interpolation."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = spaces.Box(0, 255, (1, FRAME_SIZE, FRAME_SIZE), np.uint8)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return warp_frame(observation)


def warp_frame(rgb: np.ndarray) -> np.ndarray:
    """One RGB frame to the (1, 84, 84) uint8 frame the model sees."""
    return warp_frames(rgb[None])


def warp_frames(rgb: np.ndarray) -> np.ndarray:
    """(n, height, width, 3) RGB frames to the (n, 84, 84) uint8 frames the model sees, with two OpenCV calls.

    The n frames are converted and resized as one image n frames tall: grayscale works
    pixel by pixel, and INTER_AREA maps each frame's ``height`` rows onto exactly its own
    84 output rows (the row scale is the same for one frame and for n), so every frame
    comes out as it would alone (tests/test_game_banks.py checks it against one call per
    frame). One call instead of n saves the per-call cost of many games.
    """
    n, height, width, _ = rgb.shape
    gray = cv2.cvtColor(rgb.reshape(n * height, width, 3), cv2.COLOR_RGB2GRAY)
    small = cv2.resize(gray, (FRAME_SIZE, n * FRAME_SIZE), interpolation=cv2.INTER_AREA)
    return small.reshape(n, FRAME_SIZE, FRAME_SIZE)


class ClipReward(gym.RewardWrapper):
    """Rewards to their sign, as the DQN paper trains."""

    def reward(self, reward: SupportsFloat) -> float:
        return float(np.sign(reward))


class FrameStack(gym.Wrapper):
    """Stack the last ``k`` frames along the channel axis, oldest first, lazily."""

    def __init__(self, env: gym.Env, k: int = STACK_SIZE) -> None:
        super().__init__(env)
        self.k = k
        self.frames: deque[np.ndarray] = deque(maxlen=k)
        low = np.repeat(env.observation_space.low, k, axis=0)
        high = np.repeat(env.observation_space.high, k, axis=0)
        self.observation_space = spaces.Box(low, high, dtype=np.uint8)

    def reset(self, **kwargs: Any) -> tuple[LazyFrames, dict]:
        obs, info = self.env.reset(**kwargs)
        for _ in range(self.k):
            self.frames.append(obs)
        return LazyFrames(list(self.frames)), info

    def step(self, action: Any) -> tuple[LazyFrames, SupportsFloat, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.frames.append(obs)
        return LazyFrames(list(self.frames)), reward, terminated, truncated, info


class RandomizeAction(gym.ActionWrapper):
    """Replace the chosen action by a uniformly random one with probability ``epsilon``.

    DeepMind evaluates with 5% random actions; the 2019 demo played with them too.
    """

    def __init__(self, env: gym.Env, epsilon: float = EVAL_EPSILON, seed: int | None = None) -> None:
        super().__init__(env)
        if not 0.0 <= epsilon <= 1.0:
            raise UserError(f"--epsilon must be within [0, 1], got {epsilon}")
        self.epsilon = epsilon
        self.rng = np.random.default_rng(seed)
        self.randomized = False  # whether the last action was replaced

    def action(self, action: Any) -> Any:
        action, self.randomized = epsilon_action(self.rng, self.epsilon, self.env.action_space.n, action)
        return action


def epsilon_action(rng: np.random.Generator, epsilon: float, n_actions: int, action: Any) -> tuple[Any, bool]:
    """``action``, or with probability ``epsilon`` a uniformly random one; and whether it was replaced.

    :class:`RandomizeAction`'s draw, shared with the many-games bank (``game_banks``), so
    that a seed draws the same random actions in both.
    """
    if epsilon > 0 and rng.random() < epsilon:
        return int(rng.integers(n_actions)), True
    return action, False


class FireOnLifeLoss(gym.Wrapper):
    """Play-time option: press FIRE as the first action of a game and after each lost life.

    In Breakout (and other games that wait for FIRE to serve) a barely trained agent
    rarely presses FIRE, and its game stands still with no ball until a random action
    happens to be FIRE. This replaces the agent's action by FIRE once at each of those
    moments. It is an action override, not preprocessing: the frames the model sees are
    unchanged, so training and play still see the same pixels. Games without a FIRE
    action are left alone. ``fired`` counts the overrides.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.rule = FireRule(env.unwrapped.get_action_meanings())

    @property
    def fired(self) -> int:
        return self.rule.fired

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        obs, info = self.env.reset(**kwargs)
        self.rule.start(self.unwrapped.ale.lives())
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(self.rule.action(action))
        self.rule.stepped(self.unwrapped.ale.lives())
        return obs, reward, terminated, truncated, info


class FireRule:
    """When :class:`FireOnLifeLoss` presses FIRE: once at the start of a game and after each lost life.

    One game's state, shared by the wrapper and the many-games bank (``game_banks``).
    Games without a FIRE action are left alone.
    """

    def __init__(self, action_meanings: list[str]) -> None:
        self.fire_action: int | None = action_meanings.index("FIRE") if "FIRE" in action_meanings else None
        self.lives = 0
        self.pending = False
        self.fired = 0

    def start(self, lives: int) -> None:
        """A new game begins with ``lives``: its first action is FIRE."""
        self.lives, self.pending = lives, self.fire_action is not None

    def action(self, action: Any) -> Any:
        """The action to play: FIRE when one is due, else ``action``."""
        if not self.pending:
            return action
        self.pending, self.fired = False, self.fired + 1
        return self.fire_action

    def stepped(self, lives: int) -> None:
        """After a step: a lost life makes the next action FIRE."""
        if lives < self.lives and self.fire_action is not None:
            self.pending = True
        self.lives = lives


class GameScore(gym.Wrapper):
    """Records the raw score and length of whole games (not lives), before clipping.

    Sits right above the emulator, so ``last_scores`` is what a person would call the
    score even when the wrappers above clip rewards and cut episodes at lost lives.
    """

    def __init__(self, env: gym.Env, keep: int = 100) -> None:
        super().__init__(env)
        self.score = 0.0
        self.frames = 0
        self.last_scores: deque[float] = deque(maxlen=keep)

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        self.score = 0.0
        self.frames = 0
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.score += float(reward)
        self.frames += 1
        if terminated or truncated:
            self.last_scores.append(self.score)
        return obs, reward, terminated, truncated, info
