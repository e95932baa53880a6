"""The temporary directory of a running ``serve``: made, owned, its Triton log read, removed once its owner is gone.

Triton's repository of twins, its backends and its log live in a directory under the
system's temp folder. ``kill -9`` of ``serve`` leaves it behind (Triton itself dies with
``serve``): the next start removes it, with any process still running from it.

Triton's output reaches the log through a pipe and :class:`LogPump`, which caps the file
and keeps one older part: clients cannot fill the disk by making Triton log. The python
backend's shared-memory regions of a server are known by its stubs' command lines
(:func:`shm_regions_of`) and removed when that server dies (:func:`remove_shm_regions`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
import threading
from pathlib import Path

WORKDIR_PREFIX = "atari-triton-"
OWNER_FILE = "owner.json"  # in the workdir: the pid of the process that started Triton
LOG_FILE = "tritonserver.log"  # in the workdir: Triton's stdout and stderr
# In the workdir: the names of its backend stubs' /dev/shm regions, so that the next start
# removes them when ``serve`` itself was killed (SIGKILL leaves it no chance to clean up).
SHM_REGIONS_FILE = "shm-regions"
LOG_LIMIT = 8 * 2**20  # bytes per log part; the part before is kept as tritonserver.log.1
SHM_DIR = Path("/dev/shm")
SHM_REGION = re.compile(r"^triton_python_backend_shm_region_[A-Za-z0-9_.-]+$")


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
        with contextlib.suppress(OSError):
            remove_shm_regions(set((workdir / SHM_REGIONS_FILE).read_text().split()))
        shutil.rmtree(workdir, ignore_errors=True)
        removed.append(workdir)
    return removed


# Lines every start on a machine without a GPU logs: not the reason a start failed.
CPU_MACHINE_NOISE = ("CudaDriverHelper", "NVML", "DCGM", "pinned memory", "CUDA")
BIND_FAILURES = ("Name or service not known", "Cannot assign requested address", "Address family not supported")
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
        # gRPC's real reason comes first; Triton then calls any failed bind "already in use".
        if reason := next((r for r in BIND_FAILURES if r in line), None):
            return f"tritonserver cannot listen on the address given ({reason})"
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


class LogPump:
    """Copies Triton's output from a pipe into ``path``, starting a new part each ``limit`` bytes.

    At most two parts exist (``path`` and ``path.1``): whatever clients make Triton log
    (errors from accept() under a connection flood, verbose logging), the log stays
    under 2 x ``limit``. A Triton writing faster than this copies waits on the pipe.
    """

    def __init__(self, pipe_fd: int, path: Path, limit: int = LOG_LIMIT) -> None:
        self.path, self.limit, self._fd = path, limit, pipe_fd
        self._thread = threading.Thread(target=self._run, name="triton-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        out = open(self.path, "ab")
        try:
            written = out.tell()
            while chunk := os.read(self._fd, 65536):
                if written + len(chunk) > self.limit:
                    out.close()
                    os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                    out, written = open(self.path, "ab"), 0
                out.write(chunk)
                out.flush()  # readiness and failure reports read the file while Triton runs
                written += len(chunk)
        except OSError:
            pass  # the workdir was removed under a stopped server
        finally:
            out.close()
            os.close(self._fd)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def shm_regions_of(workdir: Path) -> set[str]:
    """The python-backend shared-memory regions of the server running from ``workdir``.

    Each backend stub gets its region's name on its command line (its second
    argument); no other server's stub runs from this workdir.
    """
    regions = set()
    for pid in processes_using(str(workdir)):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        regions.update(arg for arg in args if SHM_REGION.match(arg))
    return regions


def record_shm_regions(workdir: Path, names: set[str]) -> None:
    """Write ``names`` into ``workdir`` for :func:`clean_stale_workdirs`, should ``serve`` be killed."""
    with contextlib.suppress(OSError):
        (workdir / SHM_REGIONS_FILE).write_text("".join(f"{name}\n" for name in sorted(names)))


def remove_shm_regions(names: set[str], shm_dir: Path = SHM_DIR) -> list[str]:
    """Unlink those of ``names`` still in ``/dev/shm`` and owned by this user: a dead server's leftovers."""
    removed = []
    for name in sorted(names):
        if not SHM_REGION.match(name):
            continue
        path = shm_dir / name
        with contextlib.suppress(OSError):
            if path.stat().st_uid == os.getuid():
                path.unlink()
                removed.append(name)
    return removed
