"""The files Triton needs from this project beside the repository: python-backend twins, the wheel's backend.

The ``tritonserver`` that the ``nvidia-pytriton`` wheel ships has Triton's python
backend only, so each ``onnxruntime_onnx`` model is served through a python-backend
twin (:func:`prepare_twin_repository`) that runs the very same ``model.onnx`` with
onnxruntime on the CPU (``triton_twin_model.py``, copied into each version), keeping
its name, inputs, outputs, batch size and dynamic batching. The wheel's own files are
found here too (:func:`pytriton_dir`, :func:`prepare_python_backend`,
:func:`server_environment`).
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path

from google.protobuf import text_format

from atari_trtis_demo.core.contract import REQUEST_BATCH_KEY
from atari_trtis_demo.core.errors import UserError
from atari_trtis_demo.core.model_config import DEFAULT_FILENAMES, MODEL_FILENAME
from atari_trtis_demo.core.model_repository import CONFIG_FILENAME, RepositoryModel
from atari_trtis_demo.kserve import kserve_v2_pb2 as pb

TWIN_SOURCE = Path(__file__).with_name("triton_twin_model.py")
TWIN_FILENAME = DEFAULT_FILENAMES["python"]
# How many times the model's max_batch_size Triton may put into one execution of the twin:
# bounded, so that a stream flood cannot make one huge batch, and 4 rather than 1 because
# fewer, larger executions (fewer wake-ups of the stub process) drain a flood's backlog
# sooner (docs/serving.md, "A stream flood"). The twin still runs onnxruntime on at most
# the model's limit at once and refuses any request larger than it.
TWIN_BATCH_FACTOR = 4
# The twin's onnxruntime session (triton_twin_model.session_options). onnxruntime's
# intra-op threads spin-wait after each run by default: in a server that shares its
# cores with the players this burnt most of the server's CPU waiting. One intra-op
# thread, no spinning: measured in docs/benchmarks.md ("The twin's onnxruntime threads").
ORT_SETTINGS = {"ort_intra_op_threads": "1", "ort_allow_spinning": "0"}


def _dims(values: object) -> str:
    return "[ " + ", ".join(str(int(v)) for v in values) + " ]"  # type: ignore[union-attr]


def twin_config(model: RepositoryModel) -> str:
    """The python-backend config of an onnxruntime model: same tensors, batching, instances on the CPU.

    Each input is reshaped to carry a leading 1 after the batch dimension, so that one
    client cannot fail another's requests (docs/serving.md, "One server, many clients");
    ``max_batch_size`` is a small multiple of the model's own (:data:`TWIN_BATCH_FACTOR`).
    """
    twin = pb.ModelConfig()
    twin.CopyFrom(model.config)
    twin.platform = ""
    twin.backend = "python"
    twin.default_model_filename = TWIN_FILENAME
    for group in twin.instance_group:
        # The python backend would ask for a GPU it does not use; onnxruntime runs on the CPU here.
        group.kind = pb.ModelInstanceGroup.KIND_CPU
        del group.gpus[:]
    # The model's own parameters (its game, "env_id") are copied above and reach clients
    # through Triton's ModelConfig; these tell the twin what to run.
    twin.parameters["onnx_file"].string_value = model.config.default_model_filename or MODEL_FILENAME
    twin.parameters[REQUEST_BATCH_KEY].string_value = str(model.config.max_batch_size)
    # Triton may merge up to TWIN_BATCH_FACTOR times the model's limit into one execution;
    # the twin runs onnxruntime on at most the model's limit at once and refuses larger requests.
    twin.max_batch_size = model.config.max_batch_size * TWIN_BATCH_FACTOR
    for key, value in ORT_SETTINGS.items():
        twin.parameters[key].string_value = value
    # The project's protobuf subset has no reshape or queue policy: those blocks are written here as text.
    inputs, batching = list(twin.input), twin.dynamic_batching if twin.HasField("dynamic_batching") else None
    del twin.input[:]
    twin.ClearField("dynamic_batching")
    text = text_format.MessageToString(twin)
    for tensor in inputs:
        text += f"input {{\n  name: {_quoted(tensor.name)}\n  data_type: {pb.DataType.Name(tensor.data_type)}\n"
        text += f"  dims: {_dims(tensor.dims)}\n"
        if twin.max_batch_size > 0:
            # A request whose declared batch overflows Triton's 32-bit batch size arrives
            # without its batch dimension; with this leading 1 it cannot fail the other
            # requests of its execution, and the twin refuses it alone (docs/serving.md, "Why
            # the twin has to"). Well-formed requests arrive as [n, 1, *dims] and run as
            # [n, *dims]: the same bytes, no copy.
            text += f"  reshape {{ shape: {_dims([1, *tensor.dims])} }}\n"
        text += "}\n"
    if batching is not None:
        text += _batching_text(batching)
    return text


def _quoted(value: str) -> str:
    return text_format.MessageToString(pb.ModelInput(name=value)).strip().split(":", 1)[1].strip()


def _batching_text(batching: pb.ModelDynamicBatching) -> str:
    """The model's dynamic batching as config text.

    No queue policy: a bounded queue (max_queue_size) let a flood take every free slot and
    the players' requests were refused; it did not bound memory either (docs/serving.md,
    "A stream flood").
    """
    lines = [f"  preferred_batch_size: {size}" for size in batching.preferred_batch_size]
    lines.append(f"  max_queue_delay_microseconds: {batching.max_queue_delay_microseconds}")
    if batching.preserve_ordering:
        lines.append("  preserve_ordering: true")
    return "dynamic_batching {\n" + "\n".join(lines) + "\n}\n"


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
        (target / CONFIG_FILENAME).write_text(twin_config(model))
        onnx_file = model.config.default_model_filename or MODEL_FILENAME
        for version in model.versions:
            (target / str(version)).mkdir()
            shutil.copyfile(TWIN_SOURCE, target / str(version) / TWIN_FILENAME)
            (target / str(version) / onnx_file).symlink_to((source_dir / str(version) / onnx_file).resolve())
    return repo


def pytriton_dir() -> Path:
    """The ``tritonserver`` folder of the installed nvidia-pytriton wheel (binary, backends, stubs)."""
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
    # The twin's onnxruntime would write a telemetry device id under ~/.cache/Microsoft/ (as onnx_export says).
    env.setdefault("ORT_DISABLE_TELEMETRY", "1")
    return env
