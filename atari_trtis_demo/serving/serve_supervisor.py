"""Keep a ``serve``d Triton running: restart it on the same ports when it dies, give up after repeated crashes.

One Triton answers every player, so its death (a crash a client provoked, ``kill -9``,
the OOM killer) must not end the service: :func:`supervise` notices it within 0.2 s,
logs the cause (the signal's name or the exit code, and Triton's last error lines),
removes the dead server's shared-memory regions and starts a new one after a short
backoff (0.5, 1, 2, 4 s). A Triton that is alive but answers no health check over gRPC
for :data:`WEDGED_AFTER_S` (stopped, deadlocked, blocked on a full pipe) serves nobody
either: it is killed and restarted the same way, and counts as a death. Five deaths within
five minutes mean something is wrong that restarting will not fix: it stops with one
``error:`` line and exit code 1.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable

from atari_trtis_demo.core.errors import UserError
from atari_trtis_demo.serving.triton_process import StartCancelled, TritonServer, describe_exit
from atari_trtis_demo.serving.triton_workdir import triton_errors

MAX_CRASHES = 5
CRASH_WINDOW_S = 300.0
BACKOFF_S = (0.5, 1.0, 2.0, 4.0)  # before the 1st, 2nd, 3rd, 4th+ restart within the window
HEALTH_EVERY_S = 1.0  # how often Triton is asked whether it is live
HEALTH_TIMEOUT_S = 1.0  # the deadline of one such call (Ctrl-C waits for it at most this long)
WEDGED_AFTER_S = 10.0  # no answer for this long: wedged


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _sleep(seconds: float, stopping: Callable[[], bool]) -> None:
    deadline = time.monotonic() + seconds
    while not stopping() and time.monotonic() < deadline:
        time.sleep(0.05)


def supervise(
    server: TritonServer,
    *,
    stopping: Callable[[], bool],
    ready_timeout: float = 120.0,
    max_crashes: int = MAX_CRASHES,
    window: float = CRASH_WINDOW_S,
    wedged_after: float = WEDGED_AFTER_S,
    say: Callable[[str], None] = _say,
) -> int:
    """Watch ``server`` until ``stopping()``: 0; or until ``max_crashes`` deaths (a wedge is one) within
    ``window`` s: 1, told in one line."""
    crashes: deque[float] = deque()
    answered = next_check = time.monotonic()
    while not stopping():
        if server.process.poll() is None:
            if time.monotonic() >= next_check:
                if server.answers_health(HEALTH_TIMEOUT_S):
                    answered = time.monotonic()
                next_check = time.monotonic() + HEALTH_EVERY_S
            if time.monotonic() - answered < wedged_after:
                time.sleep(0.2)
                continue
            # Alive but silent: the restart below kills it (SIGKILL ends a stopped process too).
            cause, detail = f"answered no health check for {wedged_after:g} s (wedged)", ""
        else:
            cause, detail = describe_exit(server.process.returncode), triton_errors(server.log_text())
        now = time.monotonic()
        crashes.append(now)
        while crashes and crashes[0] < now - window:
            crashes.popleft()
        if len(crashes) >= max_crashes:
            kept = server.keep_log()
            print(
                f"error: tritonserver died {len(crashes)} times within {window / 60:g} minutes, last it {cause}"
                f"{': ' + detail if detail else ''}; not restarting it ({kept})",
                file=sys.stderr,
                flush=True,
            )
            return 1
        delay = BACKOFF_S[min(len(crashes), len(BACKOFF_S)) - 1]
        say(
            f"tritonserver {cause}{': ' + detail if detail else ''}; restarting it on the same ports in {delay:g} s "
            f"(death {len(crashes)} of {max_crashes} allowed within {window / 60:g} minutes)"
        )
        _sleep(delay, stopping)
        if stopping():
            break
        started = time.monotonic()
        try:
            server.restart(ready_timeout, cancelled=stopping)
        except StartCancelled:
            break
        except UserError as e:
            say(f"restart failed: {e}")  # the dead process counts as the next death
            continue
        say(f"tritonserver restarted: ready again after {time.monotonic() - started:.1f} s")
        answered = next_check = time.monotonic()
    return 0
