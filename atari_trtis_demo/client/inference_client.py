"""The project's KServe v2 gRPC client for the exported DQN: what ``src/app.py`` talks through.

Triton (or any KServe v2 server) is asked over ``inference.GRPCInferenceService``
with the stubs generated from ``protos/``. The client checks the server and the
model once at connection, sends frame stacks as raw little-endian bytes, and trusts
nothing it gets back (:mod:`~atari_trtis_demo.client.answers`): every answer must be
exactly one row of ``n_actions`` finite FP32 values per frame stack sent, and a server's
error text reaches the user as one printable line. With ``ATARI_DEMO_KEY`` set (or ``key=``)
every call carries the player's key; with ``tls_ca=`` the channel is TLS, verified against
that root (:mod:`~atari_trtis_demo.client.channel`).

Errors, and the exit code ``cli_args.run_cli`` gives them, are in
:mod:`~atari_trtis_demo.client.errors`: :class:`InferenceError` and its
subclasses are run-time failures (exit 1, the ones a fallback player plays through);
:class:`KeyRefused` and :class:`TlsMismatch` are the player's setup (exit 2).
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from atari_trtis_demo.client.answers import ServedModel, answer_q_values, served_model
from atari_trtis_demo.client.channel import key_metadata, open_channel, player_key, speaks_tls
from atari_trtis_demo.client.errors import (
    BadResponse,
    InferenceError,
    InvalidRequest,
    ServerUnavailable,
    TlsMismatch,
    rpc_failure,
)
from atari_trtis_demo.client.latency import LatencyStats
from atari_trtis_demo.client.server_list import parse_servers
from atari_trtis_demo.client.server_watch import ServerWatch
from atari_trtis_demo.core.errors import UserError, one_line
from atari_trtis_demo.kserve import kserve_v2_pb2 as pb
from atari_trtis_demo.kserve.grpc_service_pb2_grpc import GRPCInferenceServiceStub

# The deadline of each call that checks one server of a balanced host on its own, s.
SERVER_CHECK_SECONDS = 1.0
# KServe v2 tensor data types by numpy dtype (only what a request may carry here).
DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(np.uint8): "UINT8"}


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
        # One server, a list, or a dns: name of many (server_list); balanced over several.
        self.servers = parse_servers(host, port)
        self.address = self.servers.address
        self.model = model
        self.version = version
        self.timeout = timeout
        self.stats = LatencyStats()
        self.tls_ca = tls_ca
        self.tls = tls_ca is not None
        secret = player_key(key)
        self.keyed = secret is not None
        self._metadata = key_metadata(secret)  # kept out of any attribute a repr or message would show
        self._channel = open_channel(
            self.servers.target, tls_ca, balanced=self.servers.balanced, tls_name=self.servers.tls_override
        )
        self._stub = GRPCInferenceServiceStub(self._channel)
        self.connected = False
        self.env_id: str | None = None  # the model's game, once connected (None when its config records none)
        self.served: ServedModel | None = None
        # Calls answered per server; on a balanced channel also each server's own check. Made right
        # after the channel: it finds the channel as the newest to its target (server_watch).
        self.watch = ServerWatch(self.servers, self._served_by, model)
        if connect:
            try:
                self.connect()
            except BaseException:
                self.close()
                raise

    def connect(self, timeout: float | None = None) -> None:
        """Check the server and the model once (every request does it first if it was not done).

        A client made with ``connect=False`` can wait for a server that is not up yet.
        ``timeout``: the deadline of each check call (default: the client's). Behind a balanced
        ``host``, every server that answers now is checked on its own (:meth:`_served_by`, server_watch).
        """
        if self.connected:
            return
        try:
            self._check_model(timeout)
        except ServerUnavailable as e:
            # A TLS server drops a plain client's connection ("Socket closed"), which reads like a
            # server going down; a quick handshake of our own tells the two apart.
            refused = "connection refused" in str(e).lower()  # nothing listens: no handshake to try
            if not self.tls and e.status == "UNAVAILABLE" and not refused and self._speaks_tls():
                raise TlsMismatch(
                    f"{self.address} does not speak plain gRPC: is it serving TLS? pass --tls-ca FILE "
                    "(the root certificate that signed the server's)"
                ) from None
            raise
        self.connected = True

    def _speaks_tls(self) -> bool:
        return any(speaks_tls(host, port) for host, port in self.servers.probes[:3])

    def answered_by_server(self) -> dict[str, int]:
        """Calls each server answered so far (OK), by address: what ``--json`` reports as ``servers``.

        Several servers: gRPC's counts of this client's channel (server_watch); one: this client's.
        """
        return self.watch.answered()

    # -- connection checks -------------------------------------------------------------

    def _check_model(self, timeout: float | None = None) -> None:
        if self.servers.balanced:
            # Calls through the balanced channel are answered by different servers: each server is
            # checked on a channel of its own (the watch's first round, _served_by), and the first
            # to pass sets the model the others must serve. A call first, for the usual errors when
            # none answers (and so that gRPC connects to every server).
            self._call(self._stub.ServerLive, pb.ServerLiveRequest(), timeout)
            self.watch.check_servers()
            if self.watch.reference is None:
                raise self.watch.unchecked or ServerUnavailable(f"no server of {self.address} answered the checks")
            self._adopt(self.watch.reference[1])
        else:

            def call(method: str, request: Any) -> Any:
                return self._call(getattr(self._stub, method), request, timeout)

            self._adopt(served_model(call, self.model, self.version, self.address))

    def _adopt(self, served: ServedModel) -> None:
        self.served, self.signature, self.env_id = served, served.signature, served.env_id
        self.max_request_batch = served.max_request_batch
        self.batched, self.n_actions = self.signature.batched, self.signature.n_actions
        self.input_name, self.output_name = self.signature.input_name, self.signature.output_name

    def _served_by(self, address: str) -> ServedModel:
        """What one server of a balanced ``host`` serves, asked on a channel of its own (server_watch judges it)."""
        channel = open_channel(address, self.tls_ca, tls_name=self.servers.tls_name)
        stub = GRPCInferenceServiceStub(channel)
        timeout = SERVER_CHECK_SECONDS if self.timeout is None else min(self.timeout, SERVER_CHECK_SECONDS)

        def call(method: str, request: Any) -> Any:
            return self._call(getattr(stub, method), request, timeout, address=address)

        try:
            return served_model(call, self.model, self.version, address)
        finally:
            channel.close()

    # -- requests ----------------------------------------------------------------------

    def build_request(self, frames: np.ndarray, timeout: float | None = None) -> pb.ModelInferRequest:
        """The ModelInfer request for a (4,84,84) stack or an (N,4,84,84) batch, as raw bytes.

        Connects first if needed (``timeout``: the deadline of each check call). Behind a balanced
        ``host``, a server found serving another model since the last call is raised here.
        """
        self.connect(timeout)
        self.watch.tick()
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
                    self.watch.count_answer()
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

    def wave_parts(self, frames: np.ndarray) -> list[np.ndarray]:
        """A wave of stacks (n, 4, 84, 84) in the requests it takes: at most ``max_request_batch`` stacks each
        (an unbatched model's stacks one by one, without a batch dimension)."""
        self.connect()
        if not self.batched:
            return list(frames)
        limit = self.max_request_batch
        return [frames[i : i + limit] for i in range(0, len(frames), limit)]

    def infer_wave(self, frames: np.ndarray, timeout: float | None = None) -> np.ndarray:
        """Q-values (n, n_actions) of a wave of n stacks (n, 4, 84, 84): one request when the model's batch limit
        allows, else the fewest that do, sent at once. The first failure is raised, as :meth:`infer` raises it."""
        parts = self.wave_parts(frames)
        if len(parts) == 1:
            return self.infer(parts[0], timeout).reshape(len(frames), -1)
        return self._joined([self.infer_async(part, timeout) for part in parts]).result()

    def infer_wave_async(self, frames: np.ndarray, timeout: float | None = None) -> concurrent.futures.Future:
        """Like :meth:`infer_wave` without waiting: a future of the (n, n_actions) Q-values, or of the first error."""
        futures = [self.infer_async(part, timeout) for part in self.wave_parts(frames)]
        if len(futures) == 1 and self.batched:
            return futures[0]
        return self._joined(futures)

    def _joined(self, futures: list[concurrent.futures.Future]) -> concurrent.futures.Future:
        """One future of the parts' Q-values in order, (n, n_actions); or of the first part's error."""
        whole: concurrent.futures.Future = concurrent.futures.Future()
        whole.set_running_or_notify_cancel()
        left, lock = [len(futures)], threading.Lock()

        def part_done(part: concurrent.futures.Future) -> None:
            with lock:
                left[0] -= 1
                if whole.done():
                    return
                if part.exception() is not None:
                    whole.set_exception(part.exception())
                elif left[0] == 0:
                    whole.set_result(np.concatenate([f.result().reshape(-1, self.n_actions) for f in futures]))

        for future in futures:
            future.add_done_callback(part_done)
        return whole

    def _rows(self, request: pb.ModelInferRequest) -> int | None:
        """How many Q-value rows the answer must hold: one per stack sent (None: an unbatched model)."""
        return int(request.inputs[0].shape[0]) if self.batched else None

    def _q_values(self, response: pb.ModelInferResponse, rows: int | None) -> np.ndarray:
        """The answer's Q-values, checked (:func:`~atari_trtis_demo.client.answers.answer_q_values`)."""
        return answer_q_values(response, rows, self.signature, f"{self.address}: model '{self.model}' answered")

    # -- errors ------------------------------------------------------------------------

    def _deadline(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    def _call(self, method: Any, request: Any, timeout: float | None = None, address: str | None = None) -> Any:
        try:
            response = method(request, timeout=self._deadline(timeout), metadata=self._metadata)
        except grpc.RpcError as e:
            raise self._error(e, timeout, address) from None
        if address is None:  # not a check of one server on its own channel
            self.watch.count_answer()
        return response

    def _error(
        self, error: grpc.RpcError, timeout: float | None = None, address: str | None = None
    ) -> InferenceError | UserError:
        return rpc_failure(
            error,
            address=address or self.address,
            model=self.model,
            host=self.servers.tls_name,
            deadline=self._deadline(timeout),
            keyed=self.keyed,
            tls=self.tls,
        )

    def close(self) -> None:
        self.watch.close()
        self._channel.close()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
