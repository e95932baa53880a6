"""Run a real Triton Inference Server on this machine for a model repository.

    python -m atari_trtis_demo.serve --model-repository trtismodel   (or: atari-serve ...)

The server is the ``tritonserver`` binary that the ``nvidia-pytriton`` wheel ships.
That build has Triton's python backend only, so each ``onnxruntime_onnx`` model is
served through a python-backend twin (:mod:`atari_trtis_demo.triton_twin`). With
``--backend-directory`` pointing at backends that include onnxruntime (NVIDIA's
container has them), the repository is served as it is. This module runs the
process (ports, start, readiness, stop) and the command line; its temporary files and
log are :mod:`atari_trtis_demo.triton_workdir`'s.

No Chainer here.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import os
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from atari_trtis_demo.cli_args import ArgumentParser, float_in, int_in, port, run_cli
from atari_trtis_demo.errors import UserError
from atari_trtis_demo.kserve import kserve_v2_pb2 as pb
from atari_trtis_demo.kserve.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from atari_trtis_demo.model_repository import read_repository
from atari_trtis_demo.serve_security import (
    PLAYER_HEADER,
    PLAYER_KEY_ENV,
    Access,
    check_tls_files,
    grpc_metadata,
    http_address,
    is_loopback,
    local_address,
    numeric_address,
    socket_family,
    triton_address,
    triton_http_address,
)
from atari_trtis_demo.serve_supervisor import describe_exit, supervise
from atari_trtis_demo.triton_twin import (
    prepare_python_backend,
    prepare_twin_repository,
    pytriton_dir,
    server_environment,
)
from atari_trtis_demo.triton_workdir import (
    LOG_FILE,
    LogPump,
    claim_workdir,
    clean_stale_workdirs,
    make_workdir,
    processes_using,
    remove_shm_regions,
    shm_regions_of,
    triton_errors,
)

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def check_port_numbers(ports: dict[str, int]) -> None:
    """Every port in range and distinct; ``ports`` maps each flag (``--grpc-port``...) to its port."""
    for flag, number in ports.items():
        if not 1 <= number <= 65535:
            raise UserError(f"{flag} {number}: not a TCP port (1-65535)")
    if len(set(ports.values())) < len(ports):
        raise UserError(f"{', '.join(f'{f} {n}' for f, n in ports.items())}: the ports must differ")


def check_ports(address: str, ports: dict[str, int]) -> None:
    """Every port in range, distinct and free on ``address``: a taken one is named before Triton starts.

    The probe binds as servers do (SO_REUSEADDR), so only a listening socket counts as
    taken, not a closed one. An IPv6 address may come with or without brackets.
    """
    check_port_numbers(ports)
    bare = address.strip("[]")
    for flag, number in ports.items():
        with socket.socket(socket_family(bare)) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((bare, number))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise UserError(
                        f"{flag} {number}: port {number} is in use on {address} (another server? "
                        "stop it or choose another port)"
                    ) from None
                raise UserError(f"--address {address}: cannot listen there ({e.strerror})") from None


def _start_child(*, raise_nofile: bool = True) -> None:  # pragma: no cover (runs in the child between fork and exec)
    # The kernel sends SIGKILL to Triton when the thread that started it dies, even
    # by kill -9: no server outlives `serve` holding its ports.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if raise_nofile:
        # At the usual soft limit of 1,024, about 1,000 idle connections made Triton log
        # "Error from accept()" at 57 MB/s and refuse everyone else.
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


_die_with_parent = _start_child  # the name tests and older callers know


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
    shm_regions: set[str] = field(default_factory=set)
    log_pump: LogPump | None = None

    @property
    def grpc_target(self) -> str:
        return f"{triton_address(self.address)}:{self.grpc_port}"

    def keep_log(self) -> Path:
        """A copy of Triton's log outside the workdir, which :meth:`stop` removes: readable after a failure."""
        kept = Path(tempfile.gettempdir()) / f"tritonserver-failed-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        with contextlib.suppress(OSError):
            shutil.copyfile(self.log_path, kept)
        return kept

    def note_shm_regions(self) -> None:
        """Remember the python backend's regions of this server while its stubs run, to remove them if it dies."""
        self.shm_regions |= shm_regions_of(self.workdir)

    def _end_process(self, grace: float) -> None:
        """SIGTERM, then after ``grace`` s SIGKILL to Triton's whole process group (its backend stubs too).

        SIGKILL also ends a stopped (SIGSTOP) or wedged Triton, which ignores SIGTERM.
        """
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
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
        self.shm_regions.clear()
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
        _launch(self)
        try:
            wait_until_ready(self, ready_timeout, cancelled)
        except BaseException:
            self._end_process(grace=0)
            raise
        self.note_shm_regions()


def _launch(server: TritonServer) -> None:
    """Start ``server.command``; its output goes through a pipe into the capped log."""
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


def start_server(
    repository: str | Path,
    *,
    address: str = "127.0.0.1",
    http_port: int = 8000,
    grpc_port: int = 8001,
    metrics_port: int = 8002,
    backend_directory: str | None = None,
    log_verbose: int = 0,
    ready_timeout: float = 120.0,
    access: Access | None = None,
    tls: tuple[Path, Path] | None = None,
    expose_http: bool = False,
    cancelled: Callable[[], bool] | None = None,
) -> TritonServer:
    """Start tritonserver on ``repository`` and return once every model is ready.

    ``access``: the keys (default: from the environment, see :mod:`serve_security`; the
    admin protocols always need a key). ``tls``: (certificate, key) files for gRPC.
    HTTP and metrics stay on 127.0.0.1 for a non-loopback ``address`` unless ``expose_http``.
    ``cancelled`` is polled while waiting: when it turns true the start stops (:class:`StartCancelled`).
    """
    access = access or Access.from_environment()
    address = numeric_address(address)
    web_address = http_address(address, expose_http)
    ports = {"--http-port": http_port, "--grpc-port": grpc_port, "--metrics-port": metrics_port}
    check_port_numbers(ports)
    if web_address == address:
        check_ports(address, ports)
    else:
        check_ports(address, {"--grpc-port": grpc_port})
        check_ports(web_address, {"--http-port": http_port, "--metrics-port": metrics_port})
    models = read_repository(repository)
    for stale in clean_stale_workdirs():
        print(f"removed {stale}, left by a server that was killed", file=sys.stderr, flush=True)
    binary = pytriton_dir() / "bin" / "tritonserver"
    if not binary.is_file():
        raise UserError(f"{binary}: missing: nvidia-pytriton installed without its tritonserver")
    workdir = make_workdir()
    try:
        if backend_directory:
            repo, backends = Path(repository).resolve(), Path(backend_directory).resolve()
        else:
            repo, backends = prepare_twin_repository(models, workdir), prepare_python_backend(workdir)
        key_file = access.write_admin_key(workdir)
        tls_flags = []
        if tls:
            tls_flags = ["--grpc-use-ssl=true", f"--grpc-server-cert={tls[0]}", f"--grpc-server-key={tls[1]}"]
        command = [
            str(binary),
            f"--model-repository={repo}",
            f"--backend-directory={backends}",
            f"--http-address={triton_http_address(web_address)}",
            f"--http-port={http_port}",
            f"--grpc-address={triton_address(address)}",
            f"--grpc-port={grpc_port}",
            f"--metrics-address={triton_http_address(web_address)}",
            f"--metrics-port={metrics_port}",
            "--exit-on-error=true",
            # In-flight requests get 2 s at SIGTERM: serve kills the rest at 3 s.
            "--exit-timeout-secs=2",
            f"--log-verbose={log_verbose}",
            *tls_flags,
            *access.triton_flags(),
        ]
        server = TritonServer(
            None,  # type: ignore[arg-type]  # set by _launch
            address, http_port, grpc_port, metrics_port, [m.name for m in models], workdir, workdir / LOG_FILE,
            http_address=web_address, tls_cert=tls[0] if tls else None, access=access, admin_key_file=key_file,
            command=command,
        )  # fmt: skip
        _launch(server)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    try:
        wait_until_ready(server, ready_timeout, cancelled)
        server.note_shm_regions()
    except UserError as e:
        kept = server.keep_log()
        server.stop()
        raise UserError(f"{e} (Triton's log: {kept})") from None
    except BaseException:
        server.stop()
        raise
    return server


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
    listening = [
        f"Started GRPCInferenceService at {triton_address(server.address)}:{server.grpc_port}",
        f"Started HTTPService at {triton_http_address(web)}:{server.http_port}",
    ]
    player = server.access.player_key if server.access else None
    metadata = [grpc_metadata(PLAYER_HEADER, player)] if player else None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if cancelled and cancelled():
                raise StartCancelled()
            if server.process.poll() is not None:
                log = triton_errors(server.log_path) or "see its log"
                raise UserError(f"tritonserver {describe_exit(server.process.returncode)} at start: {log}")
            try:
                log_text = server.log_path.read_text(errors="replace")
                if (
                    all(line in log_text for line in listening)
                    and stub.ServerReady(pb.ServerReadyRequest(), timeout=1, metadata=metadata).ready
                    and all(
                        stub.ModelReady(pb.ModelReadyRequest(name=name), timeout=1, metadata=metadata).ready
                        for name in server.models
                    )
                    and server.process.poll() is None
                ):
                    return
            except (grpc.RpcError, OSError):
                pass
            time.sleep(0.2)
        tls = " over TLS (does --tls-cert name this address?)" if server.tls_cert else ""
        raise UserError(f"tritonserver did not get ready within {timeout:.0f} s{tls}: {triton_errors(server.log_path)}")
    finally:
        channel.close()


@contextlib.contextmanager
def serving(repository: str | Path, **kwargs: object) -> Iterator[TritonServer]:
    """``with serving("trtismodel", grpc_port=...) as server:`` a ready Triton, stopped at exit."""
    server = start_server(repository, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        description="Serve a Triton model repository with a real tritonserver on this machine.",
        epilog=f"Environment: {PLAYER_KEY_ENV} (players must send it as header {PLAYER_HEADER}), "
        "ATARI_DEMO_ADMIN_KEY (the owner's key for shared memory, model repository, logging, trace; "
        "default: generated and written to a file only you can read).",
    )
    p.add_argument("--model-repository", required=True, help="the repository, e.g. trtismodel")
    p.add_argument(
        "--address",
        default="127.0.0.1",
        help="address for gRPC (default 127.0.0.1; any other than loopback needs ATARI_DEMO_KEY or --no-key)",
    )
    p.add_argument("--http-port", type=port, default=8000)
    p.add_argument("--grpc-port", type=port, default=8001)
    p.add_argument("--metrics-port", type=port, default=8002)
    p.add_argument("--backend-directory", default=None, help="Triton backends with onnxruntime: serve as is")
    p.add_argument("--log-verbose", type=int_in(0, 3), default=0)
    p.add_argument("--ready-timeout", type=float_in(0, low_open=True), default=120.0, help="seconds")
    p.add_argument("--tls-cert", default=None, metavar="FILE", help="PEM certificate: serve gRPC over TLS")
    p.add_argument("--tls-key", default=None, metavar="FILE", help="PEM private key of --tls-cert")
    p.add_argument(
        "--no-key",
        action="store_true",
        help="serve a non-loopback --address without ATARI_DEMO_KEY: anyone who reaches it may play",
    )
    p.add_argument(
        "--expose-http",
        action="store_true",
        help="let HTTP and metrics follow a non-loopback --address (default: they stay on 127.0.0.1; this "
        "Triton's HTTP server has published crashes: CVE-2025-23310, CVE-2025-23311)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    access = Access.from_environment()
    if not is_loopback(numeric_address(args.address)):
        if access.player_key is None and not args.no_key:
            raise UserError(
                f"--address {args.address} is reachable from other machines: set {PLAYER_KEY_ENV} to a secret "
                "the players share (or pass --no-key to let anyone play)"
            )
        if access.player_key is None:
            print(f"warning: --no-key: anyone who reaches {args.address} may play", file=sys.stderr, flush=True)
        if args.tls_cert is None:
            print(
                f"warning: no --tls-cert: requests and {PLAYER_KEY_ENV} travel in clear text",
                file=sys.stderr,
                flush=True,
            )
    tls = check_tls_files(args.tls_cert, args.tls_key)
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server = start_server(
            args.model_repository,
            address=args.address,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            backend_directory=args.backend_directory,
            log_verbose=args.log_verbose,
            ready_timeout=args.ready_timeout,
            access=access,
            tls=tls,
            expose_http=args.expose_http,
            cancelled=lambda: stopping,
        )
    except StartCancelled:
        print("server stopped", flush=True)
        return 0
    code = 0
    try:
        web = triton_address(server.http_address)
        for name in server.models:
            print(
                f"{name} ready at {server.grpc_target} (gRPC{', TLS' if tls else ''}), "
                f"{web}:{server.http_port} (HTTP), metrics on {web}:{server.metrics_port}",
                flush=True,
            )
        if server.admin_key_file:
            print(f"admin key (header atari-admin-key): in {server.admin_key_file}", flush=True)
        else:
            print("admin key (header atari-admin-key): the value of ATARI_DEMO_ADMIN_KEY", flush=True)
        if access.player_key is not None:
            print(f"players need header {PLAYER_HEADER}: the value of {PLAYER_KEY_ENV}", flush=True)
        print(f"Triton log: {server.log_path}; Ctrl-C stops the server", flush=True)
        code = supervise(server, stopping=lambda: stopping, ready_timeout=args.ready_timeout)
    finally:
        server.stop()
    if code == 0:
        print("server stopped", flush=True)
    return code


if __name__ == "__main__":
    run_cli(main)
