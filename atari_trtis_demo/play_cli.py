"""The command lines of both players: ``src/app.py`` (remote) and ``standalone_src/app.py`` (local).

Flags as the 2019 apps had them (``--host``, ``--port``, ``--model``,
``--rendering_scale``, ``--sync``, ``--modelpath``) plus this project's additions.
The remote path imports no Chainer.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from atari_trtis_demo.errors import UserError


def add_play_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rendering_scale", type=int, default=3, help="window size as a multiple of 160x210")
    p.add_argument("--sync", action="store_true", help="wait for each action (default: asynchronous inference)")
    p.add_argument("--env", default="BreakoutNoFrameskip-v4", help="the game (must match the model's actions)")
    p.add_argument("--episodes", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=None, help="cap on agent steps per episode")
    p.add_argument("--headless", action="store_true", help="no window (servers, tests, benchmarks)")
    p.add_argument("--fps", type=float, default=60.0, help="window frame cap in agent steps/s (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epsilon", type=float, default=0.05, help="fraction of random actions, as the original")
    p.add_argument("--record", default=None, help="write the gameplay to FILE.gif (or .mp4)")
    p.add_argument("--screenshot", default=None, help="save the last window image to FILE.png")
    p.add_argument("--json", default=None, help="write the statistics to FILE.json")


def play_config(args: argparse.Namespace):  # -> PlayConfig
    from atari_trtis_demo.game import PlayConfig

    if args.episodes < 1 or (args.max_steps is not None and args.max_steps < 1):
        raise UserError("--episodes and --max-steps must be at least 1")
    if args.rendering_scale < 1:
        raise UserError(f"--rendering_scale must be at least 1, got {args.rendering_scale}")
    return PlayConfig(
        env_id=args.env,
        episodes=args.episodes,
        max_steps=args.max_steps,
        sync=args.sync,
        headless=args.headless,
        fps=0.0 if args.headless else args.fps,
        rendering_scale=args.rendering_scale,
        seed=args.seed,
        epsilon=args.epsilon,
        record=args.record,
        screenshot=args.screenshot,
    )


def finish(result, json_path: str | None) -> int:  # result: PlayResult
    from atari_trtis_demo.game import write_json

    print(result.report(), flush=True)
    if json_path:
        write_json(json_path, result)
    if result.error:
        print(f"error: {result.error} (the game ended early; statistics above are up to then)", file=sys.stderr)
        return 1
    return 0


def remote_main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Play an Atari game; every action comes from a Triton server over gRPC.")
    p.add_argument("--host", default="localhost", help="the inference server")
    p.add_argument("--port", type=int, default=8001, help="its gRPC port")
    p.add_argument("--model", default="atari", help="model name in the server's repository")
    p.add_argument("--timeout", type=float, default=5.0, help="per-request deadline in seconds")
    p.add_argument("--fallback-modelpath", default=None, help="agent directory to play locally while the server fails")
    add_play_flags(p)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    config = play_config(args)
    from atari_trtis_demo.game import FallbackPolicy, LocalChainerPolicy, RemotePolicy, play
    from atari_trtis_demo.inference_client import InferenceClient

    client = InferenceClient(args.host, args.port, args.model, timeout=args.timeout)
    policy = RemotePolicy(client)
    if args.fallback_modelpath:
        policy = FallbackPolicy(policy, LocalChainerPolicy(args.fallback_modelpath))
    try:
        return finish(play(policy, config), args.json)
    finally:
        client.close()


def standalone_main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Play an Atari game with the agent run locally by Chainer (no server).")
    p.add_argument("--modelpath", required=True, help="ChainerRL agent directory (e.g. results/<run>/best)")
    add_play_flags(p)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    config = play_config(args)
    from atari_trtis_demo.game import LocalChainerPolicy, play

    return finish(play(LocalChainerPolicy(args.modelpath), config), args.json)
