"""The converter's typed config: one dataclass whose fields are its flags (:mod:`atari_trtis_demo.core.typed_flags`).

Each default, range check and help is written here once (the config's defaults come from
:mod:`atari_trtis_demo.core.model_config`, which ``render_config`` uses too);
``onnx_export.convert`` takes its keyword defaults from these fields.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from typing import Any

from atari_trtis_demo.core.cli_args import int_in
from atari_trtis_demo.core.contract import DEFAULT_ENV_ID, DEFAULT_MODEL_NAME
from atari_trtis_demo.core.model_config import (
    DEFAULT_INSTANCE_COUNT,
    DEFAULT_INSTANCE_KIND,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_QUEUE_DELAY_US,
    INSTANCE_COUNT_LIMIT,
    INSTANCE_KINDS,
    MAX_BATCH_SIZE_LIMIT,
    model_name_problem,
)
from atari_trtis_demo.core.typed_flags import flag

# Where the converter writes unless told (the tracked example repository).
DEFAULT_REPOSITORY = "trtismodel"
# The fields that are onnx_export.convert's keywords of the same name (the rest the command resolves).
CONVERT_KEYWORDS = (
    "out", "name", "version", "max_batch_size", "instance_kind", "instance_count", "max_queue_delay_us", "force",
    "env_id",
)  # fmt: skip


def model_name(text: str) -> str:
    """An argparse ``type``: a model name Triton can serve as one directory of the repository."""
    problem = model_name_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{problem}, got {text!r}")
    return text


@dataclass
class ConvertOptions:
    """What ``onnx_converter_src/converter.py`` is asked to do."""

    model: str | None = flag(None, help="ChainerRL agent directory with model.npz (e.g. results/<run>/best)")
    pretrained: str | None = flag(
        None,
        metavar="ENV",
        help="instead of --model: download ChainerRL's published DQN for this game (ATARI_DEMO_MODEL_ZOO_URL: "
        "a mirror), save it as an agent directory and convert it",
    )
    pretrained_type: str = flag("best", choices=["best", "final"], help="with --pretrained: best or final agent")
    pretrained_dir: str | None = flag(None, help="where --pretrained saves the agent (results/pretrained/<ENV>/<type>)")
    out: str | None = flag(None, help="write only this .onnx file (the 2019 converter's behaviour)")
    gpu: int = flag(-1, type=int_in(-1), help="accepted for compatibility and ignored: conversion runs on CPU")
    repository: str | None = flag(
        None,
        help=f"Triton model repository to write into (default: {DEFAULT_REPOSITORY}; with --pretrained: "
        f"results/pretrained/<ENV>/{DEFAULT_REPOSITORY})",
    )
    name: str = flag(DEFAULT_MODEL_NAME, type=model_name, help="model name in the repository (letters, digits, _ - .)")
    version: int | None = flag(None, type=int_in(1), help="version number (default: the next free one)")
    max_batch_size: int = flag(
        DEFAULT_MAX_BATCH_SIZE,
        type=int_in(1, MAX_BATCH_SIZE_LIMIT),
        help="largest batch Triton may form of players' requests",
    )
    instance_kind: str = flag(DEFAULT_INSTANCE_KIND, choices=INSTANCE_KINDS, help="where Triton runs the model")
    instance_count: int = flag(
        DEFAULT_INSTANCE_COUNT, type=int_in(1, INSTANCE_COUNT_LIMIT), help="copies of the model Triton runs"
    )
    max_queue_delay_us: int = flag(
        DEFAULT_QUEUE_DELAY_US,
        type=int_in(0, 1_000_000),
        help="how long Triton may hold a request to batch it with other players' (3000 for many players: "
        "see docs/benchmarks.md)",
    )
    force: bool = flag(
        False, action="store_true", help="replace an existing version, --out file, or a config.pbtxt edited by hand"
    )
    env_id: str | None = flag(
        None,
        "--env",
        help=f"the model's game, whose frames verify the export (default: the one its agent_state.json records, "
        f"else {DEFAULT_ENV_ID})",
    )

    def convert_settings(self) -> dict[str, Any]:
        """The fields that are ``onnx_export.convert``'s keywords of the same name."""
        return {name: value for name, value in asdict(self).items() if name in CONVERT_KEYWORDS}
