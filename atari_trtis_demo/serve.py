"""Run a real Triton Inference Server on this machine for a model repository.

    python -m atari_trtis_demo.serve --model-repository trtismodel

The server is the ``tritonserver`` binary that the ``nvidia-pytriton`` wheel ships.
That build has Triton's python backend only, so each ``onnxruntime_onnx`` model is
served through a python-backend twin that runs the very same ``model.onnx`` with
onnxruntime on the CPU, keeping its name, inputs, outputs, batch size and dynamic
batching. With ``--backend-directory`` pointing at backends that include onnxruntime
(NVIDIA's container has them), the repository is served as it is.

No Chainer here.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf import text_format

from atari_trtis_demo.cli_args import ArgumentParser, float_in, int_in, port
from atari_trtis_demo.errors import UserError, run_cli
from atari_trtis_demo.kserve import kserve_v2_pb2 as pb
from atari_trtis_demo.kserve.grpc_service_pb2_grpc import GRPCInferenceServiceStub

TWIN_SOURCE = Path(__file__).with_name("triton_twin_model.py")
DEFAULT_FILENAMES = {"onnxruntime_onnx": "model.onnx", "python": "model.py"}
# The python-backend twin's max_batch_size as Triton sees it (see twin_config).
TWIN_BATCH_LIMIT = 2**24
WORKDIR_PREFIX = "atari-triton-"
OWNER_FILE = "owner.json"  # in the workdir: the pid of the process that started Triton
PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass
class RepositoryModel:
    name: str
    config_path: Path
    config: pb.ModelConfig
    versions: list[int] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.config.platform or self.config.backend


def read_repository(repository: str | Path) -> list[RepositoryModel]:
    """Parse and check every model of a repository; one-line errors naming the file at fault."""
    root = Path(repository)
    if not root.is_dir():
        raise UserError(f"--model-repository {root}: directory does not exist")
    models = []
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        config_path = model_dir / "config.pbtxt"
        if not config_path.is_file():
            raise UserError(f"{config_path}: missing (every model directory needs its config.pbtxt)")
        try:
            config = text_format.Parse(config_path.read_text(), pb.ModelConfig(), allow_unknown_field=True)
        except (text_format.ParseError, UnicodeDecodeError) as e:
            raise UserError(f"{config_path}: malformed config ({str(e).splitlines()[0]})") from e
        if config.name and config.name != model_dir.name:
            raise UserError(f"{config_path}: name '{config.name}' differs from its directory '{model_dir.name}'")
        config.name = model_dir.name
        model = RepositoryModel(model_dir.name, config_path, config)
        if model.kind not in DEFAULT_FILENAMES:
            raise UserError(f"{config_path}: platform/backend '{model.kind}' is not one this server can run")
        filename = config.default_model_filename or DEFAULT_FILENAMES[model.kind]
        model.versions = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
        if not model.versions:
            raise UserError(f"{model_dir / '1' / filename}: missing (no version directory in {model_dir})")
        for version in model.versions:
            if not (model_dir / str(version) / filename).is_file():
                raise UserError(f"{model_dir / str(version) / filename}: model file missing")
        models.append(model)
    if not models:
        raise UserError(f"--model-repository {root}: no model in it (expected <name>/config.pbtxt)")
    return models


def twin_config(model: RepositoryModel) -> str:
    """The python-backend config of an onnxruntime model: same tensors, batching, instances on the CPU."""
    twin = pb.ModelConfig()
    twin.CopyFrom(model.config)
    twin.platform = ""
    twin.backend = "python"
    twin.default_model_filename = "model.py"
    for group in twin.instance_group:
        # The python backend would ask for a GPU it does not use; onnxruntime runs on the CPU here.
        group.kind = pb.ModelInstanceGroup.KIND_CPU
        del group.gpus[:]
    if twin.max_batch_size > 0:
        # Triton 2.51's python backend sums the first dimension of every request in an
        # execution and fails them all when the sum passes max_batch_size. A request
        # whose declared batch overflows (2**62) reaches it with the batch dimension
        # stripped, counting 4 (the frame stack), while the dynamic batcher counted it
        # as 0: one such request in a batch failed its batch mates. The twin gets a
        # limit no real batch reaches; it enforces the model's own per request, and
        # never runs onnxruntime on more than that at once.
        twin.max_batch_size = TWIN_BATCH_LIMIT
    onnx_file = model.config.default_model_filename or "model.onnx"
    return (
        text_format.MessageToString(twin)
        + f'parameters: {{ key: "onnx_file" value: {{ string_value: "{onnx_file}" }} }}\n'
        + f'parameters: {{ key: "max_batch_size" value: {{ string_value: "{model.config.max_batch_size}" }} }}\n'
    )


def prepare_twin_repository(models: list[RepositoryModel], into: Path) -> Path:
    """A repository where each onnxruntime model becomes a python-backend twin of the same file."""
    repo = into / "repository"
    for model in models:
        target = repo / model.name
        target.mkdir(parents=True)
        source_dir = model.config_path.parent
        if model.kind != "onnxruntime_onnx":
            shutil.copytree(source_dir, target, dirs_exist_ok=True)
            continue
        (target / "config.pbtxt").write_text(twin_config(model))
        onnx_file = model.config.default_model_filename or "model.onnx"
        for version in model.versions:
            (target / str(version)).mkdir()
            shutil.copyfile(TWIN_SOURCE, target / str(version) / "model.py")
            (target / str(version) / onnx_file).symlink_to((source_dir / str(version) / onnx_file).resolve())
    return repo


def pytriton_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("nvidia-pytriton is not installed (it provides tritonserver): run ./setup.sh")
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


def prepare_python_backend(into: Path) -> Path:
    """Triton's python backend with the stub built for the running interpreter beside it.

    The wheel keeps one stub per Python version; Triton looks for
    ``triton_python_backend_stub`` inside the backend's own folder.
    """
    server = pytriton_dir()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = server / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise UserError(f"{stub}: missing: nvidia-pytriton has no python backend stub for Python {version}")
    backend = into / "backends" / "python"
    backend.mkdir(parents=True)
    for item in (server / "backends" / "python").iterdir():
        if item.is_file():
            (backend / item.name).symlink_to(item)
    (backend / stub.name).symlink_to(stub)
    return backend.parent


def server_environment() -> dict[str, str]:
    """The stub links libpython3.11.so: find the running interpreter's own copy first.

    Otherwise the system's libpython may be loaded under pyenv's interpreter and model
    loading fails ('_thread.RLock' object has no attribute '_recursion_count').
    The stub runs Python in isolated mode (PYTHONPATH is ignored), so the twin's
    model.py adds ATARI_TRTIS_SITE_PACKAGES, this environment's site-packages, itself.
    """
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or os.path.join(sys.base_prefix, "lib")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    env["ATARI_TRTIS_SITE_PACKAGES"] = sysconfig.get_paths()["purelib"]
    return env


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
    workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
    try:
        if backend_directory:
            repo, backends = Path(repository).resolve(), Path(backend_directory).resolve()
        else:
            repo, backends = prepare_twin_repository(models, workdir), prepare_python_backend(workdir)
        log_path = workdir / "tritonserver.log"
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
        (workdir / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "tritonserver": process.pid}))
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
    p.add_argument("--http-port", type=port, default=8000)
    p.add_argument("--grpc-port", type=port, default=8001)
    p.add_argument("--metrics-port", type=port, default=8002)
    p.add_argument("--backend-directory", default=None, help="Triton backends with onnxruntime: serve as is")
    p.add_argument("--log-verbose", type=int_in(0, 3), default=0)
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
