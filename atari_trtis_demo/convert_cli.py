"""``onnx_converter_src/converter.py``, ``atari-convert``: a ChainerRL agent directory to ONNX / a Triton repository."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from atari_trtis_demo.cli_args import ArgumentParser, int_in
from atari_trtis_demo.envs import DEFAULT_ENV_ID
from atari_trtis_demo.model_repository import (
    INSTANCE_COUNT_LIMIT,
    INSTANCE_KINDS,
    MAX_BATCH_SIZE_LIMIT,
    model_name_problem,
)


def model_name(text: str) -> str:
    """An argparse ``type``: a model name Triton can serve as one directory of the repository."""
    problem = model_name_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{problem}, got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="Export a trained DQN to ONNX for the Triton Inference Server.")
    p.add_argument("--model", required=True, help="ChainerRL agent directory with model.npz (e.g. results/<run>/best)")
    p.add_argument("--out", default=None, help="write only this .onnx file (the 2019 converter's behaviour)")
    p.add_argument(
        "--gpu", type=int_in(-1), default=-1, help="accepted for compatibility and ignored: conversion runs on CPU"
    )
    p.add_argument("--repository", default="trtismodel", help="Triton model repository to write into")
    p.add_argument(
        "--name", type=model_name, default="atari", help="model name in the repository (letters, digits, _ - .)"
    )
    p.add_argument("--version", type=int_in(1), default=None, help="version number (default: the next free one)")
    p.add_argument("--max-batch-size", type=int_in(1, MAX_BATCH_SIZE_LIMIT), default=32)
    p.add_argument("--instance-kind", default="KIND_GPU", choices=INSTANCE_KINDS)
    p.add_argument("--instance-count", type=int_in(1, INSTANCE_COUNT_LIMIT), default=1)
    p.add_argument("--force", action="store_true", help="replace an existing version or --out file")
    p.add_argument("--env", default=DEFAULT_ENV_ID, help="game whose frames verify the export")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    from atari_trtis_demo.onnx_export import TOLERANCE, VERIFY_BATCHES, convert

    result = convert(
        args.model,
        out=args.out,
        repository=args.repository,
        name=args.name,
        version=args.version,
        max_batch_size=args.max_batch_size,
        instance_kind=args.instance_kind,
        instance_count=args.instance_count,
        force=args.force,
        env_id=args.env,
    )
    batches = " and ".join(str(b) for b in VERIFY_BATCHES)
    print(
        f"verified: onnxruntime equals Chainer on real {args.env} frames at batch {batches} "
        f"(max abs diff {result.max_abs_diff:.2g} <= {TOLERANCE}, same greedy actions)"
    )
    print(f"wrote {result.model_path} ({result.n_actions} actions)")
    if result.config_path:
        print(f"wrote {result.config_path}")
    return 0
