"""Run a real Triton Inference Server on this machine for a model repository.

    python -m atari_trtis_demo.serve --model-repository trtismodel   (or: atari-serve ...)

The server is the ``tritonserver`` binary that the ``nvidia-pytriton`` wheel ships.
That build has Triton's python backend only, so each ``onnxruntime_onnx`` model is
served through a python-backend twin (:mod:`atari_trtis_demo.serving.triton_twin`). With
``--backend-directory`` pointing at backends that include onnxruntime (NVIDIA's
container has them), the repository is served as it is. This module checks the ports,
builds Triton's command line and runs the ``serve`` command; the process (readiness,
restart, stop) is :mod:`atari_trtis_demo.serving.triton_process`'s, who may reach what
:mod:`atari_trtis_demo.serving.serve_security`'s, restarting a dead Triton
:mod:`atari_trtis_demo.serving.serve_supervisor`'s, temporary files, log and shared memory
:mod:`atari_trtis_demo.serving.triton_workdir`'s.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import shutil
import signal
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from atari_trtis_demo.core.addresses import is_loopback
from atari_trtis_demo.core.cli_args import ArgumentParser, run_cli
from atari_trtis_demo.core.errors import UserError
from atari_trtis_demo.core.keys import PLAYER_HEADER, PLAYER_KEY_ENV
from atari_trtis_demo.core.model_repository import read_repository
from atari_trtis_demo.core.typed_flags import add_flags, from_args
from atari_trtis_demo.serving.serve_config import ServeOptions
from atari_trtis_demo.serving.serve_security import (
    Access,
    check_repository_files,
    check_tls_files,
    http_address,
    numeric_address,
    socket_family,
    triton_address,
    triton_http_address,
)
from atari_trtis_demo.serving.serve_supervisor import supervise
from atari_trtis_demo.serving.triton_process import StartCancelled, TritonServer, launch, wait_until_ready
from atari_trtis_demo.serving.triton_twin import prepare_python_backend, prepare_twin_repository, pytriton_dir
from atari_trtis_demo.serving.triton_workdir import (
    LOG_FILE,
    clean_stale_workdirs,
    close_to_others,
    make_workdir,
    shm_prefix,
)

# Every gRPC connection is closed after this long (see start_server): what one unread stream can hold.
GRPC_CONNECTION_AGE_MS = 1000
GRPC_CONNECTION_AGE_GRACE_MS = 500


def policy_flags(access: Access, tls: tuple[Path, Path] | None) -> list[str]:
    """Triton's flags for who may reach what and how long a connection lives: TLS, the connection age,
    the restricted protocols. Also what ``deploy/kubernetes`` passes NVIDIA's Triton (tests/test_deploy.py)."""
    tls_flags = []
    if tls:
        tls_flags = ["--grpc-use-ssl=true", f"--grpc-server-cert={tls[0]}", f"--grpc-server-key={tls[1]}"]
    return [
        # Triton keeps every streamed request until its answer is written, and a client
        # that never reads lets none be written: one unread ModelStreamInfer stream grew
        # tritonserver past 3 GB in 10 s. Closing every connection after 1 s (0.5 s of grace
        # for calls in flight) bounds what one connection can hold; players reconnect at
        # once and retry the rare call cut by the close (client.channel.CHANNEL_OPTIONS).
        # Figures: docs/serving.md, "A stream flood".
        f"--grpc-max-connection-age={GRPC_CONNECTION_AGE_MS}",
        f"--grpc-max-connection-age-grace={GRPC_CONNECTION_AGE_GRACE_MS}",
        *tls_flags,
        *access.triton_flags(),
    ]


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


def start_server(
    repository: str | Path,
    *,
    # The defaults are the command's own (ServeOptions'), written there once.
    address: str = ServeOptions.address,
    http_port: int = ServeOptions.http_port,
    grpc_port: int = ServeOptions.grpc_port,
    metrics_port: int = ServeOptions.metrics_port,
    backend_directory: str | None = ServeOptions.backend_directory,
    log_verbose: int = ServeOptions.log_verbose,
    ready_timeout: float = ServeOptions.ready_timeout,
    access: Access | None = None,
    tls: tuple[Path, Path] | None = None,
    expose_http: bool = ServeOptions.expose_http,
    no_http: bool = ServeOptions.no_http,
    cancelled: Callable[[], bool] | None = None,
) -> TritonServer:
    """Start tritonserver on ``repository`` and return once every model is ready.

    ``access``: the keys (default: from the environment, see :mod:`serve_security`; the
    admin protocols always need a key). ``tls``: (certificate, key) files for gRPC.
    HTTP and metrics stay on 127.0.0.1 for a non-loopback ``address`` unless ``expose_http``;
    ``no_http``: neither listens at all (their ports are not checked).
    ``cancelled`` is polled while waiting: when it turns true the start stops (:class:`StartCancelled`).
    """
    access = access or Access.from_environment()
    address = numeric_address(address)
    web_address = http_address(address, expose_http)
    web_ports = {} if no_http else {"--http-port": http_port, "--metrics-port": metrics_port}
    check_port_numbers({"--grpc-port": grpc_port, **web_ports})
    # The repository before the ports: a user who fixes a taken port must not then learn that the
    # repository holds no model (the tracked trtismodel/ holds none until a conversion).
    check_repository_files(repository)
    models = read_repository(repository)
    if web_address == address:
        check_ports(address, {"--grpc-port": grpc_port, **web_ports})
    else:
        check_ports(address, {"--grpc-port": grpc_port})
        check_ports(web_address, web_ports)
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
        close_to_others(workdir)
        web_flags = [
            f"--http-address={triton_http_address(web_address)}",
            f"--http-port={http_port}",
            f"--metrics-address={triton_http_address(web_address)}",
            f"--metrics-port={metrics_port}",
        ]
        if no_http:
            # This Triton's HTTP server closes no idle connection, and HTTP and gRPC share one table
            # of open files: idle HTTP connections from one local user locked every player out.
            web_flags = ["--allow-http=false", "--allow-metrics=false"]
        command = [
            str(binary),
            f"--model-repository={repo}",
            f"--backend-directory={backends}",
            f"--grpc-address={triton_address(address)}",
            f"--grpc-port={grpc_port}",
            *web_flags,
            "--exit-on-error=true",
            # In-flight requests get 2 s at SIGTERM: serve kills the rest at 3 s.
            "--exit-timeout-secs=2",
            f"--log-verbose={log_verbose}",
            # The python backend's regions carry this server's own prefix: its regions are known by
            # name, to remove when it dies, and no other server's are ever touched.
            f"--backend-config=python,shm-region-prefix-name={shm_prefix(workdir)}",
            *policy_flags(access, tls),
        ]
        server = TritonServer(
            None,  # type: ignore[arg-type]  # set by launch (triton_process)
            address, http_port, grpc_port, metrics_port, [m.name for m in models], workdir, workdir / LOG_FILE,
            http_address=web_address, tls_cert=tls[0] if tls else None, access=access, admin_key_file=key_file,
            command=command, serves_http=not no_http,
        )  # fmt: skip
        launch(server)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    try:
        wait_until_ready(server, ready_timeout, cancelled)
    except UserError as e:
        kept = server.keep_log()
        server.stop()
        # A twin's files are named by the repository's path, not by the workdir's, which is gone now.
        message = str(e).replace(str(workdir / "repository"), str(repository))
        raise UserError(f"{message} ({kept})") from None
    except BaseException:
        server.stop()
        raise
    return server


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
    add_flags(p, ServeOptions)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = from_args(ServeOptions, build_parser().parse_args(argv))
    os.umask(0o077)  # the workdir's files and a kept log are the owner's alone (Triton's too: owner_only)
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
            args.model_repository, **args.server_settings(), access=access, tls=tls, cancelled=lambda: stopping
        )
    except StartCancelled:
        print("server stopped", flush=True)
        return 0
    code = 0
    try:
        web = triton_address(server.http_address)
        for name in server.models:
            where = f"{web}:{server.http_port} (HTTP), metrics on {web}:{server.metrics_port}"
            print(
                f"{name} ready at {server.grpc_target} (gRPC{', TLS' if tls else ''}), "
                f"{where if server.serves_http else 'no HTTP or metrics (--no-http)'}",
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
