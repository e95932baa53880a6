"""``python -m atari_trtis_demo.plots``: the learning-curve command, kept as it was typed.

The plotting code lives in :mod:`atari_trtis_demo.train.plots`; this entry only runs its ``main``.
"""

from atari_trtis_demo.core.cli_args import PLOT_MODULES, needs_server_install, run_cli
from atari_trtis_demo.train.plots import main

if __name__ == "__main__":
    run_cli(needs_server_install("python -m atari_trtis_demo.plots", main, PLOT_MODULES))
