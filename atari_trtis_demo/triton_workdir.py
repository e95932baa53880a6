"""The temporary directory of a running ``serve``: made, owned, its Triton log read, removed once its owner is gone.

Triton's repository of twins, its backends and its log live in a directory under the
system's temp folder. ``kill -9`` of ``serve`` leaves it behind (Triton itself dies with
``serve``): the next start removes it, with any process still running from it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path

WORKDIR_PREFIX = "atari-triton-"
OWNER_FILE = "owner.json"  # in the workdir: the pid of the process that started Triton
LOG_FILE = "tritonserver.log"  # in the workdir: Triton's stdout and stderr


def make_workdir() -> Path:
    """A new, empty workdir; :func:`claim_workdir` marks it as this process's once Triton runs."""
    return Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))


def claim_workdir(workdir: Path, tritonserver_pid: int) -> None:
    """Record this process as the owner of ``workdir`` (until then it is being set up and left alone)."""
    (workdir / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "tritonserver": tritonserver_pid}))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def processes_using(path: str) -> list[int]:
    """Pids whose command line mentions ``path`` (tritonserver and its backend stubs run from the workdir)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if path in cmdline and int(pid) != os.getpid():
            found.append(int(pid))
    return found


def clean_stale_workdirs(tmpdir: str | None = None) -> list[Path]:
    """Remove what a killed ``serve`` left: its temporary directory and any process still running from it.

    A workdir whose owner process is alive is another server's and stays.
    """
    removed = []
    for workdir in Path(tmpdir or tempfile.gettempdir()).glob(WORKDIR_PREFIX + "*"):
        try:
            owner = json.loads((workdir / OWNER_FILE).read_text())["pid"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being set up right now, or not ours
        if _alive(int(owner)):
            continue
        for pid in processes_using(str(workdir)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(workdir, ignore_errors=True)
        removed.append(workdir)
    return removed


# Lines every start on a machine without a GPU logs: not the reason a start failed.
CPU_MACHINE_NOISE = ("CudaDriverHelper", "NVML", "DCGM", "pinned memory", "CUDA")
PORT_IN_USE = (
    re.compile(r"resolved for '(?P<address>[^']*):(?P<port>\d+)'"),  # gRPC
    re.compile(r"Socket '(?P<address>[^']*):(?P<port>\d+)' already in use"),  # HTTP, metrics
)


def triton_errors(log_path: Path, limit: int = 3) -> str:
    """Why Triton failed, from its log: a taken port by name, else its first real error lines."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in lines:
        for pattern in PORT_IN_USE:
            if match := pattern.search(line):
                return f"port {match['port']} is in use on {match['address']}"
    errors = [
        line
        for line in lines
        if (line.startswith("E") or "error" in line.lower() or "Failed" in line)
        and not any(noise in line for noise in CPU_MACHINE_NOISE)
    ]
    return " | ".join(line.strip()[:300] for line in errors[:limit])
