"""The one error type a user sees as a single line instead of a traceback (see ``cli_args.run_cli``)."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or environment: the message names the file, flag or tensor at fault."""
