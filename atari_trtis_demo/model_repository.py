"""Writing a Triton model repository: ``<repo>/<name>/config.pbtxt`` + ``<version>/model.onnx``.

No Chainer here: the serving side reads what this module writes. Writes are atomic:
a failed conversion leaves the repository as it was, and a config never points to a
version that is not fully written.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid

from atari_trtis_demo.envs import FRAME_SIZE, STACK_SIZE
from atari_trtis_demo.errors import UserError

INPUT_NAME = "input"
OUTPUT_NAME = "action"
MODEL_FILENAME = "model.onnx"
CONFIG_FILENAME = "config.pbtxt"
INSTANCE_KINDS = ("KIND_GPU", "KIND_CPU")
# Bounds of the converter's --max-batch-size and --instance-count: beyond them a
# config is a typo (Triton would try to allocate batches or instances that large).
MAX_BATCH_SIZE_LIMIT = 4096
INSTANCE_COUNT_LIMIT = 64
_MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def model_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a Triton model name, or None when it can.

    A model is one directory of the repository and its name is quoted in
    ``config.pbtxt``: only letters, digits, ``_``, ``-`` and ``.``, and not ``.`` or
    ``..`` (which would write into or above the repository).
    """
    if not name:
        return "must not be empty"
    if not _MODEL_NAME.fullmatch(name):
        return "may hold only letters, digits, '_', '-' and '.' (it is one directory of the repository)"
    if name in (".", ".."):
        return "must name a directory inside the repository, not '.' or '..'"
    return None


def check_model_name(name: str) -> str:
    """``name`` if it is a valid Triton model name, else :class:`UserError` naming ``--name``."""
    problem = model_name_problem(name)
    if problem:
        raise UserError(f"--name {name!r}: {problem}")
    return name


def render_config(
    name: str,
    n_actions: int,
    *,
    max_batch_size: int = 32,
    instance_kind: str = "KIND_GPU",
    instance_count: int = 1,
) -> str:
    """The ``config.pbtxt`` Triton needs to load the exported DQN, with comments for users."""
    check_model_name(name)
    if instance_kind not in INSTANCE_KINDS:
        raise UserError(f"--instance-kind must be one of {', '.join(INSTANCE_KINDS)}, got {instance_kind}")
    if not 1 <= max_batch_size <= MAX_BATCH_SIZE_LIMIT:
        raise UserError(f"--max-batch-size must be between 1 and {MAX_BATCH_SIZE_LIMIT}, got {max_batch_size}")
    if not 1 <= instance_count <= INSTANCE_COUNT_LIMIT:
        raise UserError(f"--instance-count must be between 1 and {INSTANCE_COUNT_LIMIT}, got {instance_count}")
    return f"""# Triton model configuration written by onnx_converter_src/converter.py.
name: "{name}"
platform: "onnxruntime_onnx"
# The largest batch Triton may form from queued requests; the ONNX model itself
# accepts any batch size. The batch dimension is implicit in the dims below.
max_batch_size: {max_batch_size}
input [
  {{
    name: "{INPUT_NAME}"
    data_type: TYPE_FP32
    # 4 stacked {FRAME_SIZE}x{FRAME_SIZE} grayscale frames scaled to [0, 1] by the client.
    dims: [ {STACK_SIZE}, {FRAME_SIZE}, {FRAME_SIZE} ]
  }}
]
output [
  {{
    name: "{OUTPUT_NAME}"
    data_type: TYPE_FP32
    # One Q-value per action of the game the agent was trained on.
    dims: [ {n_actions} ]
  }}
]
# Merge requests that arrive together into one batch (raise the delay to batch more
# under load, at the price of latency).
dynamic_batching {{
  max_queue_delay_microseconds: 100
}}
instance_group [
  {{
    # KIND_GPU on a GPU server; KIND_CPU where there is none. More instances serve
    # more requests in parallel.
    count: {instance_count}
    kind: {instance_kind}
  }}
]
default_model_filename: "{MODEL_FILENAME}"
"""


def existing_versions(model_dir: str) -> list[int]:
    """Version numbers already present under ``<repo>/<name>/``."""
    if not os.path.isdir(model_dir):
        return []
    return sorted(int(n) for n in os.listdir(model_dir) if n.isdigit() and os.path.isdir(os.path.join(model_dir, n)))


def write_file_atomic(path: str, data: bytes, *, force: bool, flag: str) -> None:
    """Write ``path`` via a temporary sibling and a rename; refuse to replace unless ``force``."""
    if os.path.exists(path) and not force:
        raise UserError(f"{flag} {path}: already exists (use --force to replace it)")
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=parent)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot write ({e.strerror})") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot write ({e.strerror})") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_model_version(
    repository: str,
    name: str,
    model_bytes: bytes,
    config_text: str,
    *,
    version: int | None = None,
    force: bool = False,
) -> tuple[str, str]:
    """Put ``model_bytes`` at ``<repository>/<name>/<version>/model.onnx`` and write the config.

    The version directory is assembled under a temporary name and renamed into place,
    then the config is replaced atomically: at no moment does the config name a
    model file that is not whole. Returns (model path, config path).
    """
    check_model_name(name)  # never a path outside the repository, nor a config Triton cannot parse
    model_dir = os.path.join(repository, name)
    versions = existing_versions(model_dir)
    if version is None:
        version = (versions[-1] + 1) if versions else 1
    if version < 1:
        raise UserError(f"--version must be at least 1, got {version}")
    version_dir = os.path.join(model_dir, str(version))
    if os.path.exists(version_dir) and not force:
        raise UserError(f"--version {version}: {version_dir} already exists (use --force to replace it)")
    tag = uuid.uuid4().hex[:8]
    staging = os.path.join(model_dir, f".staging-{version}-{tag}")
    old = os.path.join(model_dir, f".old-{version}-{tag}")
    created_model_dir = not os.path.isdir(model_dir)
    try:
        os.makedirs(staging)
    except OSError as e:
        raise UserError(f"--repository {repository}: cannot write ({e.strerror})") from e
    try:
        with open(os.path.join(staging, MODEL_FILENAME), "wb") as f:
            f.write(model_bytes)
            f.flush()
            os.fsync(f.fileno())
        replaced = os.path.exists(version_dir)
        if replaced:
            os.rename(version_dir, old)
        os.rename(staging, version_dir)
        config_path = os.path.join(model_dir, CONFIG_FILENAME)
        try:
            write_file_atomic(config_path, config_text.encode(), force=True, flag="--repository")
        except UserError:
            # Put the repository back as it was: no model without its config.
            shutil.rmtree(version_dir, ignore_errors=True)
            if replaced:
                os.rename(old, version_dir)
            raise
    except OSError as e:
        raise UserError(f"--repository {repository}: cannot write ({e.strerror})") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
        if created_model_dir and os.path.isdir(model_dir) and not os.listdir(model_dir):
            os.rmdir(model_dir)
    return os.path.join(version_dir, MODEL_FILENAME), config_path
