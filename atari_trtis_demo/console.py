"""The console scripts of ``pip install .`` (pyproject's ``[project.scripts]``), one per command.

Each runs its command's ``main`` through :func:`~atari_trtis_demo.cli_args.run_cli`, as the
2019 script paths do: a :class:`~atari_trtis_demo.errors.UserError` is one ``error:`` line
and exit code 2. The command's module is imported only when its script runs, so
``atari-play`` never imports Chainer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

from atari_trtis_demo.cli_args import run_cli
from atari_trtis_demo.errors import UserError

# What training, conversion and local play import that a client install (./setup.sh --client) leaves out.
SERVER_SIDE_MODULES = frozenset({"chainer", "chainerrl", "onnx_chainer", "onnx", "onnxruntime", "gym", "matplotlib"})


def needs_server_install(command: str, main: Callable[[], int | None]) -> Callable[[], int | None]:
    """``main``, where a missing Chainer-side package is one ``error:`` line saying what to install.

    ``pip install`` of this package installs every console script, also on a client-only
    install; without this, ``atari-train`` there ended in a 14-line ModuleNotFoundError.
    The import fails only once a command needs it, so ``--help`` and flag errors still work.
    """

    def guarded() -> int | None:
        try:
            return main()
        except ModuleNotFoundError as e:
            top = (e.name or "").split(".")[0]
            if top not in SERVER_SIDE_MODULES:
                raise
            raise UserError(
                f"{command} needs Chainer's side of the project ({top} is not installed), which a client install "
                "(./setup.sh --client) leaves out: "
                "run ./setup.sh for training, conversion and local play (or use atari-play, which needs no Chainer)"
            ) from e

    return guarded


def train() -> NoReturn:
    """``atari-train``, as ``train_src/train_dqn.py``."""
    from atari_trtis_demo.train_cli import main

    run_cli(needs_server_install("atari-train", main))


def convert() -> NoReturn:
    """``atari-convert``, as ``onnx_converter_src/converter.py``."""
    from atari_trtis_demo.convert_cli import main

    run_cli(needs_server_install("atari-convert", main))


def serve() -> NoReturn:
    """``atari-serve``, as ``python -m atari_trtis_demo.serve``."""
    from atari_trtis_demo.serve import main

    run_cli(main)


def play() -> NoReturn:
    """``atari-play``, as ``src/app.py``: every action from a Triton server."""
    from atari_trtis_demo.play_cli import remote_main

    run_cli(remote_main)


def play_local() -> NoReturn:
    """``atari-play-local``, as ``standalone_src/app.py``: the agent run by Chainer here."""
    from atari_trtis_demo.play_cli import standalone_main

    run_cli(needs_server_install("atari-play-local", standalone_main))
