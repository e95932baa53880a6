"""The env off the GIL? ale-py's ``AtariVectorEnv`` against this project's wrappers: CPU per game step, frames.

    .venv/bin/python bench/bench_vector_env.py [--games 32] [--steps 150]

Both step ``--games`` Breakout games ``--steps`` agent steps with the same random
actions (no server: the env's share of a game step alone), sides alternated twice:

- the wrappers of ``envs.make_env`` (what every player uses: Python, one game at a time);
- ``AtariVectorEnv`` (C++, the DeepMind preprocessing inside) with 1 thread, then 2.

Then the frames: one game through the project's chain without its random parts
(emulator, MaxAndSkip, WarpFrame, FrameStack: no no-op starts, no random actions)
against ``AtariVectorEnv(noop_max=0, use_fire_reset=False)``, stack by stack, with the
same actions; the first stack of an episode is known to differ (zeros where the
project repeats the first frame), and so do the next two, which still hold some of
that fill: those are counted apart.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from ale_py.vector_env import AtariVectorEnv

from atari_trtis_demo.core.atari_wrappers import FrameStack, MaxAndSkip, WarpFrame
from atari_trtis_demo.core.envs import make_atari_emulator, make_env

ENV_ID = "BreakoutNoFrameskip-v4"


def wrappers(games: int, actions: np.ndarray) -> float:
    envs = [make_env(ENV_ID, train=False, seed=i) for i in range(games)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
    start = time.process_time()
    for row in actions:
        for env, action in zip(envs, row, strict=True):
            obs, _, terminated, truncated, _ = env.step(int(action))
            np.asarray(obs)  # the stack a player sends is built every step
            if terminated or truncated:
                env.reset()
    cpu = time.process_time() - start
    for env in envs:
        env.close()
    return cpu


def vector(games: int, actions: np.ndarray, threads: int) -> float:
    env = AtariVectorEnv("breakout", games, num_threads=threads, reward_clipping=False, use_fire_reset=False)
    env.reset(seed=0)
    start = time.process_time()
    for row in actions:
        env.step(row)  # resets by itself (next-step autoreset)
    cpu = time.process_time() - start
    env.close()
    return cpu


def frames(steps: int) -> tuple[int, int, int]:
    """(stacks equal, stacks different, of which among the episode's first 3: those that still hold the fill of
    the first stack) over one game of at most ``steps`` steps."""
    rng = np.random.default_rng(1)
    ours = FrameStack(WarpFrame(MaxAndSkip(make_atari_emulator(ENV_ID))), 4)
    theirs = AtariVectorEnv("breakout", 1, num_threads=1, noop_max=0, use_fire_reset=False, reward_clipping=False)
    a, _ = ours.reset(seed=3)
    b, _ = theirs.reset(seed=3)
    equal = different = first = 0
    for step in range(steps):
        if np.array_equal(np.asarray(a), b[0]):
            equal += 1
        else:
            different += 1
            first += step < 3
        action = int(rng.integers(4))
        a, _, terminated, truncated, _ = ours.step(action)
        b, _, vterminated, vtruncated, _ = theirs.step(np.array([action]))
        if terminated or truncated:
            break
    theirs.close()
    return equal, different, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--games", type=int, default=32)
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    actions = np.random.default_rng(0).integers(0, 4, (args.steps, args.games))
    totals = {"wrappers": 0.0, "vector, 1 thread": 0.0, "vector, 2 threads": 0.0}
    for _ in range(2):
        totals["wrappers"] += wrappers(args.games, actions)
        totals["vector, 1 thread"] += vector(args.games, actions, 1)
        totals["vector, 2 threads"] += vector(args.games, actions, 2)
    n = 2 * args.games * args.steps
    base = totals["wrappers"] / n
    print(f"{args.games} Breakout games, {args.steps} agent steps, twice; process CPU per game step:")
    for name, cpu in totals.items():
        print(f"  {name:18s} {1e3 * cpu / n:.3f} ms ({cpu / n / base:.2f}x the wrappers)")
    equal, different, first = frames(1000)
    print(f"frames, one game: {equal} stacks equal, {different} differ ({first} among the episode's first 3)")


if __name__ == "__main__":
    main()
