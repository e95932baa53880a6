"""A tritonserver process of ``serve``: started, checked ready, restarted, stopped with everything it left.

:class:`TritonServer` holds one running tritonserver with its command line, ports,
workdir and shared-memory regions; :meth:`TritonServer.restart` replaces a dead one on
the same ports, :meth:`TritonServer.stop` ends it within 5 s even when it is wedged.
:func:`wait_until_ready` is the readiness check (over TLS when it serves TLS, with the
players' key when one is set). :mod:`atari_trtis_demo.serve` builds the command line.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from atari_trtis_demo.core.errors import UserError
from atari_trtis_demo.core.keys import PLAYER_HEADER
from atari_trtis_demo.core.parent_death import die_with_parent
from atari_trtis_demo.kserve import kserve_v2_pb2 as pb
from atari_trtis_demo.kserve.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from atari_trtis_demo.serving.owner_only import restrict_to_owner
from atari_trtis_demo.serving.serve_security import (
    Access,
    grpc_metadata,
    local_address,
    triton_address,
    triton_http_address,
)
from atari_trtis_demo.serving.triton_twin import server_environment
from atari_trtis_demo.serving.triton_workdir import (
    LogPump,
    claim_workdir,
    processes_using,
    python_env_dirs,
    remove_empty_dirs,
    remove_shm_regions,
    shm_regions_of,
    triton_errors,
)


def describe_exit(returncode: int | None) -> str:
    """How a process ended, never empty: 'was killed by SIGKILL', 'exited with code 1'."""
    if returncode is None:
        return "is still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with code {returncode}"


def _start_child(*, raise_nofile: bool = True) -> None:  # pragma: no cover (runs in the child between fork and exec)
    # The kernel sends SIGKILL to Triton when the thread that started it dies, even
    # by kill -9: no server outlives `serve` holding its ports.
    die_with_parent()
    # What Triton creates is its user's alone: the python backend made its /dev/shm regions,
    # which carry every player's frames and Q-values, 0644 (readable by any local user).
    restrict_to_owner()
    if raise_nofile:
        # At the usual soft limit of 1,024, about 1,000 idle connections made Triton log
        # "Error from accept()" at 57 MB/s and refuse everyone else.
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class StartCancelled(Exception):
    """SIGTERM or Ctrl-C arrived while Triton was starting: stop quietly, no error."""


@dataclass
class TritonServer:
    """A running tritonserver, its ports and its temporary files; :meth:`restart` replaces a dead one."""

    process: subprocess.Popen
    address: str
    http_port: int
    grpc_port: int
    metrics_port: int
    models: list[str]
    workdir: Path
    log_path: Path
    http_address: str = ""  # where HTTP and metrics listen; "" = address
    tls_cert: Path | None = None
    access: Access | None = None
    admin_key_file: Path | None = None
    command: list[str] = field(default_factory=list)
    log_pump: LogPump | None = None
    serves_http: bool = True  # False: --no-http, no HTTP or metrics listener
    # The python backend's directories in /tmp: those there before this Triton started, and
    # those it made (triton_workdir.PYTHON_ENV_DIR), removed once it has ended.
    python_envs_before: set[Path] = field(default_factory=set)
    python_envs: set[Path] = field(default_factory=set)

    @property
    def grpc_target(self) -> str:
        return f"{triton_address(self.address)}:{self.grpc_port}"

    @property
    def shm_regions(self) -> set[str]:
        """The python backend's ``/dev/shm`` regions of this server (its workdir's prefix)."""
        return shm_regions_of(self.workdir)

    def log_text(self) -> str:
        """This Triton's log: the file's current part, or its first lines kept in memory when the
        file cannot tell (lines dropped on a full disk, the file unreadable)."""
        if self.log_pump is not None and self.log_pump.dropped:
            return self.log_pump.text()
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return self.log_pump.text() if self.log_pump is not None else ""

    def keep_log(self) -> str:
        """Keep a copy of Triton's log for the owner (:meth:`stop` removes the workdir): beside the workdir,
        in the temp folder the user chose, readable by this user only. Says where, or why there is none."""
        try:
            fd, kept = tempfile.mkstemp(prefix="tritonserver-failed-", suffix=".log", dir=self.workdir.parent)
        except OSError as e:
            return f"no copy of Triton's log kept: {self.workdir.parent}: {e.strerror}"
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(self.log_text().encode())
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(kept)
            return f"no copy of Triton's log kept: {self.workdir.parent}: {e.strerror}"
        return f"Triton's log: {kept}"

    def answers_health(self, timeout: float) -> bool:
        """Whether this Triton answers a liveness call over gRPC within ``timeout`` s (health needs no key)."""
        channel = _channel(self)
        try:
            return GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=timeout).live
        except grpc.RpcError:
            return False
        finally:
            channel.close()

    def _end_process(self, grace: float) -> None:
        """SIGTERM, then after ``grace`` s SIGKILL to Triton's whole process group (its backend stubs too).

        SIGCONT right after SIGTERM (as systemd does) lets a stopped (SIGSTOP) Triton shut down as
        asked instead of waiting out the grace; SIGKILL ends one that is wedged otherwise.
        """
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
                os.killpg(self.process.pid, signal.SIGCONT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(2)
        # A stub that was mid-exit when the group was killed may still hold its region: gone now.
        deadline = time.monotonic() + 1
        while processes_using(str(self.workdir)) and time.monotonic() < deadline:
            time.sleep(0.05)
        remove_shm_regions(self.shm_regions)
        if self.process.poll() is not None:
            remove_empty_dirs(self.python_envs)
            self.python_envs.clear()
        if self.log_pump:
            self.log_pump.join(0.5)

    def stop(self, grace: float = 3.0) -> None:
        """Stop Triton and every process it started (backend stubs), then remove temporary files: < 5 s."""
        self._end_process(grace)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def restart(self, ready_timeout: float = 120.0, cancelled: Callable[[], bool] | None = None) -> None:
        """Replace a dead Triton by a new one on the same ports and workdir; return once it is ready."""
        self._end_process(grace=0)
        # The dead server's log becomes the older part: readiness must find the new server's own lines.
        with contextlib.suppress(OSError):
            os.replace(self.log_path, self.log_path.with_name(self.log_path.name + ".1"))
        launch(self)
        try:
            wait_until_ready(self, ready_timeout, cancelled)
        except BaseException:
            self._end_process(grace=0)
            raise


def launch(server: TritonServer) -> None:
    """Start ``server.command``; its output goes through a pipe into the capped log."""
    server.python_envs_before = python_env_dirs()
    read_end, write_end = os.pipe()
    try:
        server.process = subprocess.Popen(
            server.command,
            stdout=write_end,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=server_environment(),
            start_new_session=True,
            preexec_fn=_start_child,
        )
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    server.log_pump = LogPump(read_end, server.log_path)
    claim_workdir(server.workdir, server.process.pid)


def _tls_name(cert: Path, host: str) -> str | None:
    """The name to check ``cert`` against when it does not list ``host``: its first DNS name (None: ``host``)."""
    try:
        decoded = ssl._ssl._test_decode_cert(str(cert))  # type: ignore[attr-defined]  # the stdlib's PEM reader
    except Exception:  # noqa: BLE001 - an unreadable certificate fails the TLS handshake, told there
        return None
    names = decoded.get("subjectAltName", ())
    if any(value.rstrip("\n") == host for kind, value in names if kind == "IP Address"):
        return None
    dns = [value for kind, value in names if kind == "DNS"]
    return dns[0] if dns else None


def _channel(server: TritonServer) -> grpc.Channel:
    """A channel to this server's gRPC port from this machine, over TLS when it serves TLS."""
    host = local_address(server.address)
    target = f"{triton_address(host)}:{server.grpc_port}"
    if server.tls_cert is None:
        return grpc.insecure_channel(target)
    credentials = grpc.ssl_channel_credentials(root_certificates=server.tls_cert.read_bytes())
    name = _tls_name(server.tls_cert, host)
    options = [("grpc.ssl_target_name_override", name)] if name else []
    return grpc.secure_channel(target, credentials, options=options)


def wait_until_ready(server: TritonServer, timeout: float, cancelled: Callable[[], bool] | None = None) -> None:
    """Return when *this* tritonserver serves every model: alive, its own log says it listens, and ready.

    The log line matters: another server on the port would answer ready too.
    """
    channel = _channel(server)
    stub = GRPCInferenceServiceStub(channel)
    web = server.http_address or server.address
    listening = [f"Started GRPCInferenceService at {triton_address(server.address)}:{server.grpc_port}"]
    if server.serves_http:
        listening.append(f"Started HTTPService at {triton_http_address(web)}:{server.http_port}")
    player = server.access.player_key if server.access else None
    metadata = [grpc_metadata(PLAYER_HEADER, player)] if player else None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if cancelled and cancelled():
                raise StartCancelled()
            if server.process.poll() is not None:
                log = triton_errors(server.log_text()) or "see its log"
                raise UserError(f"tritonserver {describe_exit(server.process.returncode)} at start: {log}")
            try:
                # The start of this Triton's own output, kept in memory: a full disk cannot hide it.
                log_text = server.log_pump.text() if server.log_pump else ""
                if (
                    all(line in log_text for line in listening)
                    and stub.ServerReady(pb.ServerReadyRequest(), timeout=1, metadata=metadata).ready
                    and all(
                        stub.ModelReady(pb.ModelReadyRequest(name=name), timeout=1, metadata=metadata).ready
                        for name in server.models
                    )
                    and server.process.poll() is None
                ):
                    server.python_envs |= python_env_dirs() - server.python_envs_before
                    return
            except (grpc.RpcError, OSError):
                pass
            time.sleep(0.2)
        tls = " over TLS (does --tls-cert name this address?)" if server.tls_cert else ""
        reason = triton_errors(server.log_text())
        raise UserError(f"tritonserver did not get ready within {timeout:.0f} s{tls}: {reason}")
    finally:
        channel.close()
