"""The project's KServe v2 gRPC client for the exported DQN: what ``src/app.py`` talks through.

Triton (or any KServe v2 server) is asked over ``inference.GRPCInferenceService``
with the stubs generated from ``protos/``. The client checks the server and the
model once at connection, sends frame stacks as raw little-endian bytes, and trusts
nothing it gets back: every answer must be exactly one row of ``n_actions`` finite
FP32 values per frame stack sent, and a server's error text reaches the user as one
printable line. With ``ATARI_DEMO_KEY`` set (or ``key=``) every call carries the
player's key; with ``tls_ca=`` the channel is TLS, verified against that root.

Errors, and the exit code ``cli_args.run_cli`` gives them:

- :class:`InferenceError` and its subclasses (server down, model not ready, request
  refused, bad answer, timeout) are subclasses of
  :class:`~atari_trtis_demo.core.errors.ServiceError`: run-time failures, exit 1, the ones a
  fallback player plays through.
- :class:`KeyRefused` and :class:`TlsMismatch` are
  :class:`~atari_trtis_demo.core.errors.UserError` subclasses: the player's setup is wrong (the key,
  the TLS flag), exit 2, and no fallback loop can mend them.

No Chainer here.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
import re
import socket
import ssl
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from atari_trtis_demo.core.contract import ENV_ID_KEY, FRAME_SIZE, STACK_SIZE
from atari_trtis_demo.core.errors import ServiceError, UserError, one_line
from atari_trtis_demo.kserve import kserve_v2_pb2 as pb
from atari_trtis_demo.kserve.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from atari_trtis_demo.play.play_stats import LatencyStats

FRAME_SHAPE = [STACK_SIZE, FRAME_SIZE, FRAME_SIZE]
# KServe v2 tensor data types by numpy dtype (only what a request may carry here).
DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(np.uint8): "UINT8"}
# The player's key: read from this variable, sent as this gRPC header. Triton's own check of
# --grpc-restricted-protocol=...:atari-demo-key=VALUE looks for the header with its gRPC prefix
# (measured on tritonserver 2.51: it answers "expecting header 'triton-grpc-protocol-atari-demo-key'"),
# so the key goes under both names.
KEY_ENV = "ATARI_DEMO_KEY"
KEY_HEADER = "atari-demo-key"
TRITON_KEY_HEADER = "triton-grpc-protocol-" + KEY_HEADER
# A restarted server should be found again within about a second, not after gRPC's
# default backoff of up to two minutes.
# serve closes every connection after 2 s (a stream flood cannot hold the server): a call
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
# The reason in gRPC's words for a failed handshake, e.g. "OPENSSL_internal:CERTIFICATE_VERIFY_FAILED".
TLS_REASON = re.compile(r"OPENSSL_internal:([A-Z0-9_]+)")
# Deadline of :meth:`InferenceClient.live` and of the TLS check at connection, s.
PROBE_SECONDS = 0.2


# Statuses that say the request itself is wrong; any other is the server's own failure.
REFUSALS = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.FAILED_PRECONDITION)


class InferenceError(ServiceError):
    """A request or connection failed; the message is one line naming server, model and status.

    ``status`` is the gRPC status code's name when the failure came from one (else None).
    """

    status: str | None = None


class ServerUnavailable(InferenceError):
    """The server cannot be reached (down, restarting, wrong address)."""


class ModelNotReady(InferenceError):
    """The server answers but the model is unknown, not loaded, or not what the player needs."""


class ServerGoingAway(ServerUnavailable):
    """The model the client checked is gone (NOT_FOUND): the server is shutting down or unloaded it."""


class InvalidRequest(InferenceError):
    """The server refused the request (wrong name, shape, data type, size, batch...)."""


class ServerError(InferenceError):
    """The server failed the request for a reason of its own (INTERNAL, UNKNOWN, out of resources...)."""


class BadResponse(InferenceError):
    """The server answered, but not with the Q-values the client asked for."""


class RequestTimeout(InferenceError):
    """No answer within the per-request deadline."""


class KeyRefused(UserError):
    """The server refuses this player's key (none, or a wrong one in ``ATARI_DEMO_KEY``): the user's to fix."""


class TlsMismatch(UserError):
    """Client and server disagree on TLS (no ``--tls-ca`` for a TLS server, or one for a plain
    server, or a certificate that root does not vouch for): the user's to fix."""


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

    A key that cannot be a gRPC header value is one line naming the variable, not the key.
    """
    value = os.environ.get(KEY_ENV) if key is None else key
    if not value:
        return None
    if value != value.strip() or not all(" " <= c <= "~" for c in value):
        raise UserError(f"{KEY_ENV}: the key must be printable ASCII (no spaces at either end, no control characters)")
    return value


def grpc_target(host: str, port: int) -> str:
    """``host:port`` as gRPC takes it: an IPv6 literal in brackets."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _shape_text(shape: Sequence[int]) -> str:
    return str(list(shape)) if len(shape) <= 6 else f"[{len(shape)} dimensions]"


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


class InferenceClient:
    """A connection to one model on a KServe v2 gRPC server (Triton).

    >>> client = InferenceClient("127.0.0.1", 8001, "atari")   # checks server and model
    >>> q_values = client.infer(frames)                          # (4,84,84) float32 -> (n_actions,)
    >>> future = client.infer_async(frames)                      # same answer, without waiting
    >>> client.infer(frames, timeout=0.2)                        # a deadline of its own for this call

    ``key``: sent with every call (default ``$ATARI_DEMO_KEY``; never printed).
    ``tls_ca``: a PEM root certificate file; the channel is then TLS, the server's
    certificate checked against it (and against ``host``).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8001,
        model: str = "atari",
        *,
        timeout: float = 5.0,
        version: str = "",
        connect: bool = True,
        key: str | None = None,
        tls_ca: str | Path | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.address = grpc_target(host, port)
        self.model = model
        self.version = version
        self.timeout = timeout
        self.stats = LatencyStats()
        self.tls = tls_ca is not None
        secret = player_key(key)
        self.keyed = secret is not None
        # Kept out of any attribute a repr or message would show.
        self._metadata = ((KEY_HEADER, secret), (TRITON_KEY_HEADER, secret)) if secret is not None else None
        if tls_ca is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=read_root_certificate(tls_ca))
            self._channel = grpc.secure_channel(self.address, credentials, options=CHANNEL_OPTIONS)
        else:
            self._channel = grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        self._stub = GRPCInferenceServiceStub(self._channel)
        self.connected = False
        self.env_id: str | None = None  # the model's game, once connected (None when its config records none)
        if connect:
            try:
                self.connect()
            except BaseException:
                self._channel.close()
                raise

    def connect(self, timeout: float | None = None) -> None:
        """Check the server and the model once (every request does it first if it was not done).

        A client made with ``connect=False`` can wait for a server that is not up yet.
        ``timeout``: the deadline of each check call (default: the client's).
        """
        if self.connected:
            return
        try:
            self._check_model(timeout)
        except ServerUnavailable as e:
            # A TLS server drops a plain client's connection ("Socket closed"), which reads like a
            # server going down; a quick handshake of our own tells the two apart.
            refused = "connection refused" in str(e).lower()  # nothing listens: no handshake to try
            if not self.tls and e.status == "UNAVAILABLE" and not refused and speaks_tls(self.host, self.port):
                raise TlsMismatch(
                    f"{self.address} does not speak plain gRPC: is it serving TLS? pass --tls-ca FILE "
                    "(the root certificate that signed the server's)"
                ) from None
            raise
        self.connected = True

    def live(self, timeout: float = PROBE_SECONDS) -> bool:
        """Whether the server answers a liveness call within ``timeout`` s: a cheap probe that also
        tells a server that accepts connections but never answers (False) from a live one."""
        try:
            return bool(self._stub.ServerLive(pb.ServerLiveRequest(), timeout=timeout, metadata=self._metadata).live)
        except grpc.RpcError:
            return False

    # -- connection checks -------------------------------------------------------------

    def _check_model(self, timeout: float | None = None) -> None:
        if not self._call(self._stub.ServerLive, pb.ServerLiveRequest(), timeout).live:
            raise ServerUnavailable(f"server at {self.address} is not live")
        if not self._call(self._stub.ServerReady, pb.ServerReadyRequest(), timeout).ready:
            raise ServerUnavailable(f"server at {self.address} is not ready")
        try:
            request = pb.ModelReadyRequest(name=self.model, version=self.version)
            ready = self._call(self._stub.ModelReady, request, timeout).ready
        except (InvalidRequest, ServerGoingAway):
            ready = False
        if not ready:
            raise ModelNotReady(f"model '{self.model}' not found or not ready on {self.address}")
        request = pb.ModelMetadataRequest(name=self.model, version=self.version)
        meta = self._call(self._stub.ModelMetadata, request, timeout)
        if len(meta.inputs) != 1 or len(meta.outputs) != 1:
            raise ModelNotReady(
                f"model '{self.model}' on {self.address} has {len(meta.inputs)} inputs and {len(meta.outputs)} "
                "outputs; expected one frame-stack input and one Q-value output"
            )
        (inp,), (out,) = meta.inputs, meta.outputs
        shape = list(inp.shape)
        self.batched = len(shape) == 4 and shape[0] == -1
        if inp.datatype != "FP32" or shape[-3:] != FRAME_SHAPE or len(shape) not in (3, 4):
            raise ModelNotReady(
                f"model '{self.model}' expects {_shape_text(shape)} {one_line(inp.datatype, 20)} but the player "
                f"sends [-1, {STACK_SIZE}, {FRAME_SIZE}, {FRAME_SIZE}] FP32 frame stacks"
            )
        out_shape = list(out.shape)
        if out.datatype != "FP32" or len(out_shape) != (2 if self.batched else 1) or out_shape[-1] < 1:
            raise ModelNotReady(
                f"model '{self.model}' outputs {_shape_text(out_shape)} {one_line(out.datatype, 20)}; "
                "expected [-1, n_actions] FP32 Q-values"
            )
        self.input_name = inp.name
        self.output_name = out.name
        self.n_actions = int(out_shape[-1])
        self.env_id = self._recorded_env_id(timeout)

    def _recorded_env_id(self, timeout: float | None = None) -> str | None:
        """The game the model's config records (parameter ``env_id``, written by the converter), or None.

        A KServe server without Triton's ModelConfig call, or a model converted
        without a known game, records none.
        """
        try:
            request = pb.ModelConfigRequest(name=self.model, version=self.version)
            config = self._call(self._stub.ModelConfig, request, timeout)
        except (InvalidRequest, ServerError):  # UNIMPLEMENTED or refused: not Triton
            return None
        parameter = config.config.parameters.get(ENV_ID_KEY)
        return parameter.string_value if parameter is not None and parameter.string_value else None

    # -- requests ----------------------------------------------------------------------

    def build_request(self, frames: np.ndarray, timeout: float | None = None) -> pb.ModelInferRequest:
        """The ModelInfer request for a (4,84,84) stack or an (N,4,84,84) batch, as raw bytes.

        Connects first if needed (``timeout``: the deadline of each check call).
        """
        self.connect(timeout)
        array = np.asarray(frames)
        if array.ndim == 3 and self.batched:
            array = array[None]
        datatype = DATATYPES.get(array.dtype)
        if datatype is None:
            raise InvalidRequest(f"frames of dtype {array.dtype} cannot be sent; the model takes float32")
        request = pb.ModelInferRequest(model_name=self.model, model_version=self.version)
        tensor = request.inputs.add()
        tensor.name = self.input_name
        tensor.datatype = datatype
        tensor.shape.extend(array.shape)
        request.outputs.add().name = self.output_name
        request.raw_input_contents.append(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())
        return request

    def model_infer(self, request: pb.ModelInferRequest, timeout: float | None = None) -> pb.ModelInferResponse:
        """Send one ModelInfer request as built (or altered) by the caller; errors as InferenceError.

        ``timeout``: this call's deadline in seconds (default: the client's).
        """
        start = time.perf_counter()
        response = self._call(self._stub.ModelInfer, request, timeout)
        self.stats.record(time.perf_counter() - start)
        return response

    def infer(self, frames: np.ndarray, timeout: float | None = None) -> np.ndarray:
        """Q-values: (n_actions,) for one (4,84,84) stack, (N, n_actions) for a batch.

        ``timeout``: this call's deadline in seconds (default: the client's), e.g. a short
        one for a probe that must not hold up a game.
        """
        request = self.build_request(frames, timeout)
        rows = self._rows(request)
        q_values = self._q_values(self.model_infer(request, timeout), rows)
        return q_values[0] if np.ndim(frames) == 3 and self.batched else q_values

    def infer_async(self, frames: np.ndarray, timeout: float | None = None) -> concurrent.futures.Future:
        """Like :meth:`infer` without waiting: a future of the Q-values, or of the error
        (:class:`InferenceError`, or :class:`KeyRefused`) that :meth:`infer` would raise."""
        single = np.ndim(frames) == 3
        result: concurrent.futures.Future = concurrent.futures.Future()
        result.set_running_or_notify_cancel()
        start = time.perf_counter()
        request = self.build_request(frames, timeout)
        rows = self._rows(request)
        call = self._stub.ModelInfer.future(request, timeout=self._deadline(timeout), metadata=self._metadata)

        def done(call: Any) -> None:
            # Runs on gRPC's thread: whatever goes wrong must land in the future, or the
            # game would wait forever for an answer that never comes.
            try:
                try:
                    response = call.result()
                except grpc.RpcError as e:
                    raise self._error(e, timeout) from None
                self.stats.record(time.perf_counter() - start)
                q_values = self._q_values(response, rows)
                result.set_result(q_values[0] if single and self.batched else q_values)
            except (InferenceError, UserError) as e:
                result.set_exception(e)
            except Exception as e:  # noqa: BLE001 (a cancelled call, or a check this module missed)
                result.set_exception(
                    BadResponse(f"{self.address}: unusable answer ({type(e).__name__}: {one_line(e)})")
                )

        call.add_done_callback(done)
        return result

    def _rows(self, request: pb.ModelInferRequest) -> int | None:
        """How many Q-value rows the answer must hold: one per stack sent (None: an unbatched model)."""
        return int(request.inputs[0].shape[0]) if self.batched else None

    def _q_values(self, response: pb.ModelInferResponse, rows: int | None) -> np.ndarray:
        """The answer's Q-values, checked: exactly ``rows`` rows of ``n_actions`` finite FP32 values.

        The shape is compared before anything is allocated: a lying server's [2**62, 4]
        costs nothing.
        """
        expected = [self.n_actions] if rows is None else [rows, self.n_actions]
        where = f"{self.address}: model '{self.model}' answered"
        for i, tensor in enumerate(response.outputs):
            if tensor.name != self.output_name:
                continue
            if tensor.datatype != "FP32":
                raise BadResponse(f"{where} {one_line(tensor.datatype, 20)} Q-values, not FP32")
            if len(tensor.shape) != len(expected) or list(tensor.shape) != expected:
                raise BadResponse(
                    f"{where} shape {_shape_text(tensor.shape)} for {rows or 1} frame stack(s); expected {expected}"
                )
            if i >= len(response.raw_output_contents):
                raise BadResponse(f"{where} no raw contents for output '{one_line(tensor.name, 40)}'")
            raw = response.raw_output_contents[i]
            if len(raw) != 4 * math.prod(expected):
                raise BadResponse(f"{where} {len(raw)} bytes for shape {expected} FP32, not {4 * math.prod(expected)}")
            q_values = np.frombuffer(raw, dtype="<f4").reshape(expected)
            if not np.isfinite(q_values).all():
                raise BadResponse(f"{where} Q-values that are not finite (NaN or infinity)")
            return q_values
        raise BadResponse(f"{where} without the output '{one_line(self.output_name, 40)}'")

    # -- errors ------------------------------------------------------------------------

    def _deadline(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return method(request, timeout=self._deadline(timeout), metadata=self._metadata)
        except grpc.RpcError as e:
            raise self._error(e, timeout) from None

    def _error(self, error: grpc.RpcError, timeout: float | None = None) -> InferenceError | UserError:
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        # The server's words, made safe for a terminal: one printable line of bounded length.
        full = one_line(error.details() if hasattr(error, "details") else error, limit=None)
        details, lowered = one_line(full), full.lower()  # matched in full, shown cut
        failure: InferenceError
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED) or (
            # Triton's --grpc-restricted-protocol answers a missing or wrong key with UNAVAILABLE
            # "This protocol is restricted, expecting header '...'": not a server that is down.
            code == grpc.StatusCode.UNAVAILABLE and "restricted" in lowered and "header" in lowered
        ):
            if self.keyed:
                return KeyRefused(
                    f"{self.address} refused the key in {KEY_ENV} ({code.name}): "
                    f"set {KEY_ENV} to the key the server was started with"
                )
            return KeyRefused(
                f"{self.address} takes only players with its key ({code.name}): "
                f"set {KEY_ENV} to the key the server was started with"
            )
        if self.tls and "handshake" in lowered:  # only a TLS channel shakes hands
            reason = TLS_REASON.search(full)
            why = reason.group(1) if reason else details
            if "WRONG_VERSION_NUMBER" in why or "HTTP_REQUEST" in why:
                return TlsMismatch(f"{self.address} does not speak TLS: drop --tls-ca, or serve with TLS ({why})")
            return TlsMismatch(
                f"{self.address}: TLS handshake failed ({why}): is its certificate signed by --tls-ca "
                f"and made for '{self.host}'?"
            )
        if code == grpc.StatusCode.UNAVAILABLE:
            failure = ServerUnavailable(f"cannot connect to {self.address} (UNAVAILABLE: {details})")
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
            failure = RequestTimeout(
                f"{self.address}: no answer from model '{self.model}' within {self._deadline(timeout):g} s"
            )
        elif code == grpc.StatusCode.NOT_FOUND:
            failure = ServerGoingAway(
                f"{self.address}: model '{self.model}' is no longer served (NOT_FOUND: {details}): "
                "the server is shutting down or unloaded it"
            )
        elif code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in lowered:
            failure = BadResponse(
                f"{self.address}: model '{self.model}' answered with an oversized message ({details})"
            )
        elif code in REFUSALS:
            failure = InvalidRequest(
                f"{self.address}: model '{self.model}' refused the request ({code.name}: {details})"
            )
        else:
            failure = ServerError(f"{self.address}: model '{self.model}' failed the request ({code.name}: {details})")
        failure.status = code.name
        return failure

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
