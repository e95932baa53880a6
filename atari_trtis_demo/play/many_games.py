"""Many games through one server from one process: ``src/app.py --games N``.

N games of the one play loop (:mod:`atari_trtis_demo.play.play_loop`), each as a separate
player would be: its own env (game ``i`` plays seeds ``seed + i * episodes`` onwards)
and its own policy sending its own ModelInfer requests over the one shared gRPC
channel, one request per game and agent step, so that Triton's dynamic batcher, not
this client, forms the batches. Episodes are capped at 4,500 agent steps (the
reproduction's evaluation cap) unless ``--max-steps`` says otherwise, for one game as
for many. No Chainer here.
"""

from __future__ import annotations

from collections.abc import Callable

from atari_trtis_demo.play.inference_client import InferenceClient
from atari_trtis_demo.play.play_loop import play_games as play_policies
from atari_trtis_demo.play.play_result import EVALUATION_EPISODE_CAP, PlayConfig, PlayResult, evaluation_summary
from atari_trtis_demo.play.policies import RemotePolicy

__all__ = ["EVALUATION_EPISODE_CAP", "evaluation_summary", "play_games"]


def play_games(
    client: InferenceClient, config: PlayConfig, n: int, announce: Callable[[PlayResult], None] | None = None
) -> PlayResult:
    """``n`` games against ``client``'s server, each with its own :class:`RemotePolicy` (its own round trips)."""
    return play_policies([RemotePolicy(client) for _ in range(n)], config, announce)
