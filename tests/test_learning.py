"""The DQN wiring learns: the project's agent, env adapter and training loop on a tiny task.

Atari is far too slow to learn on in a test, so the Nature network is swapped for a
small MLP and the game for a corridor; everything else is what train_dqn.py runs:
make_agent's DQN (RMSpropGraves, Huber loss, epsilon decay, target network),
OldGymAPI, and train_with_evaluation around ChainerRL's own loop.
"""

from __future__ import annotations

import io
from pathlib import Path

import gymnasium as gym
import numpy as np
from chainerrl import misc, q_functions

from atari_trtis_demo.core.envs import OldGymAPI
from atari_trtis_demo.train.agent import make_agent
from atari_trtis_demo.train.training import train_with_evaluation

LENGTH = 8
TIME_LIMIT = 30


class Corridor(gym.Env):
    """Start at cell 0; action 1 moves right, 0 left; reward 1 on reaching the last cell."""

    observation_space = gym.spaces.Box(0.0, 1.0, (LENGTH,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.position = 0
        return self._obs(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.position = max(0, self.position + (1 if action == 1 else -1))
        done = self.position == LENGTH - 1
        return self._obs(), float(done), done, False, {}

    def _obs(self) -> np.ndarray:
        obs = np.zeros(LENGTH, np.float32)
        obs[self.position] = 1.0
        return obs


def make_corridor(seed: int) -> OldGymAPI:
    return OldGymAPI(gym.wrappers.TimeLimit(Corridor(), TIME_LIMIT), seed=seed)


def mean_return(env: OldGymAPI, policy, episodes: int) -> float:
    total = 0.0
    for _ in range(episodes):
        obs, done, info = env.reset(), False, {}
        while not done and not info.get("needs_reset"):
            obs, reward, done, info = env.step(policy(obs))
            total += reward
    return total / episodes


def test_dqn_learns_clearly_better_than_random_play(tmp_path: Path) -> None:
    misc.set_random_seed(0)
    rng = np.random.default_rng(0)
    random_score = mean_return(make_corridor(1), lambda obs: int(rng.integers(2)), 500)

    agent = make_agent(
        2,
        q_function=q_functions.FCStateQFunctionWithDiscreteAction(LENGTH, 2, n_hidden_channels=32, n_hidden_layers=1),
        phi=lambda x: np.asarray(x, dtype=np.float32),
        replay_start_size=100,
        final_exploration_steps=1500,
        target_update_interval=100,
        update_interval=1,
        lr=1e-3,
    )
    evaluator = train_with_evaluation(
        agent,
        make_corridor(2),
        make_corridor(3),
        steps=3000,
        outdir=str(tmp_path),
        eval_n_steps=None,
        eval_n_episodes=5,
        eval_interval=500,
        stream=io.StringIO(),
    )
    trained_score = mean_return(make_corridor(4), agent.act, 20)

    assert random_score < 0.5, f"the task is too easy for random play: {random_score}"
    assert trained_score == 1.0, f"trained agent: {trained_score}, random play: {random_score}"
    assert evaluator.max_score == 1.0
    assert (tmp_path / "best" / "model.npz").exists()
