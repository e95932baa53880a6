"""Triton python-backend twin of an ``onnxruntime_onnx`` model.

``serve`` copies this file as ``<version>/model.py`` beside a link to the very same
``model.onnx``, because the tritonserver in the ``nvidia-pytriton`` wheel has the
python backend only. It runs inside Triton's backend stub process, not in this
package: it may import only numpy, onnxruntime and Triton's ``triton_python_backend_utils``.
"""

import json
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


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        onnx_file = config["parameters"]["onnx_file"]["string_value"]
        path = os.path.join(args["model_repository"], args["model_version"], onnx_file)
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_names = [tensor["name"] for tensor in config["output"]]

    def execute(self, requests):
        # With dynamic batching Triton hands over several requests at once: run them as
        # one onnxruntime batch, then split the outputs back per request.
        feeds = {
            name: np.concatenate([pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests])
            for name in self.input_names
        }
        sizes = [pb_utils.get_input_tensor_by_name(r, self.input_names[0]).as_numpy().shape[0] for r in requests]
        outputs = self.session.run(self.output_names, feeds)
        responses = []
        start = 0
        for size in sizes:
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(out[start : start + size]))
                for name, out in zip(self.output_names, outputs, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses
