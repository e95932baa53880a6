"""The one error type a user sees as a single line instead of a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad input or environment: the message names the file, flag or tensor at fault."""


def run_cli(main: Callable[[], int | None]) -> None:
    """Run a command-line ``main``; a :class:`UserError` becomes ``error: ...`` and exit 2."""
    try:
        code = main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
