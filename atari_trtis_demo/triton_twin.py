"""The files Triton needs from this project beside the repository: python-backend twins, the wheel's backend.

The ``tritonserver`` that the ``nvidia-pytriton`` wheel ships has Triton's python
backend only, so each ``onnxruntime_onnx`` model is served through a python-backend
twin (:func:`prepare_twin_repository`) that runs the very same ``model.onnx`` with
onnxruntime on the CPU (``triton_twin_model.py``, copied into each version), keeping
its name, inputs, outputs, batch size and dynamic batching. The wheel's own files are
found here too (:func:`pytriton_dir`, :func:`prepare_python_backend`,
:func:`server_environment`). No Chainer here.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path

from google.protobuf import text_format

from atari_trtis_demo.errors import UserError
from atari_trtis_demo.kserve import kserve_v2_pb2 as pb
from atari_trtis_demo.model_repository import CONFIG_FILENAME, DEFAULT_FILENAMES, MODEL_FILENAME, RepositoryModel

TWIN_SOURCE = Path(__file__).with_name("triton_twin_model.py")
TWIN_FILENAME = DEFAULT_FILENAMES["python"]
# The python-backend twin's max_batch_size as Triton sees it (see twin_config).
TWIN_BATCH_LIMIT = 2**24


def twin_config(model: RepositoryModel) -> str:
    """The python-backend config of an onnxruntime model: same tensors, batching, instances on the CPU."""
    twin = pb.ModelConfig()
    twin.CopyFrom(model.config)
    twin.platform = ""
    twin.backend = "python"
    twin.default_model_filename = TWIN_FILENAME
    for group in twin.instance_group:
        # The python backend would ask for a GPU it does not use; onnxruntime runs on the CPU here.
        group.kind = pb.ModelInstanceGroup.KIND_CPU
        del group.gpus[:]
    if twin.max_batch_size > 0:
        # Triton 2.51's python backend sums the first dimension of every request in an
        # execution and fails them all when the sum passes max_batch_size. A request
        # whose declared batch overflows (2**62) reaches it with the batch dimension
        # stripped, counting 4 (the frame stack), while the dynamic batcher counted it
        # as 0: one such request in a batch failed its batch mates. The twin gets a
        # limit no real batch reaches; it enforces the model's own per request, and
        # never runs onnxruntime on more than that at once.
        twin.max_batch_size = TWIN_BATCH_LIMIT
    # The model's own parameters (its game, "env_id") are copied above and reach clients
    # through Triton's ModelConfig; these two tell the twin what to run.
    twin.parameters["onnx_file"].string_value = model.config.default_model_filename or MODEL_FILENAME
    twin.parameters["max_batch_size"].string_value = str(model.config.max_batch_size)
    return text_format.MessageToString(twin)


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
    return env
