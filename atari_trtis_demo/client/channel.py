"""How the player reaches the server: the gRPC target and channel, TLS, and the player's key.

:mod:`atari_trtis_demo.client.inference_client` builds its channel from these:
retries and reconnect backoff tuned for a server that closes connections every second, a bound
on answer size, a TLS root read and checked where the error can name ``--tls-ca``, and the key
from ``$ATARI_DEMO_KEY`` sent as gRPC metadata.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
from pathlib import Path

import grpc

from atari_trtis_demo.core.errors import UserError
from atari_trtis_demo.core.keys import PLAYER_GRPC_HEADER, PLAYER_HEADER, PLAYER_KEY_ENV, check_key

# The player's key: read from this variable, sent under both header names (core.keys says why).
# A restarted server should be found again within about a second, not after gRPC's
# default backoff of up to two minutes.
# serve closes every connection after 1 s (a stream flood cannot hold the server): a call
# that races the close fails UNAVAILABLE before the server saw it. gRPC retries such a call
# (inference is idempotent) a few times within 0.1 s; a server that is really away still
# fails at once, as before, after those retries.
RETRY_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "inference.GRPCInferenceService"}],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.02s",
                    "maxBackoff": "0.05s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)
CHANNEL_OPTIONS = [
    ("grpc.enable_retries", 1),
    ("grpc.service_config", RETRY_SERVICE_CONFIG),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # Answers are a few Q-values per stack (1,024 stacks of 18 actions: 74 kB): a server
    # cannot make the player allocate more than this for one.
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
]
# Several servers behind one channel (a --host list, a dns: name; docs/scaling.md has the measurements):
# - round_robin spreads the calls over every server that is up (gRPC's own balancer);
# - outlier detection takes a server that failed at least half of its calls (and 3) in the last
#   second out of the rotation for 2 s (longer each time it fails again, 10 s at most), but never
#   more than half of the servers, and never the only one;
# - a failed attempt is sent again, to the next server: UNAVAILABLE (a server gone), NOT_FOUND
#   and CANCELLED (a Triton stopping unloads its model and cancels the calls in flight), and an
#   attempt with no answer within 0.5 s (a wedged server: it accepts and never answers). Per-attempt
#   timeouts are an experimental gRPC feature: grpc.experimental.enable_hedging turns them on;
# - a keepalive ping after 1 s without data closes a connection to a server that stopped
#   answering (a later one reconnects when it answers again);
# - a dns: name is resolved again at most once a second (gRPC's default: 30 s), so that
#   servers that join are found within seconds (serve closes every connection each second,
#   and each close asks for a new resolution).
BALANCED_ATTEMPT_SECONDS = 0.5
BALANCED_SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [
            {
                "outlier_detection_experimental": {
                    "interval": "1s",
                    "baseEjectionTime": "2s",
                    "maxEjectionTime": "10s",
                    "maxEjectionPercent": 50,
                    "failurePercentageEjection": {
                        "threshold": 50,
                        "enforcementPercentage": 100,
                        "minimumHosts": 2,
                        "requestVolume": 3,
                    },
                    "childPolicy": [{"round_robin": {}}],
                }
            }
        ],
        "methodConfig": [
            {
                "name": [{"service": "inference.GRPCInferenceService"}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.02s",
                    "maxBackoff": "0.05s",
                    "backoffMultiplier": 2,
                    "perAttemptRecvTimeout": f"{BALANCED_ATTEMPT_SECONDS}s",
                    "retryableStatusCodes": ["UNAVAILABLE", "NOT_FOUND", "CANCELLED"],
                },
            }
        ],
    }
)
BALANCED_OPTIONS = [
    *(option for option in CHANNEL_OPTIONS if option[0] != "grpc.service_config"),
    ("grpc.service_config", BALANCED_SERVICE_CONFIG),
    ("grpc.experimental.enable_hedging", 1),
    ("grpc.keepalive_time_ms", 1000),
    ("grpc.keepalive_timeout_ms", 1000),
    ("grpc.dns_min_time_between_resolutions_ms", 1000),
    # Connections of its own, not shared with the process's other channels to the same servers:
    # the per-server counts (server_watch) are then this channel's.
    ("grpc.use_local_subchannel_pool", 1),
]
# Deadline of :meth:`InferenceClient.live` and of the TLS check at connection, s.
PROBE_SECONDS = 0.2


def read_root_certificate(path: str | Path, flag: str = "--tls-ca") -> bytes:
    """The PEM root certificate(s) in ``path``; a missing, unreadable or non-PEM file is one line naming ``flag``."""
    try:
        pem = Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot read it ({e.strerror or e})") from None
    try:
        # Parsed here, where the error can name the flag, not later inside gRPC's handshake.
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=pem.decode("ascii"))
    except (UnicodeDecodeError, ssl.SSLError, ValueError):
        raise UserError(f"{flag} {path}: not a PEM certificate (expected -----BEGIN CERTIFICATE-----)") from None
    return pem


def player_key(key: str | None = None) -> str | None:
    """The key to send: ``key`` if given, else ``$ATARI_DEMO_KEY``; None when empty or unset.

    A key ``serve`` would refuse (its syntax, its length: :func:`core.keys.check_key`) is one
    line naming the variable, not the key.
    """
    value = os.environ.get(PLAYER_KEY_ENV) if key is None else key
    return check_key(PLAYER_KEY_ENV, value) if value else None


def loopback_host(host: str) -> str:
    """``host``, with ``localhost`` replaced by the loopback address ``serve`` listens on, 127.0.0.1.

    gRPC tries every address of a name, ::1 first: serve does not listen there, so any local
    user listening on [::1] at serve's port got the player's frames and its key.
    """
    return "127.0.0.1" if host.lower().rstrip(".") == "localhost" else host


def grpc_target(host: str, port: int) -> str:
    """``host:port`` as gRPC takes it: an IPv6 literal in brackets, ``localhost`` as 127.0.0.1."""
    return host_and_port(loopback_host(host), port)


def host_and_port(host: str, port: int) -> str:
    """``host:port``, an IPv6 literal in brackets; the name as given (a ``dns:`` target resolves it itself)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def speaks_tls(host: str, port: int, timeout: float = PROBE_SECONDS) -> bool:
    """Whether ``host:port`` completes a TLS handshake (any certificate): tells a TLS server from a plain one."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=host.strip("[]")):
                return True
    except (OSError, ValueError):
        return False


def key_metadata(secret: str | None) -> tuple[tuple[str, str], ...] | None:
    """The gRPC metadata that carries the player's key under both header names, or None without a key."""
    return ((PLAYER_HEADER, secret), (PLAYER_GRPC_HEADER, secret)) if secret is not None else None


def open_channel(
    address: str, tls_ca: str | Path | None, *, balanced: bool = False, tls_name: str | None = None
) -> grpc.Channel:
    """A gRPC channel to ``address``: TLS verified against ``tls_ca`` when given.

    ``balanced``: ``address`` is several servers (:data:`BALANCED_OPTIONS`), else one
    (:data:`CHANNEL_OPTIONS`). ``tls_name``: the name the servers' certificates must hold, when it
    is not ``address``'s host (a list of addresses, or one server of a list checked on its own).
    """
    options = list(BALANCED_OPTIONS if balanced else CHANNEL_OPTIONS)
    if tls_ca is not None:
        if tls_name is not None:
            options.append(("grpc.ssl_target_name_override", tls_name))
        credentials = grpc.ssl_channel_credentials(root_certificates=read_root_certificate(tls_ca))
        return grpc.secure_channel(address, credentials, options=options)
    return grpc.insecure_channel(address, options=options)
