"""Play an Atari game with the trained agent run locally by Chainer: no server.

    python standalone_src/app.py --modelpath results/<run>/best

The command line is ``atari_trtis_demo.play.play_cli.standalone_main``; this file is the command users know
(installed as ``atari-play-local`` by ``pip install -e .``).
"""

from atari_trtis_demo.core.cli_args import run_cli
from atari_trtis_demo.play.play_cli import standalone_main

if __name__ == "__main__":
    run_cli(standalone_main)
