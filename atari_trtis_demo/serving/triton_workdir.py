"""The temporary directory of a running ``serve``: made, owned, its Triton log read, removed once its owner is gone.

Triton's repository of twins, its backends and its log live in a directory under the
system's temp folder (``$TMPDIR``). ``kill -9`` of ``serve`` leaves it behind (Triton itself
dies with ``serve``): the next start removes it, with any process of this user still running
from it and the shared-memory regions of its server. Only directories ``serve`` itself could
have made are considered (:func:`is_workdir`): any user can create files in ``/tmp``.

Triton's output reaches the log through a pipe and :class:`LogPump`, which caps the file
and keeps one older part: clients cannot fill the disk by making Triton log, and a full
disk never blocks Triton. The python backend's shared-memory regions of a server carry a
prefix made from its workdir's name (:func:`shm_prefix`), so a server's regions are known by
name alone (:func:`shm_regions_of`) and removed when that server dies (:func:`remove_shm_regions`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

WORKDIR_PREFIX = "atari-triton-"
# What tempfile.mkdtemp(prefix=WORKDIR_PREFIX) makes: the prefix and 8 of [a-z0-9_].
WORKDIR_NAME = re.compile(r"^atari-triton-[a-z0-9_]{8}$")
OWNER_FILE = "owner.json"  # in the workdir: the pid of the process that started Triton
LOG_FILE = "tritonserver.log"  # in the workdir: Triton's stdout and stderr
LOG_LIMIT = 8 * 2**20  # bytes per log part; the part before is kept as tritonserver.log.1
# The first bytes of each Triton's output stay in memory too: readiness and the cause of a failed
# start are read there, so that they do not depend on the disk (a start logs about 20 KB up to
# its "Started GRPCInferenceService" line, --log-verbose 3 included).
LOG_HEAD_LIMIT = 2**20
SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "triton_python_backend_shm_region_"  # the python backend's own; serve adds its workdir's name
SHM_REGION = re.compile(r"^triton_python_backend_shm_region_[A-Za-z0-9_.-]+$")


def make_workdir() -> Path:
    """A new, empty workdir (mode 0700); :func:`claim_workdir` marks it as this process's once Triton runs."""
    return Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))


def close_to_others(workdir: Path) -> None:
    """Take group and other permissions off everything in ``workdir`` (not through links): a copied
    python model keeps its source's modes, whatever the umask."""
    for path in (workdir, *workdir.rglob("*")):
        with contextlib.suppress(OSError):
            mode = path.lstat().st_mode
            if not stat.S_ISLNK(mode) and mode & 0o077:
                path.chmod(stat.S_IMODE(mode) & 0o700)


def claim_workdir(workdir: Path, tritonserver_pid: int) -> None:
    """Record this process as the owner of ``workdir`` (until then it is being set up and left alone)."""
    (workdir / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "tritonserver": tritonserver_pid}))


def is_workdir(path: Path) -> bool:
    """Whether ``path`` is a directory ``serve`` of this user made: mkdtemp's name, this user's, mode 0700.

    Not a symbolic link: anyone can plant names in the temp folder, and a planted directory
    must never make ``serve`` kill processes or unlink regions.
    """
    try:
        info = path.lstat()
    except OSError:
        return False
    return (
        bool(WORKDIR_NAME.match(path.name))
        and stat.S_ISDIR(info.st_mode)
        and info.st_uid == os.getuid()
        and stat.S_IMODE(info.st_mode) == 0o700
    )


def shm_prefix(workdir: Path) -> str:
    """The prefix of the python backend's region names for the server running from ``workdir``
    (Triton's ``--backend-config=python,shm-region-prefix-name=``): no other server's regions carry it."""
    return f"{SHM_PREFIX}{workdir.name}_"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _names_path(arg: str, path: str) -> bool:
    """Whether a command-line argument names ``path`` or a file below it, whole components only
    (``/tmp/atari-triton-ab`` is not in ``/tmp/atari-triton-abc/x``); ``--flag=PATH`` counts."""
    return any(value == path or value.startswith(path + "/") for value in (arg, arg.partition("=")[2]))


def processes_using(path: str) -> list[int]:
    """Pids of this user's processes with an argument naming ``path`` or a file below it (tritonserver and its
    backend stubs run from the workdir)."""
    path = path.rstrip("/")
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid != os.getuid() or int(pid) == os.getpid():
                continue
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(_names_path(arg, path) for arg in args):
            found.append(int(pid))
    return found


def mapped_shm_regions() -> set[str]:
    """The ``/dev/shm`` names that some process (one this user may inspect) has mapped right now."""
    mapped = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/maps") as maps:
                mapped.update(line.rsplit("/dev/shm/", 1)[1].split()[0] for line in maps if " /dev/shm/" in line)
        except OSError:
            continue
    return mapped


def clean_stale_workdirs(tmpdir: str | None = None) -> list[Path]:
    """Remove what a killed ``serve`` left: its workdir, this user's processes still running from it, and
    its server's shared-memory regions that no process maps.

    Only workdirs this user's ``serve`` made (:func:`is_workdir`); one whose owner process
    is alive is another server's and stays.
    """
    removed = []
    for workdir in Path(tmpdir or tempfile.gettempdir()).glob(WORKDIR_PREFIX + "*"):
        if not is_workdir(workdir):
            continue
        try:
            owner = json.loads((workdir / OWNER_FILE).read_text())["pid"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being set up right now
        if _alive(int(owner)):
            continue
        for pid in processes_using(str(workdir)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        remove_shm_regions(shm_regions_of(workdir) - mapped_shm_regions())
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
# Triton's line for a model it could not load; a python model's reason ends with the stub's Python
# stack, after Triton's escaped newline (a literal backslash-n).
LOAD_FAILURE = re.compile(r"failed to load '(?P<model>[^']*)' version (?P<version>\d+): (?P<reason>.*)")


def triton_errors(text: str, limit: int = 3) -> str:
    """Why Triton failed, from its log ``text``: a taken port by name, a model it could not load with
    Triton's reason (without a python model's stack), else its first real error lines."""
    lines = text.splitlines()
    for line in lines:
        # gRPC's real reason comes first; Triton then calls any failed bind "already in use".
        if reason := next((r for r in BIND_FAILURES if r in line), None):
            return f"tritonserver cannot listen on the address given ({reason})"
        for pattern in PORT_IN_USE:
            if match := pattern.search(line):
                return f"port {match['port']} is in use on {match['address']}"
    for line in lines:
        if match := LOAD_FAILURE.search(line):
            reason = match["reason"].split("\\n", 1)[0].rstrip('"').strip()
            return f"model '{match['model']}' (version {match['version']}) did not load: {reason[:300]}"
    errors = [
        line
        for line in lines
        if (line.startswith("E") or "error" in line.lower() or "Failed" in line)
        and not any(noise in line for noise in CPU_MACHINE_NOISE)
    ]
    return " | ".join(line.strip()[:300] for line in errors[:limit])


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class LogPump:
    """Copies Triton's output from a pipe into ``path``, starting a new part each ``limit`` bytes.

    At most two parts exist (``path`` and ``path.1``): whatever clients make Triton log
    (errors from accept() under a connection flood, verbose logging), the log stays
    under 2 x ``limit``. A Triton writing faster than this copies waits on the pipe. The pipe
    is read to its end whatever the disk does: when a write fails (a full disk) the output is
    dropped, told once through ``warn``, and written again once there is room; a Triton
    blocked on a full pipe would stop answering. The first :data:`LOG_HEAD_LIMIT` bytes also
    stay in memory (:meth:`text`).
    """

    def __init__(self, pipe_fd: int, path: Path, limit: int = LOG_LIMIT, warn: Callable[[str], None] = _warn) -> None:
        self.path, self.limit, self._fd, self._warn = path, limit, pipe_fd, warn
        self.head = bytearray()
        self.dropped = 0  # bytes of output not written to the file
        self._out, self._written = None, 0
        self._thread = threading.Thread(target=self._run, name="triton-log", daemon=True)
        self._thread.start()

    def text(self) -> str:
        """The start of this Triton's output (up to :data:`LOG_HEAD_LIMIT` bytes), whatever the disk did."""
        return bytes(self.head).decode(errors="replace")

    def _run(self) -> None:
        try:
            while chunk := os.read(self._fd, 65536):
                if len(self.head) < LOG_HEAD_LIMIT:
                    self.head += chunk[: LOG_HEAD_LIMIT - len(self.head)]
                try:
                    self._write(chunk)
                except OSError as e:
                    self._drop(chunk, e)
        finally:
            self._close()
            os.close(self._fd)

    def _write(self, chunk: bytes) -> None:
        if self._out is None:
            self._out = open(self.path, "ab")
            self._written = self._out.tell()
        if self._written + len(chunk) > self.limit:
            self._close()
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            self._out, self._written = open(self.path, "ab"), 0
        self._out.write(chunk)
        self._out.flush()  # failure reports read the file while Triton runs
        self._written += len(chunk)

    def _drop(self, chunk: bytes, error: OSError) -> None:
        self._close()  # reopened for the next chunk: the log goes on once there is room again
        if not self.dropped and error.errno != errno.ENOENT:  # ENOENT: the workdir removed at stop
            self._warn(
                f"warning: cannot write Triton's log {self.path} ({error.strerror}): dropping its lines "
                "until there is room; serving goes on"
            )
        self.dropped += len(chunk)

    def _close(self) -> None:
        out, self._out = self._out, None
        if out is not None:
            with contextlib.suppress(OSError):  # a full disk fails the flush in close too; the fd is closed anyway
                out.close()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def shm_regions_of(workdir: Path, shm_dir: Path = SHM_DIR) -> set[str]:
    """The python-backend shared-memory regions of the server running (or that ran) from ``workdir``:
    the names in ``/dev/shm`` with its :func:`shm_prefix`."""
    prefix = shm_prefix(workdir)
    try:
        return {name for name in os.listdir(shm_dir) if name.startswith(prefix)}
    except OSError:
        return set()


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


# The python backend makes an empty directory at each start, under this fixed path (not
# $TMPDIR, so not in the workdir), and removes it only when Triton shuts down cleanly: each
# Triton killed (a death, a wedge, the SIGKILL after the grace) left one behind. A server
# claims those that appeared between its launch and its readiness; another server of the same
# user started in that moment may lose its own empty one early, which costs it one log line at
# its shutdown (the directory only holds a conda-packed EXECUTION_ENV_PATH, which the twin never sets).
PYTHON_ENV_DIR = Path("/tmp")
PYTHON_ENV_PREFIX = "python_env_"


def python_env_dirs(tmp: Path = PYTHON_ENV_DIR) -> set[Path]:
    """This user's python-backend directories in ``tmp`` now (real directories, not links)."""
    mine = set()
    with contextlib.suppress(OSError):
        for path in tmp.glob(PYTHON_ENV_PREFIX + "*"):
            with contextlib.suppress(OSError):
                st = path.lstat()
                if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid():
                    mine.add(path)
    return mine


def remove_empty_dirs(paths: set[Path]) -> None:
    """``rmdir`` each of ``paths``: an empty directory goes, anything with content stays as it is."""
    for path in paths:
        with contextlib.suppress(OSError):
            path.rmdir()
