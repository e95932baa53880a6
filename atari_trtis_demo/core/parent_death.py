"""Children that die with their parent: Linux's ``PR_SET_PDEATHSIG``.

A killed parent (kill -9 included) runs no clean-up of its own; the kernel's signal is the only
thing that then ends its players' worker processes and serve's tritonserver, which would
otherwise keep playing, or keep holding the ports, with no one to stop them.
"""

from __future__ import annotations

import ctypes
import signal

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(signum: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``signum`` to this process when the thread that started it dies.

    False where that cannot be asked (not Linux): the parent's own clean-up is then the only one.
    Safe between fork and exec: one system call, no allocation worth the name.
    """
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signum)) == 0
    except (OSError, AttributeError):
        return False
