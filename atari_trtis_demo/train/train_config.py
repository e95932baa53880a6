"""Training's typed config: one dataclass whose fields are its flags (:mod:`atari_trtis_demo.core.typed_flags`).

Flags and defaults are those of ChainerRL's ``examples/atari/reproduction/dqn/train_dqn.py``;
the fields after ``n_best_episodes`` are this project's additions (see docs/deviations.md).
Each default, range check and help is written here once; the field order is the order of
``args.txt`` in a run directory, as argparse's was.
"""

from __future__ import annotations

from dataclasses import dataclass

from atari_trtis_demo.core.cli_args import int_in
from atari_trtis_demo.core.contract import DEFAULT_ENV_ID
from atari_trtis_demo.core.typed_flags import flag


@dataclass
class TrainOptions:
    """What ``train_src/train_dqn.py`` is asked to do."""

    env: str = flag(DEFAULT_ENV_ID, help="Atari env id (or ALE/<Game>-v5)")
    outdir: str = flag("results", help="parent of the timestamped run directory")
    seed: int = flag(0, type=int_in(0, 2**31 - 1), help="random seed [0, 2 ** 31)")
    gpu: int = flag(0, type=int_in(-1), help="GPU to use, -1 for the CPU")
    demo: bool = flag(False, action="store_true", help="only evaluate the (loaded) agent")
    load_pretrained: bool = flag(False, action="store_true", help="start from ChainerRL's model zoo")
    pretrained_type: str = flag(
        "best",
        choices=["best", "final"],
        help="with --load-pretrained: the zoo's best evaluated agent or its final one",
    )
    load: str | None = flag(
        None,
        metavar="DIR",
        help="start a new run from this agent directory's networks and optimizer, at step 0: epsilon decays "
        "again from 1.0 (to continue a run at its step and epsilon, use --resume) (default: a new agent)",
    )
    logging_level: int = flag(20, type=int_in(0, 50), help="level of log.txt: 10 DEBUG, 20 INFO, ...")
    steps: int = flag(5 * 10**7, type=int_in(1), help="total agent steps (4 frames each)")
    # ChainerRL asserts that the replay start size covers one minibatch (32).
    replay_start_size: int = flag(5 * 10**4, type=int_in(32), help="transitions before updates start (>= 32)")
    eval_n_steps: int = flag(125000, type=int_in(1), help="agent steps per evaluation")
    eval_interval: int = flag(250000, type=int_in(1), help="training steps between evaluations")
    n_best_episodes: int = flag(30, type=int_in(1), help="episodes the best agent is scored on at the end")
    # This project's additions.
    checkpoint_freq: int = flag(250000, type=int_in(0), help="save a resumable checkpoint every N steps (0: none)")
    resume: str | None = flag(
        None,
        metavar="DIR",
        help="continue a run at its step, with its epsilon and optimizer state, in a new run directory: DIR is a "
        "checkpoint, a run directory (its newest checkpoint) or an --outdir (the checkpoint with the most steps); "
        "running the same command again after Ctrl-C continues by itself",
    )
    final_exploration_steps: int = flag(10**6, type=int_in(1), help="steps over which epsilon decays")
    replay_capacity: int = flag(10**6, type=int_in(1), help="replay buffer size in transitions")
