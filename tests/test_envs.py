"""The shared DeepMind preprocessing, on real ALE games."""

from __future__ import annotations

import cv2
import gymnasium as gym
import numpy as np
import pytest
from helpers import assert_runs_without_chainer

from atari_trtis_demo.core.atari_wrappers import LazyFrames, RandomizeAction
from atari_trtis_demo.core.envs import OldGymAPI, find_wrapper, make_atari_emulator, make_env, scale_observation
from atari_trtis_demo.core.errors import UserError


def reference_observations(env_id: str, seed: int, actions: list[int]) -> list[np.ndarray]:
    """DeepMind preprocessing written out plainly on the bare emulator, for comparison.

    No wrappers: draw the no-op count from the env's generator, take that many no-op
    frames, then per action 4 frames with the max of the last two RGB frames, then
    grayscale and area-resize, and keep the newest 4 frames.
    """
    env = make_atari_emulator(env_id)
    frame, _ = env.reset(seed=seed)
    for _ in range(int(env.unwrapped.np_random.integers(1, 31))):
        frame, *_ = env.step(0)

    def warp(rgb: np.ndarray) -> np.ndarray:
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        return cv2.resize(gray, (84, 84), interpolation=cv2.INTER_AREA)

    stack = [warp(frame)] * 4
    out = [np.stack(stack)]
    for action in actions:
        raw = []
        for _ in range(4):
            frame, _, terminated, truncated, _ = env.step(action)
            raw.append(frame)
            if terminated or truncated:
                break
        assert len(raw) == 4, "the reference covers a game that does not end"
        stack = stack[1:] + [warp(np.maximum(raw[-2], raw[-1]))]
        out.append(np.stack(stack))
    env.close()
    return out


@pytest.mark.parametrize("env_id", ["BreakoutNoFrameskip-v4", "PongNoFrameskip-v4"])
def test_observations_equal_a_plain_reference_implementation(env_id: str) -> None:
    rng = np.random.default_rng(1)
    env = make_env(env_id, train=False, epsilon=0.0)
    n = env.action_space.n
    actions = [int(a) for a in rng.integers(0, n, size=150)]
    expected = reference_observations(env_id, seed=7, actions=actions)

    obs, _ = env.reset(seed=7)
    got = [np.asarray(obs)]
    for action in actions:
        obs, *_ = env.step(action)
        got.append(np.asarray(obs))
    assert len(got) == len(expected)
    for step, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert np.array_equal(g, e), f"{env_id}: observation differs at step {step}"
    # The comparison means something only if the screen changed.
    assert not np.array_equal(got[0], got[-1])


def test_observation_shape_dtype_and_stack_order() -> None:
    env = make_env("BreakoutNoFrameskip-v4", train=True)
    obs, _ = env.reset(seed=0)
    assert isinstance(obs, LazyFrames)
    assert env.observation_space.shape == (4, 84, 84)
    first = np.asarray(obs)
    assert first.shape == (4, 84, 84) and first.dtype == np.uint8
    # After reset all four frames are the same frame.
    assert all(np.array_equal(first[0], first[i]) for i in range(4))
    previous = first
    for _ in range(20):
        obs, *_ = env.step(1)
        now = np.asarray(obs)
        # Oldest first: each step drops frame 0 and appends the newest frame last.
        assert np.array_equal(now[:3], previous[1:])
        previous = now
    # Frames are shared between consecutive stacks, not copied.
    nxt, *_ = env.step(0)
    assert np.shares_memory(nxt._frames[2], obs._frames[3])
    scaled = scale_observation(obs)
    assert scaled.dtype == np.float32 and scaled.shape == (4, 84, 84)
    assert 0.0 <= scaled.min() and scaled.max() <= 1.0
    assert np.allclose(scaled * 255, np.asarray(obs))


def test_noop_reset_takes_between_1_and_30_frames_and_varies() -> None:
    env = make_env("BreakoutNoFrameskip-v4", train=False, epsilon=0.0)
    counts = set()
    for seed in range(12):
        env.reset(seed=seed)
        frames = env.unwrapped.ale.getEpisodeFrameNumber()
        assert 1 <= frames <= 30
        counts.add(frames)
    assert len(counts) > 3


def test_training_env_ends_episodes_at_lost_lives_and_clips_rewards() -> None:
    env = make_env("BreakoutNoFrameskip-v4", train=True)
    env.reset(seed=3)
    ale = env.unwrapped.ale
    rng = np.random.default_rng(0)
    lives_at_start = ale.lives()
    for _ in range(5000):
        _, reward, terminated, truncated, _ = env.step(int(rng.integers(4)))
        assert reward in (-1.0, 0.0, 1.0)
        if terminated:
            break
    else:
        pytest.fail("no life lost in 5000 steps")
    assert 0 < ale.lives() < lives_at_start, "a lost life, not a game over, ended the episode"
    frame_before = ale.getEpisodeFrameNumber()
    env.reset()
    # Resetting after a lost life continues the same game: one no-op step of 4 frames.
    assert ale.getEpisodeFrameNumber() == frame_before + 4
    assert ale.lives() == lives_at_start - 1


def test_evaluation_env_plays_whole_games_with_raw_rewards() -> None:
    env = make_env("BreakoutNoFrameskip-v4", train=False, epsilon=1.0, seed=5)  # a seeded, deterministic game
    env.reset(seed=5)
    rewards = []
    lives_seen = set()
    for _ in range(20000):
        _, reward, terminated, truncated, _ = env.step(1)
        rewards.append(reward)
        lives_seen.add(env.unwrapped.ale.lives())
        if terminated or truncated:
            break
    assert terminated, "a random Breakout game ends within 20000 steps"
    assert env.unwrapped.ale.lives() == 0 and len(lives_seen) > 2
    assert sum(rewards) > 0


def test_randomize_action_replaces_the_given_fraction() -> None:
    env = make_env("BreakoutNoFrameskip-v4", train=False, epsilon=0.25, seed=0)
    randomizer = find_wrapper(env, RandomizeAction)
    replaced = 0
    for _ in range(4000):
        randomizer.action(0)
        replaced += randomizer.randomized
    assert 0.2 < replaced / 4000 < 0.3
    with pytest.raises(UserError, match="--epsilon"):
        make_env("BreakoutNoFrameskip-v4", train=False, epsilon=1.5)


def test_seed_makes_the_random_actions_repeat() -> None:
    def random_actions(seed: int) -> list[int]:
        env = make_env("BreakoutNoFrameskip-v4", train=False, epsilon=1.0, seed=seed)
        randomizer = find_wrapper(env, RandomizeAction)
        return [randomizer.action(0) for _ in range(50)]

    assert random_actions(3) == random_actions(3) != random_actions(4)
    # The stream of a generator seeded by hand, as callers seeded the wrapper before make_env took a seed.
    by_hand = np.random.default_rng(3)
    expected = []
    for _ in range(50):
        assert by_hand.random() < 1.0  # the draw deciding whether to randomize (always, at epsilon 1)
        expected.append(int(by_hand.integers(4)))
    assert random_actions(3) == expected


def test_v5_ids_work_with_frameskip_forced_to_one() -> None:
    env = make_env("ALE/Pong-v5", train=False)
    obs, _ = env.reset(seed=0)
    assert np.asarray(obs).shape == (4, 84, 84)
    assert env.action_space.n == 6
    env.step(0)
    # One agent step is four emulator frames, whatever the id's own frameskip.
    start = env.unwrapped.ale.getEpisodeFrameNumber()
    env.step(0)
    assert env.unwrapped.ale.getEpisodeFrameNumber() - start == 4


def test_unknown_env_id_is_one_line_with_suggestions() -> None:
    with pytest.raises(UserError) as err:
        make_env("BreakotNoFrameskip-v4", train=True)
    message = str(err.value)
    assert "BreakotNoFrameskip-v4" in message and "BreakoutNoFrameskip-v4" in message
    assert "\n" not in message


class _Countdown(gym.Env):
    """A tiny env that is cut off by a time limit: to check the old-API mapping."""

    observation_space = gym.spaces.Discrete(10)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[int, dict]:
        super().reset(seed=seed)
        self.t = 0
        return 0, {}

    def step(self, action: int) -> tuple[int, float, bool, bool, dict]:
        self.t += 1
        return self.t, 1.0, action == 1, False, {}


def test_old_gym_api_maps_truncation_to_needs_reset() -> None:
    env = OldGymAPI(gym.wrappers.TimeLimit(_Countdown(), max_episode_steps=3))
    assert env.reset() == 0
    assert env.step(0) == (1, 1.0, False, {})
    env.step(0)
    obs, reward, done, info = env.step(0)
    assert (obs, done, info.get("needs_reset")) == (3, False, True)
    env.reset()
    obs, reward, done, info = env.step(1)
    assert done is True and "needs_reset" not in info


def test_envs_module_does_not_import_chainer() -> None:
    """Not only imported: a game made, reset and stepped without Chainer."""
    result = assert_runs_without_chainer(
        "from atari_trtis_demo.core.envs import make_env\n"
        "env = make_env('BreakoutNoFrameskip-v4', train=False); env.reset(seed=0); env.step(0)\n"
        "print('ok')"
    )
    assert result.stdout.strip().endswith("ok")
