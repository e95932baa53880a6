"""What the window (or the page) writes over the games: the overlay's lines and the game-over screen's."""

from __future__ import annotations

import time

from atari_trtis_demo.client.latency import LatencyStats
from atari_trtis_demo.play.games import Game
from atari_trtis_demo.play.policies import Policy
from atari_trtis_demo.play.web_address import PLAY_ON_EPISODES


def overlay_lines(policy: Policy, mode: str, score: float, episode: str, steps_per_second: float) -> list[str]:
    """The two lines at the bottom of the one-game window: the game, then the inference and what it measures."""
    latency = policy.latency.last_ms
    if policy.on_fallback:
        rtt = "rtt - (server down)"  # the last server round trip is not news
    elif not policy.remote:
        rtt = "local inference -" if latency is None else f"local inference {latency:.1f} ms"
    else:
        rtt = "rtt -" if latency is None else f"rtt {latency:.1f} ms"
    return [f"score {score:g}   episode {episode}", f"{steps_per_second:.0f} steps/s   {rtt}   {mode.upper()}"]


OVERLAY_SECONDS = 1.0  # the many-game overlay's percentiles are recomputed this often (they cover every wave)


class Overlay:
    """The overlay's lines: one game's score, episode and last round trip; or the figures of many games."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.at = 0.0

    def text(self, games: list[Game], policy: Policy, waves: LatencyStats, mode: str, elapsed: float) -> list[str]:
        steps = sum(e.steps for g in games for e in g.episodes) + sum(g.steps for g in games if not g.done)
        if len(games) == 1:
            g = games[0]
            episode = f"{min(len(g.episodes) + 1, g.episodes_to_play)}"
            episode += f"/{g.episodes_to_play}" if g.episodes_to_play < PLAY_ON_EPISODES else ""  # else: until stopped
            return overlay_lines(policy, mode, g.score, episode, steps / elapsed)
        now = time.monotonic()
        if not self.lines or now - self.at >= OVERLAY_SECONDS:
            self.at = now
            lat = waves.summary()
            stacks = sum(g.requests for g in games)
            self.lines = [
                f"{len(games)} games   {steps / elapsed / len(games):.1f} steps/s per game   {mode.upper()}",
                f"{stacks / elapsed:.0f} stacks/s in {lat['count'] / elapsed:.0f} waves/s   "
                f"rtt p50 {lat['median_ms']:.1f} ms   p99 {lat['p99_ms']:.1f} ms",
            ]
        return self.lines


def game_over_lines(games: list[Game], evaluation: dict[str, float]) -> list[str]:
    """The game-over screen's lines below its headline: the final score(s), or the many games' summary."""
    if len(games) > 1:
        return [f"{len(games)} games, mean score {evaluation.get('mean', 0):g}, max {evaluation.get('max', 0):g}"]
    episodes = games[0].episodes
    lines = [f"final score {episodes[-1].score:g}" if episodes else "final score 0"]
    if len(episodes) > 1:
        lines.append("episodes: " + ", ".join(f"{e.score:g}" for e in episodes))
    return lines
