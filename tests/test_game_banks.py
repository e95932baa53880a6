"""Banks of games: vector-env frames equal the wrappers', seeds and play-time actions hold. Real ALE games."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from atari_trtis_demo.core.atari_wrappers import (
    FrameStack,
    MaxAndSkip,
    RandomizeAction,
    WarpFrame,
    epsilon_action,
    warp_frames,
)
from atari_trtis_demo.core.envs import make_atari_emulator, make_env
from atari_trtis_demo.core.game_banks import VectorGames, WrappedGames


def test_warping_many_frames_at_once_equals_warping_each_alone() -> None:
    """Grayscale and INTER_AREA over one image n frames tall give each frame exactly its own 84x84."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (7, 210, 160, 3), dtype=np.uint8)
    alone = [cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), (84, 84), interpolation=cv2.INTER_AREA) for f in frames]
    np.testing.assert_array_equal(warp_frames(frames), np.stack(alone))


@pytest.mark.parametrize("env_id", ["PongNoFrameskip-v4", "MsPacmanNoFrameskip-v4"])
def test_vector_bank_stacks_equal_the_wrappers_through_episode_ends(env_id: str) -> None:
    """The same actions from the same start: every stack equal, the first of each episode included.

    Pong and Ms. Pac-Man are games where the max of two RGB frames and the max of two gray
    ones differ; no no-op starts on either side, so both start from the same frame.
    """
    ours = FrameStack(WarpFrame(MaxAndSkip(make_atari_emulator(env_id))), 4)
    bank = VectorGames(env_id, 1, epsilon=0.0, seeds=[3], fire_on_life_loss=False, noop_max=0)
    try:
        obs, _ = ours.reset(seed=3)
        bank.start([3])
        rng = np.random.default_rng(1)
        episodes, steps = 0, 0
        while episodes < 1 or steps < 400:
            np.testing.assert_array_equal(bank.stacks[0], np.asarray(obs), err_msg=f"step {steps}")
            action = int(rng.integers(bank.n_actions))
            obs, reward, terminated, truncated, _ = ours.step(action)
            bank.send(np.array([action]))
            stepped = bank.recv()
            assert (stepped.rewards[0], stepped.terminated[0]) == (reward, terminated), f"step {steps}"
            steps += 1
            if terminated or truncated:
                episodes += 1
                obs, _ = ours.reset(seed=3)  # the bank restarted within the step
            if steps > 5000:
                break
        np.testing.assert_array_equal(bank.stacks[0], np.asarray(obs))
        assert episodes >= 1, "an episode end and the next episode's first stack were compared"
    finally:
        bank.close()


def play_noops(bank: VectorGames, steps: int) -> list[np.ndarray]:
    frames = []
    for _ in range(steps):
        bank.send(np.zeros(bank.n, np.int64))
        bank.recv()
        frames.append(bank.stacks.copy())
    return frames


def test_a_game_plays_the_same_whatever_bank_it_is_in() -> None:
    """Game seeds, not bank layout, decide a game: --workers K gives every game the same episodes."""
    three = VectorGames("PongNoFrameskip-v4", 3, epsilon=0.3, seeds=[10, 11, 12], fire_on_life_loss=False)
    one = VectorGames("PongNoFrameskip-v4", 1, epsilon=0.3, seeds=[11], fire_on_life_loss=False)
    try:
        three.start([10, 11, 12])
        one.start([11])
        in_three, alone = play_noops(three, 60), play_noops(one, 60)
        for a, b in zip(in_three, alone, strict=True):
            np.testing.assert_array_equal(a[1], b[0])
        assert not all(np.array_equal(a[0], a[1]) for a in in_three), "games seeded apart play apart"
    finally:
        three.close()
        one.close()


def test_fire_on_life_loss_presses_fire_at_the_start_and_after_each_lost_life() -> None:
    """Breakout serves only on FIRE: a NOOP-only agent's game ends (5 lives lost) only with the override."""
    bank = VectorGames("BreakoutNoFrameskip-v4", 1, epsilon=0.0, seeds=[0], fire_on_life_loss=True)
    try:
        bank.start([0])
        ended = False
        for _ in range(3000):
            bank.send(np.zeros(1, np.int64))
            if bank.recv().terminated[0]:
                ended = True
                break
        assert ended and bank.fire[0].fired == 5, "FIRE at the start and after each of the 4 lost lives"
    finally:
        bank.close()


def test_random_actions_are_drawn_as_the_wrappers_draw_them() -> None:
    """The bank's epsilon draws are RandomizeAction's for the same seed: the same actions replaced."""
    env = make_env("BreakoutNoFrameskip-v4", train=False, epsilon=0.5, seed=4)
    assert isinstance(env, RandomizeAction)
    theirs = [env.action(0) for _ in range(200)]
    bank = VectorGames("BreakoutNoFrameskip-v4", 1, epsilon=0.5, seeds=[4], fire_on_life_loss=False)
    try:
        ours = [epsilon_action(bank.rngs[0], 0.5, bank.n_actions, 0)[0] for _ in range(200)]
    finally:
        bank.close()
        env.close()
    assert ours == theirs and 50 < sum(a != 0 for a in ours) < 150


def test_a_cut_episode_restarts_with_a_fresh_stack() -> None:
    """The loop's step cap restarts a game: its next stack is one frame repeated, as FrameStack starts."""
    bank = VectorGames("PongNoFrameskip-v4", 2, epsilon=0.0, seeds=[1, 2], fire_on_life_loss=False)
    try:
        bank.start([1, 2])
        play_noops(bank, 80)
        before = bank.stacks[1].copy()
        bank.restart([0], [0])
        assert all(np.array_equal(bank.stacks[0][k], bank.stacks[0][3]) for k in range(3))
        np.testing.assert_array_equal(bank.stacks[1], before)
    finally:
        bank.close()


def test_the_one_game_bank_plays_each_episode_from_its_own_seed() -> None:
    """The single game keeps today's path: episode j of a game starts from reset(seed=seed + j)."""
    bank = WrappedGames("BreakoutNoFrameskip-v4", 1, epsilon=0.0, seeds=[5], fire_on_life_loss=False)
    reference = WrappedGames("BreakoutNoFrameskip-v4", 1, epsilon=0.0, seeds=[6], fire_on_life_loss=False)
    try:
        bank.start([5])
        play_noops(bank, 10)  # type: ignore[arg-type]
        bank.restart([0], [6])
        reference.start([6])
        np.testing.assert_array_equal(bank.stacks, reference.stacks)
    finally:
        bank.close()
        reference.close()
