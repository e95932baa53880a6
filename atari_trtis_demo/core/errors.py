"""The error types a user sees as a single line instead of a traceback (see ``cli_args.run_cli``).

Two kinds, two exit codes: a :class:`UserError` is the user's to fix (a flag, a file
they named, a key the server refuses): exit 2. A :class:`ServiceError` is a failure at
run time that the same command may survive when tried again (the server down, a bad
answer, a timeout): exit 1.
"""

from __future__ import annotations

import re

# Terminal escape sequences: CSI (colours, cursor moves), OSC (window titles, links: up to BEL or ESC \),
# and the two-character ESC forms. A server's error text must not drive the player's terminal.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?|\x9b[0-?]*[ -/]*[@-~]")
ONE_LINE_LIMIT = 200


class UserError(Exception):
    """Bad input or environment: the message names the file, flag or tensor at fault (exit 2)."""


class ServiceError(Exception):
    """A run-time failure of something the command relies on (a server, the network): exit 1."""


def one_line(text: object, limit: int | None = ONE_LINE_LIMIT) -> str:
    """``text`` as one printable line: escape sequences and control characters dropped, whitespace runs
    made one space, cut to ``limit`` characters (None: no cut) with an ellipsis.

    For text that comes from elsewhere (a server's error details) before it reaches a terminal.
    """
    text = _ESCAPES.sub("", str(text))
    # Newlines and tabs become spaces; other non-printable characters (controls, bidi overrides,
    # unassigned code points) are dropped.
    text = "".join(c if c.isprintable() else " " if c.isspace() else "" for c in text)
    text = " ".join(text.split())
    if limit is not None and len(text) > limit:
        text = text[: max(limit - 3, 0)].rstrip() + "..."
    return text
