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
from dataclasses import dataclass
from typing import TYPE_CHECKING

from atari_trtis_demo.core.cli_args import LOCAL_PLAY_MODULES, ArgumentParser, int_in, needs_server_install, port
from atari_trtis_demo.core.contract import DEFAULT_MODEL_NAME
from atari_trtis_demo.core.envs import check_env_id
from atari_trtis_demo.core.errors import UserError
from atari_trtis_demo.core.typed_flags import add_flags, flag, from_args
from atari_trtis_demo.play.play_config import PlayConfig

if TYPE_CHECKING:
    from atari_trtis_demo.play.policies import Policy

# The most games one command plays at once (--games): what a 2-core machine starts in about a minute
# (each game loads its ROM twice, about 0.1 s each time).
GAMES_LIMIT = 256
# PlayConfig's flags that only the remote player has; the standalone player declares its own --sync.
REMOTE_ONLY = ("sync", "reconnect", "request_timeout")


@dataclass
class RemoteOptions:
    """src/app.py's own flags beside :class:`PlayConfig`'s: where the server is, and how many games."""

    host: str = flag(
        "127.0.0.1",
        help="the inference server: HOST or HOST:PORT; several, balanced: a list A:8001,B:8001,C or "
        "dns:///NAME:PORT (every address of the name); see docs/scaling.md",
    )
    port: int = flag(8001, type=port, help="its gRPC port (for a --host without one)")
    model: str = flag(DEFAULT_MODEL_NAME, help="model name in the server's repository")
    fallback_modelpath: str | None = flag(None, help="agent directory to play locally while the server fails")
    tls_ca: str | None = flag(None, metavar="FILE", help="PEM root certificate of a TLS server (key: $ATARI_DEMO_KEY)")
    games: int = flag(
        1,
        type=int_in(1, GAMES_LIMIT),
        metavar="N",
        help=f"play N games at once (1 to {GAMES_LIMIT}), in banks that ask the server one wave per step, in a grid "
        "in the window",
    )
    workers: int = flag(
        1,
        type=int_in(1, 64),
        metavar="K",
        help="spread the --games over K processes, each with its own connection (more cores; needs --headless)",
    )


@dataclass
class StandaloneOptions:
    """standalone_src/app.py's own flag beside :class:`PlayConfig`'s: the agent it runs."""

    modelpath: str = flag(help="ChainerRL agent directory (e.g. results/<run>/best)")


def play_config(args: argparse.Namespace) -> PlayConfig:
    """The parsed flags as a :class:`PlayConfig`; a --record path it cannot write is refused before any play."""
    from atari_trtis_demo.play.screen import check_record_path

    if args.env_id:
        check_env_id(args.env_id)  # a typo is refused before connecting or loading a model
    check_record_path(args.record)
    if args.web is not None:  # the address and its key, checked before any play
        from atari_trtis_demo.play.web_address import parse_web_address

        parse_web_address(args.web)
    if args.episodes is None:  # --web without --episodes or --max-steps plays on until stopped
        from atari_trtis_demo.play.web_address import PLAY_ON_EPISODES

        args.episodes = PLAY_ON_EPISODES if args.web is not None and args.max_steps is None else 1
    return from_args(PlayConfig, args)  # env_id: None until the command knows the model's own game


def announcer(json_path: str | None, servers=None):  # servers: Callable[[], dict[str, int]] | None
    """Print the statistics (and write --json) as soon as play ends: before any game-over screen.

    ``servers``: what the client counts of the calls each server answered (``InferenceClient.answered_by_server``),
    for a result that does not hold them yet (``--workers`` results bring their own).
    """
    from atari_trtis_demo.play.play_result import write_json

    def announce(result) -> None:  # result: PlayResult
        if servers is not None and not result.servers:
            result.servers = servers()
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


def remote_parser() -> ArgumentParser:
    """src/app.py's flags: :class:`RemoteOptions` and every :class:`PlayConfig` flag."""
    p = ArgumentParser(description="Play an Atari game; every action comes from a Triton server over gRPC.")
    add_flags(p, RemoteOptions)
    add_flags(p, PlayConfig)
    return p


def standalone_parser() -> ArgumentParser:
    """standalone_src/app.py's flags: --sync/--async, :class:`StandaloneOptions` and the shared PlayConfig flags."""
    p = ArgumentParser(description="Play an Atari game with the agent run locally by Chainer (no server).")
    # No network to hide here: each action waits for its (3 ms) forward pass unless --async.
    inference = p.add_mutually_exclusive_group()
    inference.add_argument("--sync", action="store_true", default=True, help="wait for each action (the default)")
    inference.add_argument(
        "--async", dest="sync", action="store_false", help="run inference beside the game loop, as src/app.py does"
    )
    add_flags(p, StandaloneOptions)
    add_flags(p, PlayConfig, skip=REMOTE_ONLY)
    return p


def remote_main(argv: Sequence[str] | None = None) -> int:
    args = remote_parser().parse_args(sys.argv[1:] if argv is None else argv)
    # Before gRPC loads: its core would log a failed TLS handshake to stderr beside our one line.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    config = play_config(args)  # env_id: set below, once the model's own game is known
    server = from_args(RemoteOptions, args)
    if config.web is not None and server.workers > 1:
        raise UserError("--web shows the games of one process: drop --workers (or --web)")
    if server.workers > 1:
        from atari_trtis_demo.play.play_workers import check_worker_flags

        check_worker_flags(server.workers, server.games, config.headless, config.record, server.fallback_modelpath)
    from atari_trtis_demo.client.errors import InferenceError
    from atari_trtis_demo.client.inference_client import InferenceClient
    from atari_trtis_demo.core.game_id import remote_game
    from atari_trtis_demo.play.play_loop import play_games
    from atari_trtis_demo.play.policies import PROBE_TIMEOUT_SECONDS, FallbackPolicy, LocalChainerPolicy, RemotePolicy

    if not server.fallback_modelpath:
        client = InferenceClient(
            server.host, server.port, server.model, timeout=config.request_timeout, tls_ca=server.tls_ca
        )
        policy: Policy = RemotePolicy(client)
    else:
        # The local agent first: a broken --fallback-modelpath is an error even while the server answers.
        local = LocalChainerPolicy(server.fallback_modelpath, flag="--fallback-modelpath")
        client = InferenceClient(
            server.host, server.port, server.model, timeout=config.request_timeout, connect=False, tls_ca=server.tls_ca
        )
        # Probes of a server that failed get a short deadline of their own: a server that accepts
        # but never answers must not hold the game for the whole --timeout.
        probe_timeout = min(config.request_timeout, PROBE_TIMEOUT_SECONDS)
        probe_client = InferenceClient(
            server.host, server.port, server.model, timeout=probe_timeout, connect=False, tls_ca=server.tls_ca
        )
        try:
            client.connect()
            down = None
        except InferenceError as e:  # play starts locally and moves to the server when it answers
            down = e  # (a refused key is a UserError, not an InferenceError: it ends the command)
        policy = FallbackPolicy(RemotePolicy(client), local, primary_down=down, probe=RemotePolicy(probe_client))
    try:
        where = f"the config of model '{server.model}' on {client.address}"
        config.env_id = remote_game(config.env_id, client.env_id, where, server.fallback_modelpath)
        if server.workers > 1:  # this process checked the server and the game; the workers play
            from atari_trtis_demo.play.play_workers import ServerSpec, play_in_workers

            spec = ServerSpec(server.host, server.port, server.model, config.request_timeout, server.tls_ca)
            return exit_code(play_in_workers(spec, config, server.games, server.workers, announcer(config.json)))
        return exit_code(play_games(policy, server.games, config, announcer(config.json, client.answered_by_server)))
    finally:
        policy.close()


def standalone_main(argv: Sequence[str] | None = None) -> int:
    """Play with local Chainer inference; on a client install, one ``error:`` line says what to install."""
    command = os.path.basename(sys.argv[0]) or "app.py"
    return needs_server_install(command, lambda: _standalone_main(argv), LOCAL_PLAY_MODULES)() or 0


def _standalone_main(argv: Sequence[str] | None) -> int:
    args = standalone_parser().parse_args(sys.argv[1:] if argv is None else argv)
    config = play_config(args)  # env_id: set below, once the model's own game is known
    modelpath = from_args(StandaloneOptions, args).modelpath
    from atari_trtis_demo.core.contract import AGENT_STATE_FILE
    from atari_trtis_demo.core.game_id import choose_game, recorded_env_id
    from atari_trtis_demo.play.play_loop import play_games
    from atari_trtis_demo.play.policies import LocalChainerPolicy

    policy = LocalChainerPolicy(modelpath)
    try:
        where = os.path.join(modelpath, AGENT_STATE_FILE)
        config.env_id = choose_game(config.env_id, recorded_env_id(modelpath), where)
        return exit_code(play_games(policy, 1, config, announcer(config.json)))
    finally:
        policy.close()
