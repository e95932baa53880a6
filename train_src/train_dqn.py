"""Train a ChainerRL DQN on an Atari game: ChainerRL's reproduction script on ale-py.

    python train_src/train_dqn.py --env BreakoutNoFrameskip-v4 --gpu -1

The logic lives in ``atari_trtis_demo.train.train_cli``; this file is the command users know
(installed as ``atari-train`` by ``pip install -e .``).
"""

from atari_trtis_demo.core.cli_args import run_cli
from atari_trtis_demo.train.train_cli import main

if __name__ == "__main__":
    run_cli(main)
