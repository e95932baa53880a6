"""Command-line parsing shared by the five commands: one-line errors and range-checked numbers.

:func:`run_cli` runs a command's ``main`` so that a :class:`~atari_trtis_demo.core.errors.UserError`
ends it with one ``error: ...`` line and exit code 2, a :class:`~atari_trtis_demo.core.errors.ServiceError`
(a run-time failure: server down, bad answer) with one line and exit code 1.

argparse prints a usage block and then the error; a user who typed ``--fps -5`` needs
the one line that names the flag and what it takes. Every numeric flag goes through
:func:`int_in` / :func:`float_in`, so a value out of range stops the command before
any work, with exit code 2 like every other bad flag.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

from atari_trtis_demo.core.errors import ServiceError, UserError, one_line

# What each Chainer-side command imports that a client install (./setup.sh --client) leaves out
# (module names). ChainerRL imports gym.
LOCAL_PLAY_MODULES = ("chainer", "chainerrl", "gym")
TRAIN_MODULES = (*LOCAL_PLAY_MODULES, "matplotlib")
CONVERT_MODULES = (*LOCAL_PLAY_MODULES, "onnx", "onnx_chainer", "onnxruntime")
PLOT_MODULES = ("matplotlib",)
SERVER_SIDE_MODULES = frozenset(TRAIN_MODULES + CONVERT_MODULES)


def missing_modules(names: Iterable[str]) -> list[str]:
    """Those of the top-level modules ``names`` that this environment cannot import, in order."""
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def server_install_message(command: str, missing: Iterable[str]) -> str:
    """One line: ``command`` needs these modules, which a client install leaves out; what to run."""
    names = list(missing)
    return (
        f"{command} needs {', '.join(names)}, {'which is' if len(names) == 1 else 'which are'} not installed: a "
        "client install (./setup.sh --client) has only what atari-play needs; run ./setup.sh for training, "
        "conversion, local play and the learning curve"
    )


def needs_server_install(
    command: str, main: Callable[[], int | None], needs: Iterable[str] = sorted(SERVER_SIDE_MODULES)
) -> Callable[[], int | None]:
    """``main``, where a missing Chainer-side package is one ``error:`` line naming what is missing.

    ``pip install`` of this package installs every console script, also on a client-only
    install; without this, ``atari-train`` there ended in a 14-line ModuleNotFoundError.
    The import fails only once a command needs it, so ``--help`` and flag errors still work.
    ``needs``: the modules the command imports from the full install; the line names every one
    of them that is missing, not only the first import that failed (for local play that was
    gym, which ChainerRL imports: installing gym alone would not have helped).
    """

    def guarded() -> int | None:
        try:
            return main()
        except ModuleNotFoundError as e:
            top = (e.name or "").split(".")[0]
            if top not in SERVER_SIDE_MODULES:
                raise
            missing = missing_modules(needs)
            raise UserError(server_install_message(command, missing if top in missing else [*missing, top])) from e

    return guarded


def run_cli(main: Callable[[], int | None]) -> NoReturn:
    """Run a command-line ``main``: a :class:`UserError` becomes ``error: ...`` and exit 2, a
    :class:`ServiceError` (server down, bad answer, timeout) ``error: ...`` and exit 1."""
    try:
        code = main()
    except (UserError, ServiceError) as e:
        # Messages may quote a server's words: printed as one line, without terminal escapes.
        print(f"error: {one_line(e, limit=None)}", file=sys.stderr)
        sys.exit(2 if isinstance(e, UserError) else 1)
    sys.exit(code or 0)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to a flag's help, unless the help already says its default.

    argparse's own ArgumentDefaultsHelpFormatter also prints ``(default: None)`` and
    ``(default: False)``, which tell nothing; a help text that explains a computed
    default (``default: the model's own game``) is left as written.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            default is None
            or default is False
            or default is argparse.SUPPRESS
            or action.nargs == 0  # store_true and friends: the default is "off"
            or "default" in text.lower()
        ):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


def module_prog() -> str | None:
    """``python -m atari_trtis_demo.X`` when this process runs one of the package's modules with ``-m``.

    argparse names a command after ``sys.argv[0]``, which under ``-m`` is the module's file
    (``serve.py``): a usage line a user cannot type. Scripts and console scripts keep argparse's name.
    """
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", None) or ""
    return f"python -m {name}" if name.startswith("atari_trtis_demo.") else None


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line ``error: ...`` (and exit code 2) for a bad flag, and defaults in ``--help``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        if not args and "prog" not in kwargs:
            kwargs["prog"] = module_prog()
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _bounds(low: float | None, high: float | None) -> str:
    def text(bound: float) -> str:  # 2**31 - 1 as 2147483647, not 2.14748e+09
        return str(bound) if isinstance(bound, int) else f"{bound:g}"

    if low is not None and high is not None:
        return f"between {text(low)} and {text(high)}"
    if low is not None:
        return f"at least {text(low)}"
    return f"at most {text(high)}"


def int_in(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer within [low, high] (either bound may be open)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {_bounds(low, high)}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its messages
    return parse


def float_in(low: float | None = None, high: float | None = None, *, low_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a finite number within [low, high] ((low, high] with ``low_open``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
        below = low is not None and (value <= low if low_open else value < low)
        if not math.isfinite(value) or below or (high is not None and value > high):
            bounds = _bounds(low, high)
            if low_open:
                bounds = f"above {low}" + ("" if high is None else f" and at most {high}")
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


port = int_in(1, 65535)
port.__doc__ = "An argparse ``type``: a TCP port, 1-65535."


def output_file(text: str) -> str:
    """An argparse ``type``: a file to write at the end, whose folder must exist now (not after a whole game)."""
    path = os.path.abspath(text)
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text} is a directory; give a file name")
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"cannot write {text}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text}: directory {parent} is not writable")
    return text
