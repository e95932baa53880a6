"""A model's ``config.pbtxt``: built through protobuf's text format, signed, and checked for hand edits.

:func:`render_config` fills the ``ModelConfig`` proto (the project's subset in
:mod:`atari_trtis_demo.kserve`, the same one ``read_repository`` and the Triton twin
parse) and prints it with ``text_format`` under a short header. The converter signs
what it writes (:func:`sign_config`), so that a config edited by hand afterwards is
kept unless ``--force`` (:func:`check_config_replaceable`).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping

from google.protobuf import text_format

from atari_trtis_demo.core.contract import FRAME_SIZE, INPUT_NAME, OUTPUT_NAME, STACK_SIZE
from atari_trtis_demo.core.errors import UserError
from atari_trtis_demo.kserve import kserve_v2_pb2 as pb

MODEL_FILENAME = "model.onnx"
# The file Triton loads from each version directory when a config names none, per platform/backend.
DEFAULT_FILENAMES = {"onnxruntime_onnx": MODEL_FILENAME, "python": "model.py"}
INSTANCE_KINDS = ("KIND_GPU", "KIND_CPU")
# The converter's defaults (its --max-batch-size, --instance-kind, --instance-count, --max-queue-delay-us):
# 100 us keeps a lone player's round trip short; docs/benchmarks.md has what 3000 us buys for many players.
DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_INSTANCE_KIND = "KIND_GPU"
DEFAULT_INSTANCE_COUNT = 1
DEFAULT_QUEUE_DELAY_US = 100
# Bounds of the converter's --max-batch-size and --instance-count: beyond them a
# config is a typo (Triton would try to allocate batches or instances that large).
MAX_BATCH_SIZE_LIMIT = 4096
INSTANCE_COUNT_LIMIT = 64
_MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]+")
# The last line of every config.pbtxt the converter writes: the digest of the lines above
# it. A config whose digest no longer matches was edited by hand, and the converter
# replaces it only with --force.
CONFIG_DIGEST_PREFIX = "# written by the converter, sha256 of the lines above: "
_PARAMETER_TEXT = re.compile(r"[A-Za-z0-9_./-]+")


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


# The file's only comments: what wrote it and where its fields are explained. Measured
# figures (what a queue delay or a second instance buys) live in docs/benchmarks.md, where
# they are dated and reproducible, not in every config the converter writes.
CONFIG_HEADER = (
    "# Triton model configuration written by onnx_converter_src/converter.py through protobuf's text format\n"
    "# (atari_trtis_demo.core.model_config.render_config). Tuning max_batch_size, dynamic_batching's\n"
    '# max_queue_delay_microseconds and instance_group: docs/benchmarks.md, "Many games through one server".\n'
)
# The config line naming how Triton runs the model, per backend: (platform, backend).
_BACKENDS = {"onnxruntime": ("onnxruntime_onnx", ""), "python": ("", "python")}


def render_config(
    name: str,
    n_actions: int,
    *,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    instance_kind: str = DEFAULT_INSTANCE_KIND,
    instance_count: int = DEFAULT_INSTANCE_COUNT,
    parameters: Mapping[str, str] | None = None,
    backend: str = "onnxruntime",
    dynamic_batching: bool = True,
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
) -> str:
    """The ``config.pbtxt`` Triton needs to load the exported DQN: a ``ModelConfig`` in protobuf's text format.

    ``parameters`` become the config's string ``parameters`` (facts that travel with the
    model, such as its game); keys and values are letters, digits and ``_ - . /``.
    ``backend="python"`` describes a Triton python-backend model (``model.py``) with the
    same tensors instead of the ONNX file; ``dynamic_batching=False`` leaves Triton's
    request merging out (every request runs alone); ``max_queue_delay_us`` is how long
    Triton may hold a request to batch it with others.
    """
    check_model_name(name)
    if instance_kind not in INSTANCE_KINDS:
        raise UserError(f"--instance-kind must be one of {', '.join(INSTANCE_KINDS)}, got {instance_kind}")
    if not 1 <= max_batch_size <= MAX_BATCH_SIZE_LIMIT:
        raise UserError(f"--max-batch-size must be between 1 and {MAX_BATCH_SIZE_LIMIT}, got {max_batch_size}")
    if not 1 <= instance_count <= INSTANCE_COUNT_LIMIT:
        raise UserError(f"--instance-count must be between 1 and {INSTANCE_COUNT_LIMIT}, got {instance_count}")
    if backend not in _BACKENDS:
        raise UserError(f"backend must be one of {', '.join(_BACKENDS)}, got {backend}")
    if max_queue_delay_us < 0:
        raise UserError(f"max_queue_delay_us must be at least 0, got {max_queue_delay_us}")
    for key, value in (parameters or {}).items():
        # protobuf would quote anything; the narrow alphabet keeps parameters greppable and path-safe.
        if not _PARAMETER_TEXT.fullmatch(key) or not _PARAMETER_TEXT.fullmatch(value):
            raise UserError(f"config parameter {key!r}: {value!r} cannot be written into config.pbtxt")
    platform, backend_name = _BACKENDS[backend]
    config = pb.ModelConfig(
        name=name,
        platform=platform,
        backend=backend_name,
        # The largest batch Triton may form from queued requests; the ONNX model accepts any batch
        # size, and the batch dimension is implicit in the dims below.
        max_batch_size=max_batch_size,
        input=[pb.ModelInput(name=INPUT_NAME, data_type=pb.TYPE_FP32, dims=[STACK_SIZE, FRAME_SIZE, FRAME_SIZE])],
        output=[pb.ModelOutput(name=OUTPUT_NAME, data_type=pb.TYPE_FP32, dims=[n_actions])],
        instance_group=[
            pb.ModelInstanceGroup(count=instance_count, kind=pb.ModelInstanceGroup.Kind.Value(instance_kind))
        ],
        default_model_filename=MODEL_FILENAME if backend == "onnxruntime" else DEFAULT_FILENAMES["python"],
    )
    if dynamic_batching:
        # SetInParent: a delay of 0 is proto3's default and prints nothing, but the block must still be there.
        config.dynamic_batching.SetInParent()
        config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = value
    return CONFIG_HEADER + text_format.MessageToString(config, use_short_repeated_primitives=True)


def sign_config(text: str) -> str:
    """``text`` with the converter's digest line at its end (see :data:`CONFIG_DIGEST_PREFIX`)."""
    body = text if text.endswith("\n") else text + "\n"
    return f"{body}{CONFIG_DIGEST_PREFIX}{hashlib.sha256(body.encode()).hexdigest()}\n"


def config_edited_by_hand(existing: str, new_text: str) -> bool:
    """Whether ``existing`` (a config.pbtxt) holds changes the converter did not write.

    It did not if its digest line matches the lines above it, or if it is exactly what
    the converter would write now (``new_text``, signed or not: configs written before
    the digest existed, such as the repository's example).
    """
    if existing in (new_text, sign_config(new_text)):
        return False
    body, _, last = existing.rstrip("\n").rpartition("\n")
    if not last.startswith(CONFIG_DIGEST_PREFIX):
        return True
    return last[len(CONFIG_DIGEST_PREFIX) :].strip() != hashlib.sha256((body + "\n").encode()).hexdigest()


def check_config_replaceable(config_path: str, new_text: str, *, force: bool) -> None:
    """Refuse (one line naming the file and --force) to replace a config.pbtxt edited by hand."""
    if force or not os.path.exists(config_path):
        return
    try:
        with open(config_path, encoding="utf-8") as f:
            existing = f.read()
    except (OSError, UnicodeDecodeError):
        existing = None  # unreadable as text: certainly not what the converter wrote
    if existing is None or config_edited_by_hand(existing, new_text):
        raise UserError(
            f"--repository {config_path}: edited by hand since the converter wrote it; not replaced "
            "(use --force to replace it, or copy your changes into the new config afterwards)"
        )
