"""Training speed of train_dqn.py's loop against a plain ChainerRL reference loop.

Both sides train the same DQN (the reproduction script's hyperparameters) on the same
preprocessed env for the same steps, alternating in one process so that machine
noise hits both alike. Two phases are timed: filling the replay buffer (acting
only) and learning (one update every 4 steps, the steady state of a long run).

    .venv/bin/python bench/bench_training.py [--rounds 3] [--env BreakoutNoFrameskip-v4]

Reference: ``chainerrl.experiments.train_agent_with_evaluation`` with a stock
``chainerrl.agents.DQN``. Ours: ``atari_trtis_demo.train.training.train_with_evaluation``
with ``AtomicSaveDQN``, the progress line and the checkpoint hook.
"""

from __future__ import annotations

import argparse
import io
import logging
import statistics
import tempfile
import time

import numpy as np
from chainerrl import agents, misc
from chainerrl.experiments import train_agent_with_evaluation

from atari_trtis_demo.core.contract import DEFAULT_ENV_ID
from atari_trtis_demo.core.envs import OldGymAPI, make_env
from atari_trtis_demo.train.agent import make_agent
from atari_trtis_demo.train.training import train_with_evaluation

# (name, steps, replay_start_size): acting only, then learning from step 100 on.
PHASES = [("acting (replay fill)", 1500, 10**6), ("learning (updates)", 400, 100)]


def stock_dqn(n_actions: int, replay_start_size: int) -> agents.DQN:
    """A plain ChainerRL DQN with the same parts as make_agent's (no atomic save)."""
    ours = make_agent(n_actions, replay_start_size=replay_start_size)
    return agents.DQN(
        ours.model,
        ours.optimizer,
        ours.replay_buffer,
        ours.gamma,
        ours.explorer,
        replay_start_size=replay_start_size,
        target_update_interval=10**4,
        clip_delta=True,
        update_interval=4,
        batch_accumulator="sum",
        phi=ours.phi,
    )


def run(side: str, env_id: str, steps: int, replay_start_size: int, seed: int) -> float:
    misc.set_random_seed(seed)
    env = OldGymAPI(make_env(env_id, train=True), seed=seed)
    eval_env = OldGymAPI(make_env(env_id, train=False, seed=seed + 1), seed=seed + 1)
    n = env.action_space.n
    big = 10**9  # no evaluation and no checkpoint inside the timed window
    with tempfile.TemporaryDirectory() as outdir:
        start = time.perf_counter()
        if side == "reference":
            train_agent_with_evaluation(
                stock_dqn(n, replay_start_size), env, steps, eval_n_steps=None, eval_n_episodes=1,
                eval_interval=big, outdir=outdir, eval_env=eval_env, save_best_so_far_agent=True,
            )  # fmt: skip
        else:
            train_with_evaluation(
                make_agent(n, replay_start_size=replay_start_size), env, eval_env, steps=steps, outdir=outdir,
                eval_n_steps=None, eval_n_episodes=1, eval_interval=big, checkpoint_freq=big, stream=io.StringIO(),
            )  # fmt: skip
        return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--env", default=DEFAULT_ENV_ID)
    args = parser.parse_args()
    logging.disable(logging.INFO)  # ChainerRL logs every episode; the bench prints its own lines
    print(f"env {args.env}, {args.rounds} rounds, sides alternate within each round")
    for name, steps, start_size in PHASES:
        rates: dict[str, list[float]] = {"reference": [], "ours": []}
        for r in range(args.rounds):
            order = ["reference", "ours"] if r % 2 == 0 else ["ours", "reference"]
            for side in order:
                rates[side].append(run(side, args.env, steps, start_size, seed=r))
        ref, ours = statistics.median(rates["reference"]), statistics.median(rates["ours"])
        ratios = [o / f for o, f in zip(rates["ours"], rates["reference"], strict=True)]
        print(
            f"{name:22s} {steps:5d} steps  reference {ref:7.1f} steps/s  ours {ours:7.1f} steps/s  "
            f"ratio ours/reference median {np.median(ratios):.3f} (per round: {', '.join(f'{x:.3f}' for x in ratios)})"
        )


if __name__ == "__main__":
    main()
