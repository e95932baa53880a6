"""One game: ``src/app.py`` (remote) and ``standalone_src/app.py`` (local) without ``--games``.

One game is N=1 of the one play loop (:mod:`atari_trtis_demo.play.play_loop`): the same
episode cap, fallback, pace, statistics, JSON and game-over screen as ``--games N``.
Only where the Q-values come from differs: a server
(:class:`~atari_trtis_demo.play.policies.RemotePolicy`), Chainer
(:class:`~atari_trtis_demo.play.policies.LocalChainerPolicy`), or the server with a local
fallback. The game is the same env and preprocessing as training
(:func:`envs.make_env`), so the model sees exactly what it saw there. No Chainer here.
"""

from __future__ import annotations

from collections.abc import Callable

from atari_trtis_demo.play.play_loop import play_games
from atari_trtis_demo.play.play_parts import check_action_count, overlay_lines
from atari_trtis_demo.play.play_result import (
    EVALUATION_EPISODE_CAP,
    REAL_TIME_FPS,
    EpisodeStats,
    Pace,
    PlayConfig,
    PlayResult,
    write_json,
)
from atari_trtis_demo.play.policies import Policy

__all__ = [
    "EVALUATION_EPISODE_CAP",
    "REAL_TIME_FPS",
    "EpisodeStats",
    "Pace",
    "PlayConfig",
    "PlayResult",
    "check_action_count",
    "overlay_lines",
    "play",
    "write_json",
]


def play(policy: Policy, config: PlayConfig, announce: Callable[[PlayResult], None] | None = None) -> PlayResult:
    """Play ``config.episodes`` episodes of one game; see :func:`play_loop.play_games`."""
    return play_games([policy], config, announce)
