"""``serve``'s typed config: one dataclass whose fields are its flags (:mod:`atari_trtis_demo.core.typed_flags`).

Each default, range check and help is written here once; ``serve.build_parser`` puts the
fields on the parser and ``serve.start_server`` takes its keyword defaults from them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from atari_trtis_demo.core.cli_args import float_in, int_in, port
from atari_trtis_demo.core.typed_flags import flag


@dataclass
class ServeOptions:
    """What ``python -m atari_trtis_demo.serve`` is asked to do."""

    model_repository: str = flag(help="the repository, e.g. trtismodel")
    address: str = flag(
        "127.0.0.1",
        help="address for gRPC (default: 127.0.0.1; any other than loopback needs ATARI_DEMO_KEY or --no-key)",
    )
    http_port: int = flag(8000, type=port, help="Triton's HTTP/REST port")
    grpc_port: int = flag(8001, type=port, help="Triton's gRPC port, the players' --port")
    metrics_port: int = flag(8002, type=port, help="Prometheus metrics port")
    backend_directory: str | None = flag(
        None,
        metavar="DIR",
        help="a folder of Triton backends that has onnxruntime's (as /opt/tritonserver/backends in NVIDIA's "
        "container): serve each model.onnx with it, the repository as it is (default: none; this machine's "
        "tritonserver has no onnxruntime backend, so a python-backend twin runs each model.onnx with onnxruntime)",
    )
    log_verbose: int = flag(0, type=int_in(0, 3), help="Triton's log detail, 0-3")
    ready_timeout: float = flag(
        120.0,
        type=float_in(0, low_open=True),
        metavar="SECONDS",
        help="how long Triton may take to load every model and answer ready, at start and after a restart, "
        "before serve gives up",
    )
    tls_cert: str | None = flag(None, metavar="FILE", help="PEM certificate: serve gRPC over TLS")
    tls_key: str | None = flag(None, metavar="FILE", help="PEM private key of --tls-cert")
    no_key: bool = flag(
        False,
        action="store_true",
        help="serve a non-loopback --address without ATARI_DEMO_KEY: anyone who reaches it may play",
    )
    expose_http: bool = flag(
        False,
        action="store_true",
        help="let HTTP and metrics follow a non-loopback --address (default: they stay on 127.0.0.1; this "
        "Triton's HTTP server has published crashes: CVE-2025-23310, CVE-2025-23311)",
    )

    no_http: bool = flag(
        False,
        action="store_true",
        help="no HTTP or metrics listener at all, gRPC only (this Triton's HTTP server has no idle timeout: "
        "about 20,000 idle connections from one local user used up its open files)",
    )

    def server_settings(self) -> dict[str, Any]:
        """The fields that are ``serve.start_server``'s keywords of the same name; ``main`` handles the
        repository (positional), the TLS files (checked into a pair) and --no-key (a check, not a setting)."""
        handled_by_main = ("model_repository", "tls_cert", "tls_key", "no_key")
        return {name: value for name, value in asdict(self).items() if name not in handled_by_main}
