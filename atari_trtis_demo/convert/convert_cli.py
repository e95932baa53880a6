"""``onnx_converter_src/converter.py``, ``atari-convert``: a ChainerRL agent directory to ONNX / a Triton repository."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from atari_trtis_demo.core.cli_args import ArgumentParser, int_in
from atari_trtis_demo.core.envs import DEFAULT_ENV_ID
from atari_trtis_demo.core.errors import UserError
from atari_trtis_demo.core.game_id import AGENT_STATE_FILE, describe_choice
from atari_trtis_demo.core.model_config import (
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
    p.add_argument("--model", default=None, help="ChainerRL agent directory with model.npz (e.g. results/<run>/best)")
    p.add_argument(
        "--pretrained",
        metavar="ENV",
        default=None,
        help="instead of --model: download ChainerRL's published DQN for this game (ATARI_DEMO_MODEL_ZOO_URL: "
        "a mirror), save it as an agent directory and convert it",
    )
    p.add_argument(
        "--pretrained-type", default="best", choices=["best", "final"], help="with --pretrained: best or final agent"
    )
    p.add_argument(
        "--pretrained-dir", default=None, help="where --pretrained saves the agent (results/pretrained/<ENV>/<type>)"
    )
    p.add_argument("--out", default=None, help="write only this .onnx file (the 2019 converter's behaviour)")
    p.add_argument(
        "--gpu", type=int_in(-1), default=-1, help="accepted for compatibility and ignored: conversion runs on CPU"
    )
    p.add_argument(
        "--repository",
        default=None,
        help="Triton model repository to write into (default trtismodel; with --pretrained "
        "results/pretrained/<ENV>/trtismodel)",
    )
    p.add_argument(
        "--name", type=model_name, default="atari", help="model name in the repository (letters, digits, _ - .)"
    )
    p.add_argument("--version", type=int_in(1), default=None, help="version number (default: the next free one)")
    p.add_argument(
        "--max-batch-size",
        type=int_in(1, MAX_BATCH_SIZE_LIMIT),
        default=32,
        help="largest batch Triton may form of players' requests",
    )
    p.add_argument("--instance-kind", default="KIND_GPU", choices=INSTANCE_KINDS, help="where Triton runs the model")
    p.add_argument(
        "--instance-count", type=int_in(1, INSTANCE_COUNT_LIMIT), default=1, help="copies of the model Triton runs"
    )
    p.add_argument(
        "--max-queue-delay-us",
        type=int_in(0, 1_000_000),
        default=100,
        help="how long Triton may hold a request to batch it with other players' (3000 for many players: "
        "see docs/benchmarks.md)",
    )
    p.add_argument(
        "--force", action="store_true", help="replace an existing version, --out file, or a config.pbtxt edited by hand"
    )
    p.add_argument(
        "--env",
        default=None,
        help=f"the model's game, whose frames verify the export (default: the one its agent_state.json records, "
        f"else {DEFAULT_ENV_ID})",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if (args.model is None) == (args.pretrained is None):
        raise UserError("give --model DIR (an agent directory) or --pretrained ENV (ChainerRL's published agent)")
    from atari_trtis_demo.convert.onnx_export import TOLERANCE, VERIFY_BATCHES, convert

    model_dir, repository = args.model, args.repository or "trtismodel"
    if args.pretrained:
        from atari_trtis_demo.train.model_zoo import pretrained_root, save_pretrained

        if args.env and args.env != args.pretrained:
            raise UserError(f"--env {args.env} contradicts --pretrained {args.pretrained}; give only --pretrained")
        root = pretrained_root(args.pretrained)
        model_dir = args.pretrained_dir or os.path.join(root, args.pretrained_type)
        repository = args.repository or os.path.join(root, "trtismodel")
        save_pretrained(args.pretrained, args.pretrained_type, model_dir)
        print(f"saved ChainerRL's published {args.pretrained_type} DQN for {args.pretrained} in {model_dir}")
    result = convert(
        model_dir,
        out=args.out,
        repository=repository,
        name=args.name,
        version=args.version,
        max_batch_size=args.max_batch_size,
        instance_kind=args.instance_kind,
        instance_count=args.instance_count,
        max_queue_delay_us=args.max_queue_delay_us,
        force=args.force,
        env_id=args.env,
    )
    batches = " and ".join(str(b) for b in VERIFY_BATCHES)
    print(describe_choice(result.env_id, args.env, result.recorded_env_id, f"{model_dir}/{AGENT_STATE_FILE}"))
    print(
        f"verified: onnxruntime equals Chainer on real {result.env_id} frames at batch {batches} "
        f"(max abs diff {result.max_abs_diff:.2g} <= {TOLERANCE}, same greedy actions)"
    )
    print(f"wrote {result.model_path} ({result.n_actions} actions)")
    if result.config_path:
        recorded = " (records the game: the players default to it)" if (result.recorded_env_id or args.env) else ""
        print(f"wrote {result.config_path}{recorded}")
    if args.pretrained and result.config_path:
        print(next_commands(repository, args.name, model_dir))
    return 0


def next_commands(repository: str, name: str, model_dir: str) -> str:
    """What to run after ``--pretrained``: serve the repository, play against it, or play locally."""
    model = "" if name == "atari" else f" --model {name}"
    return (
        "next:\n"
        f"  python -m atari_trtis_demo.serve --model-repository {repository}\n"
        f"  python src/app.py --host 127.0.0.1 --port 8001{model}          # in another shell\n"
        f"  python standalone_src/app.py --modelpath {model_dir}   # or locally, without a server"
    )
