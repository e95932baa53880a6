"""The command lines of both players: ``src/app.py`` (remote) and ``standalone_src/app.py`` (local).

Flags as the 2019 apps had them (``--host``, ``--port``, ``--model``,
``--rendering_scale``, ``--sync``, ``--modelpath``) plus this project's additions.
The remote path imports no Chainer.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from atari_trtis_demo.cli_args import ArgumentParser, float_in, int_in, output_file, port
from atari_trtis_demo.envs import DEFAULT_ENV_ID, check_env_id


def add_play_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rendering_scale", type=float_in(0.5, 16), default=3.0, help="window size as a multiple of 160x210 (1.5...)"
    )
    p.add_argument(
        "--env", default=None, help=f"the game (default: the model's own, else {DEFAULT_ENV_ID} if it records none)"
    )
    p.add_argument("--episodes", type=int_in(1), default=1, help="whole games to play (all lives)")
    p.add_argument("--max-steps", type=int_in(1), default=None, help="cap on agent steps per episode (default: none)")
    p.add_argument("--headless", action="store_true", help="no window (servers, tests, benchmarks)")
    p.add_argument(
        "--fps",
        type=float_in(0, 10000),
        default=15.0,
        help="agent steps per second, window and headless alike (default 15: the Atari's own pace, 60 frames/s "
        "with 4 frames a step; 0: as fast as possible, and async play then applies actions as many steps old "
        "as fit into one round trip)",
    )
    p.add_argument(
        "--seed",
        type=int_in(0, 2**31 - 1),
        default=0,
        help="seeds the emulator, the no-op starts and the random actions",
    )
    p.add_argument("--epsilon", type=float_in(0, 1), default=0.05, help="fraction of random actions, as the original")
    p.add_argument(
        "--fire-on-life-loss",
        action="store_true",
        help="press FIRE at the start and after each lost life, so that a barely trained agent's Breakout serves "
        "(an action override, not preprocessing; see docs/deviations.md)",
    )
    p.add_argument("--record", type=output_file, default=None, help="write the gameplay to FILE.gif (or .mp4)")
    p.add_argument("--screenshot", type=output_file, default=None, help="save the last window image to FILE.png")
    p.add_argument("--json", type=output_file, default=None, help="write the statistics to FILE.json")
    p.add_argument(
        "--game-over-seconds",
        type=float_in(0, 3600),
        default=None,
        help="how long the window stays on the game-over screen unless a key is pressed (default 10 s in a "
        "window; 0 where no key can come: --headless, SDL's dummy or offscreen driver)",
    )


def play_config(args: argparse.Namespace):  # -> PlayConfig
    from atari_trtis_demo.play_result import PlayConfig
    from atari_trtis_demo.screen import check_record_path

    check_record_path(args.record)
    return PlayConfig(
        env_id=args.env,
        episodes=args.episodes,
        max_steps=args.max_steps,
        sync=args.sync,
        fire_on_life_loss=args.fire_on_life_loss,
        headless=args.headless,
        fps=args.fps,
        rendering_scale=args.rendering_scale,
        seed=args.seed,
        epsilon=args.epsilon,
        record=args.record,
        screenshot=args.screenshot,
        game_over_seconds=args.game_over_seconds,
    )


def announcer(json_path: str | None):  # -> Callable[[PlayResult], None]
    """Print the statistics (and write --json) as soon as play ends: before any game-over screen."""
    from atari_trtis_demo.play_result import write_json

    def announce(result) -> None:  # result: PlayResult
        print(result.report(), flush=True)
        if json_path:
            write_json(json_path, result)

    return announce


def exit_code(result) -> int:  # result: PlayResult
    """1 when play ended on a failure (statistics up to then already printed), else 0."""
    if result.error:
        print(f"error: {result.error} (the game ended early; statistics above are up to then)", file=sys.stderr)
        return 1
    return 0


def remote_main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(description="Play an Atari game; every action comes from a Triton server over gRPC.")
    p.add_argument("--sync", action="store_true", help="wait for each action (default: asynchronous inference)")
    p.add_argument("--host", default="localhost", help="the inference server")
    p.add_argument("--port", type=port, default=8001, help="its gRPC port")
    p.add_argument("--model", default="atari", help="model name in the server's repository")
    p.add_argument("--timeout", type=float_in(0, 600, low_open=True), default=5.0, help="per-request deadline, s")
    p.add_argument("--fallback-modelpath", default=None, help="agent directory to play locally while the server fails")
    p.add_argument(
        "--tls-ca", default=None, metavar="FILE", help="PEM root certificate of a TLS server (key: $ATARI_DEMO_KEY)"
    )
    p.add_argument(
        "--games", type=int_in(1, 1024), default=1, help="play N games at once, a grid in the window (many_games.py)"
    )
    p.add_argument(
        "--workers",
        type=int_in(1, 64),
        default=1,
        help="spread the --games over K processes, each with its own connection (more cores; needs --headless)",
        metavar="K",
    )
    p.add_argument(
        "--reconnect",
        type=float_in(0, 86400),
        default=30.0,
        help="while the server is away, play on (sync waits, async plays its last action) for up to SECONDS, then "
        "end with exit code 1 (default 30; 0: end at the first failed request)",
        metavar="SECONDS",
    )
    add_play_flags(p)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    # Before gRPC loads: its core would log a failed TLS handshake to stderr beside our one line.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    if args.env:
        check_env_id(args.env)  # a typo is refused before connecting
    if args.workers > 1:
        from atari_trtis_demo.play_workers import check_worker_flags

        check_worker_flags(args.workers, args.games, args.headless, args.record, args.fallback_modelpath)
    config = play_config(args)  # env_id: set below, once the model's own game is known
    config.reconnect, config.request_timeout = args.reconnect, args.timeout
    from atari_trtis_demo.game_id import remote_game
    from atari_trtis_demo.inference_client import InferenceClient, InferenceError
    from atari_trtis_demo.play_loop import play_games
    from atari_trtis_demo.policies import (
        PROBE_TIMEOUT_SECONDS,
        FallbackNotice,
        FallbackPolicy,
        LocalChainerPolicy,
        Policy,
        RemotePolicy,
    )

    if not args.fallback_modelpath:
        client = InferenceClient(args.host, args.port, args.model, timeout=args.timeout, tls_ca=args.tls_ca)
        policies: list[Policy] = [RemotePolicy(client) for _ in range(args.games)]
    else:
        # The local agent first: a broken --fallback-modelpath is an error even while the server answers.
        local = LocalChainerPolicy(args.fallback_modelpath, flag="--fallback-modelpath")
        client = InferenceClient(
            args.host, args.port, args.model, timeout=args.timeout, connect=False, tls_ca=args.tls_ca
        )
        # Probes of a server that failed get a short deadline of their own: a server that accepts
        # but never answers must not hold the game for the whole --timeout.
        probe_timeout = min(args.timeout, PROBE_TIMEOUT_SECONDS)
        probe_client = InferenceClient(
            args.host, args.port, args.model, timeout=probe_timeout, connect=False, tls_ca=args.tls_ca
        )
        try:
            client.connect()
            down = None
        except InferenceError as e:  # play starts locally and moves to the server when it answers
            down = e  # (a refused key is a UserError, not an InferenceError: it ends the command)
        notice = FallbackNotice()  # one console line for all the games
        policies = [
            FallbackPolicy(
                RemotePolicy(client), local, primary_down=down, probe=RemotePolicy(probe_client), notice=notice
            )
            for _ in range(args.games)
        ]
    try:
        where = f"the config of model '{args.model}' on {client.address}"
        config.env_id = remote_game(args.env, client.env_id, where, args.fallback_modelpath)
        if args.workers > 1:  # this process checked the server and the game; the workers play
            from atari_trtis_demo.play_workers import ServerSpec, play_in_workers

            spec = ServerSpec(args.host, args.port, args.model, args.timeout, args.tls_ca)
            return exit_code(play_in_workers(spec, config, args.games, args.workers, announcer(args.json)))
        return exit_code(play_games(policies, config, announcer(args.json)))
    finally:
        for policy in policies:
            policy.close()


def standalone_main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(description="Play an Atari game with the agent run locally by Chainer (no server).")
    # No network to hide here: each action waits for its (3 ms) forward pass unless --async.
    inference = p.add_mutually_exclusive_group()
    inference.add_argument("--sync", action="store_true", default=True, help="wait for each action (the default)")
    inference.add_argument(
        "--async", dest="sync", action="store_false", help="run inference beside the game loop, as src/app.py does"
    )
    p.add_argument("--modelpath", required=True, help="ChainerRL agent directory (e.g. results/<run>/best)")
    add_play_flags(p)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.env:
        check_env_id(args.env)
    config = play_config(args)  # env_id: set below, once the model's own game is known
    from atari_trtis_demo.game import play
    from atari_trtis_demo.game_id import AGENT_STATE_FILE, choose_game, recorded_env_id
    from atari_trtis_demo.policies import LocalChainerPolicy

    policy = LocalChainerPolicy(args.modelpath)
    try:
        where = os.path.join(args.modelpath, AGENT_STATE_FILE)
        config.env_id = choose_game(args.env, recorded_env_id(args.modelpath), where)
        return exit_code(play(policy, config, announcer(args.json)))
    finally:
        policy.close()
