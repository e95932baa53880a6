"""Triton python-backend twin of an ``onnxruntime_onnx`` model.

``serve`` copies this file as ``<version>/model.py`` beside a link to the very same
``model.onnx``, because the tritonserver in the ``nvidia-pytriton`` wheel has the
python backend only. It runs inside Triton's backend stub process, not in this
package: it may import only numpy, onnxruntime and Triton's ``triton_python_backend_utils``.

One server answers many players, so no request may hurt another: with dynamic
batching Triton hands several requests to one ``execute`` call, and each is checked
on its own before any runs. Triton's own check multiplies the declared dims to get
the byte count, and a declared batch such as 2**62 overflows to the size of one frame
stack and passes it; here such a request gets its own one-line error and the others
of its batch are answered. Replies never carry a traceback or a server path.
"""

import json
import math
import os
import sys

# Triton's stub runs Python in isolated mode, which ignores PYTHONPATH: serve passes
# the site-packages of its own environment in this variable instead. It goes first so
# that numpy comes from there too (numpy<2): with the base interpreter's numpy 2.x the
# stub, built for numpy 1, returned empty output tensors.
for _path in reversed(os.environ.get("ATARI_TRTIS_SITE_PACKAGES", "").split(os.pathsep)):
    if _path and _path not in sys.path:
        sys.path.insert(0, _path)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402  (provided by Triton's python backend)

if hasattr(ort, "disable_telemetry_events"):
    ort.disable_telemetry_events()

# Config data types this twin can check, with their numpy and KServe v2 names.
DATA_TYPES = {"TYPE_FP32": (np.float32, "FP32"), "TYPE_FP16": (np.float16, "FP16"), "TYPE_UINT8": (np.uint8, "UINT8")}


class BadRequest(Exception):
    """One request is malformed: the message is the one line its sender gets."""


def error_response(message, code_name="INVALID_ARG"):
    # Python backends from Triton 23.x on take an error code; INVALID_ARG reaches the
    # client as gRPC INVALID_ARGUMENT, as Triton's own request checks do.
    code = getattr(pb_utils.TritonError, code_name, None)
    error = pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


def session_options(config):
    """onnxruntime options for a server sharing its cores with its players (and other instances).

    By default onnxruntime's intra-op threads spin-wait after each run, burning a core
    between requests that a player or Triton's frontend needs. serve writes the settings
    as config parameters (triton_twin.ORT_SETTINGS: measured there, docs/benchmarks.md).
    """
    parameters = config.get("parameters", {})

    def setting(key, default):
        return parameters.get(key, {}).get("string_value", default)

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(setting("ort_intra_op_threads", "1"))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    spinning = setting("ort_allow_spinning", "0")
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
    return options


class InputSpec:
    """One input of the config and its check, with everything that does not depend on the request computed once."""

    def __init__(self, tensor, max_batch_size):
        self.name = tensor["name"]
        self.dims = [int(d) for d in tensor["dims"]]
        self.dtype, self.datatype = DATA_TYPES[tensor["data_type"]]
        self.max_batch_size = max_batch_size
        self.reshaped = bool(max_batch_size and tensor.get("reshape"))
        dims_text = ", ".join(map(str, self.dims))
        if max_batch_size:
            self.expected = f"[n, {dims_text}] {self.datatype} with 1 <= n <= {max_batch_size}"
        else:
            self.expected = f"[{dims_text}] {self.datatype}"

    def checked(self, tensor):
        """This input's array, viewed in the shape the client sent, and its batch size (None without a batch)."""
        if tensor is None:
            raise BadRequest(f"input '{self.name}' is missing")
        shape = list(tensor.shape())
        if self.reshaped:
            # Back to the shape the client sent: [n, 1, *dims] -> [n, *dims], and a
            # batch-less [1, *dims] -> [*dims] (the declared batch was lost).
            dims = self.dims
            shape = shape[:1] + shape[2:] if len(shape) == len(dims) + 2 and shape[1] == 1 else shape[1:]
        if self.max_batch_size:
            ok = len(shape) == len(self.dims) + 1 and shape[1:] == self.dims and 1 <= shape[0] <= self.max_batch_size
        else:
            ok = shape == self.dims
        if not ok:
            raise BadRequest(f"input '{self.name}': expected shape {self.expected}, got {shape}")
        array = tensor.as_numpy()
        if array.dtype != self.dtype:
            raise BadRequest(f"input '{self.name}': expected {self.datatype}, got {array.dtype}")
        if array.size != math.prod(shape):
            raise BadRequest(f"input '{self.name}': {array.nbytes} bytes do not fill shape {shape} {self.datatype}")
        return array.reshape(shape), (shape[0] if self.max_batch_size else None)  # a view: drops the reshape's 1


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        onnx_file = config["parameters"]["onnx_file"]["string_value"]
        path = os.path.join(args["model_repository"], args["model_version"], onnx_file)
        self.session = ort.InferenceSession(path, session_options(config), providers=["CPUExecutionProvider"])
        self.model_name = config["name"]
        # The model's own limit. Triton's for the twin is a small multiple of it (see
        # triton_twin.TWIN_BATCH_FACTOR): Triton merges up to that many stacks into one
        # execute; each request is held to the model's limit here, and onnxruntime never
        # runs more than it at once.
        self.max_batch_size = int(config["parameters"]["max_batch_size"]["string_value"])
        # serve reshapes each input to [1, *dims] (triton_twin.twin_config) so that a
        # request whose declared batch Triton truncated to 0 shows a first dimension of 1,
        # not 4, to the python backend's batch sum. Such a request arrives as [1, *dims]
        # and well-formed ones as [n, 1, *dims]: the extra 1 is dropped here.
        self.inputs = [InputSpec(tensor, self.max_batch_size) for tensor in config["input"]]
        self.output_names = [tensor["name"] for tensor in config["output"]]

    def checked_inputs(self, request):
        """The request's input arrays and batch size, or BadRequest naming the tensor at fault."""
        arrays, batch = {}, None
        for spec in self.inputs:
            array, n = spec.checked(pb_utils.get_input_tensor_by_name(request, spec.name))
            if arrays and n != batch:
                raise BadRequest(f"input '{spec.name}': batch {n} differs from the other inputs' {batch}")
            arrays[spec.name], batch = array, n
        return arrays, batch

    def execute(self, requests):
        responses = [None] * len(requests)
        accepted = []  # (index, arrays, batch size)
        for index, request in enumerate(requests):
            try:
                arrays, batch = self.checked_inputs(request)
            except BadRequest as e:
                responses[index] = error_response(f"model '{self.model_name}': {e}")
                continue
            except Exception as e:  # never a traceback (with server paths) in a reply
                print(f"{self.model_name}: unreadable request: {e!r}", file=sys.stderr, flush=True)
                responses[index] = error_response(f"model '{self.model_name}': unreadable request")
                continue
            accepted.append((index, arrays, batch))
        # onnxruntime runs at most max_batch_size frame stacks at once, as Triton's own
        # batcher would form them; a model without a batch dimension runs each alone.
        group, size = [], 0
        for one in accepted:
            batch = one[2] or self.max_batch_size + 1
            if group and size + batch > self.max_batch_size:
                self.run_batch(group, responses)
                group, size = [], 0
            group.append(one)
            size += batch
        if group:
            self.run_batch(group, responses)
        return responses

    def run_batch(self, accepted, responses):
        """Run every accepted request as one onnxruntime batch and split the outputs back."""
        if len(accepted) == 1:  # a lone request (every request of a lone player): its own arrays, no copy
            feeds = accepted[0][1]
        else:
            feeds = {
                spec.name: np.concatenate([arrays[spec.name] for _, arrays, _ in accepted]) for spec in self.inputs
            }
        try:
            outputs = self.session.run(self.output_names, feeds)
        except Exception as e:
            print(f"{self.model_name}: onnxruntime failed: {e!r}", file=sys.stderr, flush=True)
            for index, _, _ in accepted:
                responses[index] = error_response(f"model '{self.model_name}': inference failed", "INTERNAL")
            return
        start = 0
        for index, _, batch in accepted:
            rows = slice(start, start + batch) if batch is not None else slice(None)
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(out[rows]))
                for name, out in zip(self.output_names, outputs, strict=True)
            ]
            responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
            start += batch or 0
