"""``python -m atari_trtis_demo.serve``: the 2019-era module command, kept as it was typed.

The server's code lives in :mod:`atari_trtis_demo.serving.serve`; this entry only runs its
``main`` so that the command (and its usage line, "python -m atari_trtis_demo.serve") stays.
"""

from atari_trtis_demo.core.cli_args import run_cli
from atari_trtis_demo.serving.serve import main

if __name__ == "__main__":
    run_cli(main)
