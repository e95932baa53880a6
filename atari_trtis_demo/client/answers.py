"""What the inference client accepts from a server: the model's signature at connection, each answer's Q-values.

The client trusts nothing it gets back: the model must take FP32 frame stacks of the
contract's shape and give one row of ``n_actions`` FP32 Q-values per stack, and every
answer must be exactly that, with the right byte count and finite.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from atari_trtis_demo.client.errors import (
    BadResponse,
    InvalidRequest,
    ModelNotLoaded,
    ModelNotReady,
    ServerError,
    ServerGoingAway,
    ServerUnavailable,
)
from atari_trtis_demo.core.contract import DATATYPE, ENV_ID_KEY, FRAME_STACK_SHAPE, REQUEST_BATCH_KEY
from atari_trtis_demo.core.errors import one_line
from atari_trtis_demo.kserve import kserve_v2_pb2 as pb

FRAME_SHAPE = list(FRAME_STACK_SHAPE)  # as a model's metadata lists it


def shape_text(shape: Sequence[int]) -> str:
    """A shape for a message: a server's 10,000-dimension shape is not printed in full."""
    return str(list(shape)) if len(shape) <= 6 else f"[{len(shape)} dimensions]"


@dataclass(frozen=True)
class ModelSignature:
    """The served model's tensors, as the client checked them at connection."""

    input_name: str
    output_name: str
    n_actions: int
    batched: bool  # the input has a batch dimension: [-1, 4, 84, 84]


def check_signature(meta: pb.ModelMetadataResponse, model: str, address: str) -> ModelSignature:
    """The model's signature from its metadata, or :class:`ModelNotReady` saying why the player cannot use it."""
    if len(meta.inputs) != 1 or len(meta.outputs) != 1:
        raise ModelNotReady(
            f"model '{model}' on {address} has {len(meta.inputs)} inputs and {len(meta.outputs)} "
            "outputs; expected one frame-stack input and one Q-value output"
        )
    (inp,), (out,) = meta.inputs, meta.outputs
    shape = list(inp.shape)
    batched = len(shape) == 4 and shape[0] == -1
    if inp.datatype != DATATYPE or shape[-3:] != FRAME_SHAPE or len(shape) not in (3, 4):
        raise ModelNotReady(
            f"model '{model}' expects {shape_text(shape)} {one_line(inp.datatype, 20)} but the player "
            f"sends [-1, {', '.join(map(str, FRAME_STACK_SHAPE))}] {DATATYPE} frame stacks"
        )
    out_shape = list(out.shape)
    if out.datatype != DATATYPE or len(out_shape) != (2 if batched else 1) or out_shape[-1] < 1:
        raise ModelNotReady(
            f"model '{model}' outputs {shape_text(out_shape)} {one_line(out.datatype, 20)}; "
            f"expected [-1, n_actions] {DATATYPE} Q-values"
        )
    return ModelSignature(inp.name, out.name, int(out_shape[-1]), batched)


@dataclass(frozen=True)
class ServedModel:
    """What a server serves under the model's name: its signature and the game its config records (or None)."""

    signature: ModelSignature
    env_id: str | None
    max_request_batch: int  # the most frame stacks one request may carry (request_batch_limit)

    def describe(self) -> str:
        return (
            f"{self.signature.n_actions} actions, game {self.env_id or '(none recorded)'}, "
            f"at most {self.max_request_batch} stacks a request"
        )


def served_model(call: Callable[[str, Any], Any], model: str, version: str, address: str) -> ServedModel:
    """Check the server and the model once: live, ready, the model ready, its signature usable; its game.

    ``call(method, request)`` makes one call (``"ServerLive"``...) and raises the client's errors.
    A KServe server without Triton's ModelConfig call, or a model converted without a known
    game, records no game (None) and no batch limit (one stack a request).
    """
    if not call("ServerLive", pb.ServerLiveRequest()).live:
        raise ServerUnavailable(f"server at {address} is not live")
    if not call("ServerReady", pb.ServerReadyRequest()).ready:
        raise ServerUnavailable(f"server at {address} is not ready")
    try:
        ready = call("ModelReady", pb.ModelReadyRequest(name=model, version=version)).ready
    except (InvalidRequest, ServerGoingAway):
        ready = False
    if not ready:
        raise ModelNotLoaded(f"model '{model}' not found or not ready on {address}")
    meta = call("ModelMetadata", pb.ModelMetadataRequest(name=model, version=version))
    signature = check_signature(meta, model, address)
    try:
        config = call("ModelConfig", pb.ModelConfigRequest(name=model, version=version)).config
    except (InvalidRequest, ServerError):  # UNIMPLEMENTED or refused: not Triton
        config = None
    return ServedModel(signature, recorded_env_id(config), request_batch_limit(config, signature.batched))


def answer_q_values(
    response: pb.ModelInferResponse, rows: int | None, signature: ModelSignature, where: str
) -> np.ndarray:
    """The answer's Q-values, checked: exactly ``rows`` rows of ``n_actions`` finite FP32 values.

    ``rows`` None: an unbatched model's single row. ``where`` begins each message
    ("host:port: model 'atari' answered"). The shape is compared before anything is
    allocated: a lying server's [2**62, 4] costs nothing.
    """
    expected = [signature.n_actions] if rows is None else [rows, signature.n_actions]
    for i, tensor in enumerate(response.outputs):
        if tensor.name != signature.output_name:
            continue
        if tensor.datatype != DATATYPE:
            raise BadResponse(f"{where} {one_line(tensor.datatype, 20)} Q-values, not {DATATYPE}")
        if len(tensor.shape) != len(expected) or list(tensor.shape) != expected:
            raise BadResponse(
                f"{where} shape {shape_text(tensor.shape)} for {rows or 1} frame stack(s); expected {expected}"
            )
        if i >= len(response.raw_output_contents):
            raise BadResponse(f"{where} no raw contents for output '{one_line(tensor.name, 40)}'")
        raw = response.raw_output_contents[i]
        size = 4 * math.prod(expected)
        if len(raw) != size:
            raise BadResponse(f"{where} {len(raw)} bytes for shape {expected} {DATATYPE}, not {size}")
        q_values = np.frombuffer(raw, dtype="<f4").reshape(expected)
        if not np.isfinite(q_values).all():
            raise BadResponse(f"{where} Q-values that are not finite (NaN or infinity)")
        return q_values
    raise BadResponse(f"{where} without the output '{one_line(signature.output_name, 40)}'")


def recorded_env_id(config: pb.ModelConfig | None) -> str | None:
    """The game the model's config records (parameter ``env_id``, written by the converter), or None.

    A KServe server without Triton's ModelConfig call, or a model converted without a
    known game, records none.
    """
    parameter = config.parameters.get(ENV_ID_KEY) if config is not None else None
    return parameter.string_value if parameter is not None and parameter.string_value else None


def request_batch_limit(config: pb.ModelConfig | None, batched: bool) -> int:
    """The most frame stacks one request may carry: the model's ``max_batch_size``.

    serve's python-backend twin declares a multiple of it to Triton (what Triton may merge
    into one execution) and records the model's own in the parameter
    :data:`~atari_trtis_demo.core.contract.REQUEST_BATCH_KEY`, which wins. Without a config
    (a KServe server that is not Triton), or for a model without a batch dimension: 1.
    """
    if config is None or not batched:
        return 1
    recorded = config.parameters.get(REQUEST_BATCH_KEY)
    if recorded is not None and recorded.string_value.isdigit() and int(recorded.string_value) > 0:
        return int(recorded.string_value)
    return max(1, int(config.max_batch_size))
