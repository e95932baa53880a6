"""The console scripts of ``pip install .`` (pyproject's ``[project.scripts]``), one per command.

Each runs its command's ``main`` through :func:`~atari_trtis_demo.core.cli_args.run_cli`, as the
2019 script paths do: a :class:`~atari_trtis_demo.core.errors.UserError` is one ``error:`` line
and exit code 2; a command that needs the full install says in one line what a client install
lacks (its own ``main`` does, as for the script paths). The command's module is imported only
when its script runs, so ``atari-play`` never imports Chainer.
"""

from __future__ import annotations

from typing import NoReturn

from atari_trtis_demo.core.cli_args import run_cli


def train() -> NoReturn:
    """``atari-train``, as ``train_src/train_dqn.py``."""
    from atari_trtis_demo.train.train_cli import main

    run_cli(main)


def convert() -> NoReturn:
    """``atari-convert``, as ``onnx_converter_src/converter.py``."""
    from atari_trtis_demo.convert.convert_cli import main

    run_cli(main)


def serve() -> NoReturn:
    """``atari-serve``, as ``python -m atari_trtis_demo.serve``."""
    from atari_trtis_demo.serving.serve import main

    run_cli(main)


def play() -> NoReturn:
    """``atari-play``, as ``src/app.py``: every action from a Triton server."""
    from atari_trtis_demo.play.play_cli import remote_main

    run_cli(remote_main)


def play_local() -> NoReturn:
    """``atari-play-local``, as ``standalone_src/app.py``: the agent run by Chainer here."""
    from atari_trtis_demo.play.play_cli import standalone_main

    run_cli(standalone_main)
