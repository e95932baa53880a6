"""Atari environments with DeepMind preprocessing, shared by training and both players.

The wrappers (:mod:`atari_trtis_demo.core.atari_wrappers`) reproduce ChainerRL's
``atari_wrappers`` on top of ``ale-py`` + ``gymnasium``, so that a model sees in play
exactly the pixels it saw in training. Order of wrappers, as in ChainerRL's
``make_atari`` + ``wrap_deepmind``:

    ALE (frameskip=1) -> NoopReset(30) -> MaxAndSkip(4)
        -> [EpisodicLife] -> WarpFrame(84x84 gray, INTER_AREA)
        -> [ClipReward] -> FrameStack(4, channels first)
        -> [RandomizeAction(0.05)]

Training uses EpisodicLife and ClipReward; evaluation and play use RandomizeAction.
This module imports neither Chainer nor ChainerRL.
"""

from __future__ import annotations

import difflib
import functools
from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np

from atari_trtis_demo.core.atari_wrappers import (
    ACTION_REPEAT,
    NOOP_MAX,
    ClipReward,
    EpisodicLife,
    FireOnLifeLoss,
    FrameStack,
    GameScore,
    MaxAndSkip,
    NoopReset,
    RandomizeAction,
    WarpFrame,
)
from atari_trtis_demo.core.contract import DEFAULT_ENV_ID, EVAL_EPSILON, PIXEL_MAX, STACK_SIZE
from atari_trtis_demo.core.errors import UserError

# ALE's own cap for the v4/v5 ids: 108,000 frames = 30 minutes of play at 60 Hz.
MAX_FRAMES_PER_EPISODE = 108_000


def quiet_banners() -> None:
    """Silence the banners every command printed before its own first line.

    ALE prints "A.L.E: Arcade Learning Environment (version ...)" and "[Powered by Stella]"
    for each emulator it starts (its Info level; Warning keeps its warnings and errors).
    gym 0.22, which is here only as ChainerRL's base-class library and is never asked to
    make an env, prints a 3-line "unmaintained, upgrade to Gymnasium" notice on import, from
    the ``gym_notices`` table it looks itself up in; an empty table prints nothing. Called on
    import of this module, which every command imports before gym (through ChainerRL) or an
    emulator.
    """
    import ale_py

    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Warning)
    try:
        import gym_notices.notices
    except ImportError:  # a client install has no gym
        return
    gym_notices.notices.notices.clear()


quiet_banners()


def scale_observation(observation: Any) -> np.ndarray:
    """The model's input: the uint8 frame stack as float32 in [0, 1].

    Used as ChainerRL's ``phi`` in training, by the standalone player, and by the
    remote player before it sends a stack to the server.
    """
    return np.asarray(observation, dtype=np.float32) / PIXEL_MAX


@functools.cache
def atari_env_ids() -> tuple[str, ...]:
    """Every Atari id registered by ale-py, as users type them.

    Read once per process: every game of a bank, and every emulator a command makes, checks its id
    (:func:`check_env_id`) against this, and a look-up is then all that check costs."""
    import ale_py

    gym.register_envs(ale_py)
    return tuple(sorted(k for k, spec in gym.registry.items() if "ale_py" in str(spec.entry_point)))


def check_env_id(env_id: str, flag: str = "--env") -> str:
    """``env_id`` if ale-py knows it, else a one-line :class:`UserError` with the closest ids.

    The id training uses, ``<Game>NoFrameskip-v4``, is suggested first when the game is
    recognised (``Breakout``, ``breakout-v4``, ``ALE/Breakout``), then ``ALE/<Game>-v5``.
    """
    ids = atari_env_ids()
    if env_id in ids:
        return env_id
    by_lower = {i.lower(): i for i in ids}
    game = env_id.removeprefix("ALE/").split("-")[0].removesuffix("NoFrameskip").lower()
    preferred = [by_lower[c] for c in (f"{game}noframeskip-v4", f"ale/{game}-v5") if c in by_lower]
    close = difflib.get_close_matches(env_id, ids, n=3, cutoff=0.6)
    suggestions = list(dict.fromkeys(preferred + close))[:3]
    hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else f"; try {DEFAULT_ENV_ID}"
    raise UserError(f"{flag}: unknown Atari env id '{env_id}'{hint}")


def make_atari_emulator(env_id: str, *, render_mode: str | None = None) -> gym.Env:
    """The bare ALE env for ``env_id`` with one emulator frame per step.

    ``BreakoutNoFrameskip-v4`` and ``ALE/Breakout-v5`` both work; the frame skip is
    always forced to 1 because :class:`MaxAndSkip` does the skipping.
    """
    check_env_id(env_id)
    return gym.make(
        env_id,
        frameskip=1,
        max_num_frames_per_episode=MAX_FRAMES_PER_EPISODE,
        render_mode=render_mode,
        disable_env_checker=True,
    )


def make_env(
    env_id: str,
    *,
    train: bool,
    epsilon: float = EVAL_EPSILON,
    render_mode: str | None = None,
    seed: int | None = None,
    fire_on_life_loss: bool = False,
) -> gym.Env:
    """The preprocessed env: DeepMind wrappers for training (``train=True``) or play.

    Training: episodic life and clipped rewards, as in ChainerRL's reproduction.
    Evaluation and play: whole games, raw rewards, ``epsilon`` random actions, and with
    ``fire_on_life_loss`` (the players' ``--fire-on-life-loss``)
    FIRE pressed at the start and after each lost life (:class:`FireOnLifeLoss`; never in training).

    ``seed`` seeds the random actions of evaluation and play (unseeded when None).
    The emulator and the no-op starts draw from the env's own generator, which
    ``reset(seed=...)`` seeds, as in every gymnasium env.
    """
    env: gym.Env = make_atari_emulator(env_id, render_mode=render_mode)
    env = GameScore(env)
    env = NoopReset(env, NOOP_MAX)
    env = MaxAndSkip(env, ACTION_REPEAT)
    if fire_on_life_loss and not train:
        # Below RandomizeAction, which may still replace the FIRE by a random action, as any other.
        env = FireOnLifeLoss(env)
    if train:
        env = EpisodicLife(env)
    env = WarpFrame(env)
    if train:
        env = ClipReward(env)
    env = FrameStack(env, STACK_SIZE)
    if not train:
        env = RandomizeAction(env, epsilon, seed=seed)
    return env


def find_wrapper(env: gym.Env, kind: type) -> Any:
    """The first wrapper of type ``kind`` in ``env``'s chain, or None."""
    while isinstance(env, gym.Wrapper):
        if isinstance(env, kind):
            return env
        env = env.env
    return env if isinstance(env, kind) else None


class OldGymAPI:
    """Presents a gymnasium env with the old gym API that ChainerRL's loops expect.

    ``reset()`` returns the observation only; ``step()`` returns a 4-tuple. A
    truncated episode (ALE's frame cap) becomes ``done=False`` with
    ``info['needs_reset'] = True``, ChainerRL's convention for time limits, so the
    agent still bootstraps from the last state. ``seed`` and ``seed()`` apply to the
    next reset; the env's random actions are seeded by ``make_env(..., seed=)``.
    """

    def __init__(self, env: gym.Env, seed: int | None = None) -> None:
        self.env = env
        self.action_space = env.action_space
        self.observation_space = env.observation_space
        self._seed = seed

    @property
    def unwrapped(self) -> gym.Env:
        return self.env.unwrapped

    @property
    def recent_scores(self) -> deque[float]:
        """Raw scores of the last whole games played in this env."""
        return find_wrapper(self.env, GameScore).last_scores

    def seed(self, seed: int) -> None:
        self._seed = seed

    def reset(self) -> Any:
        obs, _ = self.env.reset(seed=self._seed)
        self._seed = None
        return obs

    def step(self, action: Any) -> tuple[Any, float, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if truncated and not terminated:
            info = dict(info, needs_reset=True)
        return obs, float(reward), bool(terminated), info

    def close(self) -> None:
        self.env.close()
