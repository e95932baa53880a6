"""Play an Atari game whose every action comes from a Triton Inference Server over gRPC.

    python src/app.py --host 127.0.0.1 --port 8001 --sync     # --host: the machine that serves

The command line is ``atari_trtis_demo.play.play_cli.remote_main``; this file is the command users know
(installed as ``atari-play`` by ``pip install -e .``).
No Chainer is needed.
"""

from atari_trtis_demo.core.cli_args import run_cli
from atari_trtis_demo.play.play_cli import remote_main

if __name__ == "__main__":
    run_cli(remote_main)
