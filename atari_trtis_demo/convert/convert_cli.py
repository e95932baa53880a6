"""``onnx_converter_src/converter.py``, ``atari-convert``: a ChainerRL agent directory to ONNX / a Triton repository."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from atari_trtis_demo.convert.convert_config import DEFAULT_REPOSITORY, ConvertOptions
from atari_trtis_demo.core.cli_args import CONVERT_MODULES, ArgumentParser, needs_server_install
from atari_trtis_demo.core.contract import AGENT_STATE_FILE
from atari_trtis_demo.core.errors import UserError
from atari_trtis_demo.core.game_id import describe_choice
from atari_trtis_demo.core.typed_flags import add_flags, from_args


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="Export a trained DQN to ONNX for the Triton Inference Server.")
    add_flags(p, ConvertOptions)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Convert; without Chainer (a client install) one ``error:`` line names what is missing."""
    # Also for onnx_converter_src/converter.py, which runs this main directly.
    command = os.path.basename(sys.argv[0]) or "converter.py"
    return needs_server_install(command, lambda: _main(argv), CONVERT_MODULES)() or 0


def _main(argv: Sequence[str] | None) -> int:
    args = from_args(ConvertOptions, build_parser().parse_args(sys.argv[1:] if argv is None else argv))
    if (args.model is None) == (args.pretrained is None):
        raise UserError("give --model DIR (an agent directory) or --pretrained ENV (ChainerRL's published agent)")
    from atari_trtis_demo.convert.onnx_export import TOLERANCE, VERIFY_BATCHES, convert

    model_dir, repository = args.model, args.repository or DEFAULT_REPOSITORY
    if args.pretrained:
        from atari_trtis_demo.train.model_zoo import pretrained_root, save_pretrained

        if args.env_id and args.env_id != args.pretrained:
            raise UserError(f"--env {args.env_id} contradicts --pretrained {args.pretrained}; give only --pretrained")
        root = pretrained_root(args.pretrained)
        model_dir = args.pretrained_dir or os.path.join(root, args.pretrained_type)
        repository = args.repository or os.path.join(root, DEFAULT_REPOSITORY)
        save_pretrained(args.pretrained, args.pretrained_type, model_dir)
        print(f"saved ChainerRL's published {args.pretrained_type} DQN for {args.pretrained} in {model_dir}")
    result = convert(model_dir, repository=repository, **args.convert_settings())
    batches = " and ".join(str(b) for b in VERIFY_BATCHES)
    print(describe_choice(result.env_id, args.env_id, result.recorded_env_id, f"{model_dir}/{AGENT_STATE_FILE}"))
    print(
        f"verified: onnxruntime equals Chainer on real {result.env_id} frames at batch {batches} "
        f"(max abs diff {result.max_abs_diff:.2g} <= {TOLERANCE}, same greedy actions)"
    )
    print(f"wrote {result.model_path} ({result.n_actions} actions)")
    if result.config_path:
        recorded = " (records the game: the players default to it)" if (result.recorded_env_id or args.env_id) else ""
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
