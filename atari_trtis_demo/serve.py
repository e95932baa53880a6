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
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from atari_trtis_demo.cli_args import ArgumentParser, float_in, int_in, port, run_cli
from atari_trtis_demo.errors import UserError
from atari_trtis_demo.kserve import kserve_v2_pb2 as pb
from atari_trtis_demo.kserve.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from atari_trtis_demo.model_repository import read_repository
from atari_trtis_demo.triton_twin import (
    prepare_python_backend,
    prepare_twin_repository,
    pytriton_dir,
    server_environment,
)
from atari_trtis_demo.triton_workdir import (
    LOG_FILE,
    claim_workdir,
    clean_stale_workdirs,
    make_workdir,
    processes_using,  # noqa: F401 - re-exported: tests/test_serving.py
    triton_errors,
)

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def check_ports(address: str, ports: dict[str, int]) -> None:
    """Every port in range, distinct and free on ``address``: a taken one is named before Triton starts.

    ``ports`` maps each flag (``--grpc-port``...) to its port. The probe binds as servers
    do (SO_REUSEADDR), so only a listening socket counts as taken, not a closed one.
    """
    for flag, number in ports.items():
        if not 1 <= number <= 65535:
            raise UserError(f"{flag} {number}: not a TCP port (1-65535)")
    if len(set(ports.values())) < len(ports):
        raise UserError(f"{', '.join(f'{f} {n}' for f, n in ports.items())}: the ports must differ")
    for flag, number in ports.items():
        with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, number))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise UserError(
                        f"{flag} {number}: port {number} is in use on {address} (another server? "
                        "stop it or choose another port)"
                    ) from None
                raise UserError(f"--address {address}: cannot listen there ({e.strerror})") from None


def _die_with_parent() -> None:  # pragma: no cover (runs in the child between fork and exec)
    # The kernel sends SIGKILL to Triton when the thread that started it dies, even
    # by kill -9: no server outlives `serve` holding its ports.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class TritonServer:
    """A running tritonserver, its ports and its temporary files."""

    process: subprocess.Popen
    address: str
    http_port: int
    grpc_port: int
    metrics_port: int
    models: list[str]
    workdir: Path
    log_path: Path

    @property
    def grpc_target(self) -> str:
        return f"{self.address}:{self.grpc_port}"

    def keep_log(self) -> Path:
        """A copy of Triton's log outside the workdir, which :meth:`stop` removes: readable after a failure."""
        kept = Path(tempfile.gettempdir()) / f"tritonserver-failed-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        with contextlib.suppress(OSError):
            shutil.copyfile(self.log_path, kept)
        return kept

    def stop(self, timeout: float = 20.0) -> None:
        """Stop Triton and every process it started (backend stubs), then remove temporary files."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # Backend stubs live in Triton's process group; none may outlive it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        shutil.rmtree(self.workdir, ignore_errors=True)


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
) -> TritonServer:
    """Start tritonserver on ``repository`` and return once every model is ready."""
    check_ports(address, {"--http-port": http_port, "--grpc-port": grpc_port, "--metrics-port": metrics_port})
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
        log_path = workdir / LOG_FILE
        command = [
            str(binary),
            f"--model-repository={repo}",
            f"--backend-directory={backends}",
            f"--http-address={address}",
            f"--http-port={http_port}",
            f"--grpc-address={address}",
            f"--grpc-port={grpc_port}",
            f"--metrics-address={address}",
            f"--metrics-port={metrics_port}",
            "--exit-on-error=true",
            f"--log-verbose={log_verbose}",
        ]
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=server_environment(),
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        claim_workdir(workdir, process.pid)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    server = TritonServer(
        process, address, http_port, grpc_port, metrics_port, [m.name for m in models], workdir, log_path
    )
    try:
        wait_until_ready(server, ready_timeout)
    except UserError as e:
        kept = server.keep_log()
        server.stop()
        raise UserError(f"{e} (Triton's log: {kept})") from None
    except BaseException:
        server.stop()
        raise
    return server


def wait_until_ready(server: TritonServer, timeout: float) -> None:
    """Return when *this* tritonserver serves every model: alive, its own log says it listens, and ready.

    The log line matters: another server on the port would answer ready too.
    """
    connect = "127.0.0.1" if server.address in ("0.0.0.0", "") else server.address
    channel = grpc.insecure_channel(f"{connect}:{server.grpc_port}")
    stub = GRPCInferenceServiceStub(channel)
    listening = [
        f"Started GRPCInferenceService at {server.address}:{server.grpc_port}",
        f"Started HTTPService at {server.address}:{server.http_port}",
    ]
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                log = triton_errors(server.log_path) or "see its log"
                raise UserError(f"tritonserver exited with code {server.process.returncode} at start: {log}")
            try:
                log_text = server.log_path.read_text(errors="replace")
                if (
                    all(line in log_text for line in listening)
                    and stub.ServerReady(pb.ServerReadyRequest(), timeout=1).ready
                    and all(stub.ModelReady(pb.ModelReadyRequest(name=name), timeout=1).ready for name in server.models)
                    and server.process.poll() is None
                ):
                    return
            except (grpc.RpcError, OSError):
                pass
            time.sleep(0.2)
        raise UserError(f"tritonserver did not get ready within {timeout:.0f} s: {triton_errors(server.log_path)}")
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
    p = ArgumentParser(description="Serve a Triton model repository with a real tritonserver on this machine.")
    p.add_argument("--model-repository", required=True, help="the repository, e.g. trtismodel")
    p.add_argument("--address", default="127.0.0.1", help="address to bind (0.0.0.0 exposes the server)")
    p.add_argument("--http-port", type=port, default=8000, help="Triton's HTTP/REST port")
    p.add_argument("--grpc-port", type=port, default=8001, help="Triton's gRPC port, the players' --port")
    p.add_argument("--metrics-port", type=port, default=8002, help="Prometheus metrics port")
    p.add_argument(
        "--backend-directory",
        default=None,
        help="Triton backends with onnxruntime: serve as is (default: the python-backend twin)",
    )
    p.add_argument("--log-verbose", type=int_in(0, 3), default=0, help="Triton's log detail, 0-3")
    p.add_argument("--ready-timeout", type=float_in(0, low_open=True), default=120.0, help="seconds")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server = start_server(
        args.model_repository,
        address=args.address,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        backend_directory=args.backend_directory,
        log_verbose=args.log_verbose,
        ready_timeout=args.ready_timeout,
    )
    try:
        for name in server.models:
            print(
                f"{name} ready at {server.address}:{server.grpc_port} (gRPC), "
                f"{server.address}:{server.http_port} (HTTP), metrics on :{server.metrics_port}",
                flush=True,
            )
        print(f"Triton log: {server.log_path}; Ctrl-C stops the server", flush=True)
        while not stopping:
            if server.process.poll() is not None:
                raise UserError(
                    f"tritonserver exited with code {server.process.returncode}: {triton_errors(server.log_path)} "
                    f"(Triton's log: {server.keep_log()})"
                )
            time.sleep(0.2)
    finally:
        server.stop()
    print("server stopped", flush=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
