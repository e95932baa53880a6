"""The project's KServe v2 gRPC client for the exported DQN: what ``src/app.py`` talks through.

Triton (or any KServe v2 server) is asked over ``inference.GRPCInferenceService``
with the stubs generated from ``protos/``. The client checks the server and the
model once at connection, sends frame stacks as raw little-endian bytes, and turns
every gRPC failure into an :class:`InferenceError` of one line that the caller can
act on. No Chainer here.
"""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any

import grpc
import numpy as np

from atari_trtis_demo.envs import FRAME_SIZE, STACK_SIZE
from atari_trtis_demo.errors import UserError
from atari_trtis_demo.game_id import ENV_ID_KEY
from atari_trtis_demo.kserve import kserve_v2_pb2 as pb
from atari_trtis_demo.kserve.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from atari_trtis_demo.play_stats import LatencyStats

FRAME_SHAPE = [STACK_SIZE, FRAME_SIZE, FRAME_SIZE]
# KServe v2 tensor data types by numpy dtype (only what a request may carry here).
DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(np.uint8): "UINT8"}
# A restarted server should be found again within about a second, not after gRPC's
# default backoff of up to two minutes.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


# Statuses that say the request itself is wrong; any other is the server's own failure.
REFUSALS = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.FAILED_PRECONDITION)


class InferenceError(UserError):
    """A request or connection failed; the message is one line naming server, model and status."""


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


class InferenceClient:
    """A connection to one model on a KServe v2 gRPC server (Triton).

    >>> client = InferenceClient("127.0.0.1", 8001, "atari")   # checks server and model
    >>> q_values = client.infer(frames)                          # (4,84,84) float32 -> (n_actions,)
    >>> future = client.infer_async(frames)                      # same answer, without waiting
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
    ) -> None:
        self.address = f"{host}:{port}"
        self.model = model
        self.version = version
        self.timeout = timeout
        self.stats = LatencyStats()
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

    def connect(self) -> None:
        """Check the server and the model once (every request does it first if it was not done).

        A client made with ``connect=False`` can wait for a server that is not up yet.
        """
        if not self.connected:
            self._check_model()
            self.connected = True

    # -- connection checks -------------------------------------------------------------

    def _check_model(self) -> None:
        if not self._call(self._stub.ServerLive, pb.ServerLiveRequest()).live:
            raise ServerUnavailable(f"server at {self.address} is not live")
        if not self._call(self._stub.ServerReady, pb.ServerReadyRequest()).ready:
            raise ServerUnavailable(f"server at {self.address} is not ready")
        try:
            ready = self._call(self._stub.ModelReady, pb.ModelReadyRequest(name=self.model, version=self.version)).ready
        except (InvalidRequest, ServerGoingAway):
            ready = False
        if not ready:
            raise ModelNotReady(f"model '{self.model}' not found or not ready on {self.address}")
        meta = self._call(self._stub.ModelMetadata, pb.ModelMetadataRequest(name=self.model, version=self.version))
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
                f"model '{self.model}' expects {shape} {inp.datatype} but the player sends "
                f"[-1, {STACK_SIZE}, {FRAME_SIZE}, {FRAME_SIZE}] FP32 frame stacks"
            )
        out_shape = list(out.shape)
        if out.datatype != "FP32" or len(out_shape) != (2 if self.batched else 1) or out_shape[-1] < 1:
            raise ModelNotReady(
                f"model '{self.model}' outputs {out_shape} {out.datatype}; expected [-1, n_actions] FP32 Q-values"
            )
        self.input_name = inp.name
        self.output_name = out.name
        self.n_actions = int(out_shape[-1])
        self.env_id = self._recorded_env_id()

    def _recorded_env_id(self) -> str | None:
        """The game the model's config records (parameter ``env_id``, written by the converter), or None.

        A KServe server without Triton's ModelConfig call, or a model converted
        without a known game, records none.
        """
        try:
            config = self._call(self._stub.ModelConfig, pb.ModelConfigRequest(name=self.model, version=self.version))
        except (InvalidRequest, ServerError):  # UNIMPLEMENTED or refused: not Triton
            return None
        parameter = config.config.parameters.get(ENV_ID_KEY)
        return parameter.string_value if parameter is not None and parameter.string_value else None

    # -- requests ----------------------------------------------------------------------

    def build_request(self, frames: np.ndarray) -> pb.ModelInferRequest:
        """The ModelInfer request for a (4,84,84) stack or an (N,4,84,84) batch, as raw bytes."""
        self.connect()
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

    def model_infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        """Send one ModelInfer request as built (or altered) by the caller; errors as InferenceError."""
        start = time.perf_counter()
        response = self._call(self._stub.ModelInfer, request)
        self.stats.record(time.perf_counter() - start)
        return response

    def infer(self, frames: np.ndarray) -> np.ndarray:
        """Q-values: (n_actions,) for one (4,84,84) stack, (N, n_actions) for a batch."""
        single = np.ndim(frames) == 3
        q_values = self._q_values(self.model_infer(self.build_request(frames)))
        return q_values[0] if single and self.batched else q_values

    def infer_async(self, frames: np.ndarray) -> concurrent.futures.Future:
        """Like :meth:`infer` without waiting: a future of the Q-values (or of an InferenceError)."""
        single = np.ndim(frames) == 3
        result: concurrent.futures.Future = concurrent.futures.Future()
        result.set_running_or_notify_cancel()
        start = time.perf_counter()
        call = self._stub.ModelInfer.future(self.build_request(frames), timeout=self.timeout)

        def done(call: Any) -> None:
            try:
                response = call.result()
            except grpc.RpcError as e:
                result.set_exception(self._error(e))
                return
            self.stats.record(time.perf_counter() - start)
            try:
                q_values = self._q_values(response)
                result.set_result(q_values[0] if single and self.batched else q_values)
            except InferenceError as e:
                result.set_exception(e)

        call.add_done_callback(done)
        return result

    def _q_values(self, response: pb.ModelInferResponse) -> np.ndarray:
        for i, tensor in enumerate(response.outputs):
            if tensor.name == self.output_name:
                if tensor.datatype != "FP32" or i >= len(response.raw_output_contents):
                    raise BadResponse(f"{self.address}: output '{tensor.name}' is {tensor.datatype}, not raw FP32")
                raw, shape = response.raw_output_contents[i], tuple(tensor.shape)
                if len(raw) != 4 * int(np.prod(shape)):
                    raise BadResponse(
                        f"{self.address}: output '{tensor.name}' has {len(raw)} bytes for shape {list(shape)} FP32"
                    )
                return np.frombuffer(raw, dtype="<f4").reshape(shape)
        raise BadResponse(f"{self.address}: the answer has no output '{self.output_name}'")

    # -- errors ------------------------------------------------------------------------

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise self._error(e) from None

    def _error(self, error: grpc.RpcError) -> InferenceError:
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = " ".join(str(error.details() if hasattr(error, "details") else error).split())
        if code == grpc.StatusCode.UNAVAILABLE:
            return ServerUnavailable(f"cannot connect to {self.address} (UNAVAILABLE: {details})")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return RequestTimeout(f"{self.address}: no answer from model '{self.model}' within {self.timeout:g} s")
        if code == grpc.StatusCode.NOT_FOUND:
            return ServerGoingAway(
                f"{self.address}: model '{self.model}' is no longer served (NOT_FOUND: {details}): "
                "the server is shutting down or unloaded it"
            )
        if code in REFUSALS:
            return InvalidRequest(f"{self.address}: model '{self.model}' refused the request ({code.name}: {details})")
        return ServerError(f"{self.address}: model '{self.model}' failed the request ({code.name}: {details})")

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
