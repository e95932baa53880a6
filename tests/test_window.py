"""The window a person drives: keys, pause, the game-over screen, the title and the overlay.

A real pygame display under SDL's dummy driver; key presses are posted pygame events,
from a thread, while a real Breakout game runs.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pygame
import pytest
from helpers import run_standalone

from atari_trtis_demo.client.errors import ServerUnavailable
from atari_trtis_demo.client.latency import LatencyStats
from atari_trtis_demo.play.overlay import overlay_lines
from atari_trtis_demo.play.play_config import PlayConfig
from atari_trtis_demo.play.play_loop import play_games
from atari_trtis_demo.play.policies import FallbackPolicy, Policy

os.environ["SDL_VIDEODRIVER"] = "dummy"


class CountingPolicy(Policy):
    """Seeded random Q-values; counts its calls so a test can see whether the game moves."""

    name = "counting test policy"

    def __init__(self) -> None:
        self.n_actions, self.latency, self.calls = 4, LatencyStats(), 0
        self.rng = np.random.default_rng(0)
        self.captions: list[str] = []

    def q_values(self, frames: np.ndarray) -> np.ndarray:
        self.calls += 1
        if pygame.display.get_init():
            self.captions.append(pygame.display.get_caption()[0])
        return self.rng.random((len(frames), self.n_actions))


def press(key: int) -> None:
    pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=key, mod=0, unicode="", scancode=0))


def in_background(script: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=script, daemon=True)
    thread.start()
    return thread


def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize("key", [pytest.param(pygame.K_ESCAPE, id="esc"), pytest.param(pygame.K_q, id="q")])
def test_esc_or_q_ends_play_cleanly_with_statistics(key: int) -> None:
    policy = CountingPolicy()

    def script() -> None:
        wait_until(lambda: policy.calls >= 30)
        press(key)

    thread = in_background(script)
    result = play_games(policy, 1, PlayConfig(sync=True, max_steps=100_000, fps=60, episodes=3))
    thread.join(5)
    assert result.stopped_by_user and result.error is None
    assert 30 <= result.steps < 1000 and len(result.episodes) == 1
    assert result.requests == result.steps and "episode 1: score" in result.report()


def test_p_pauses_and_space_resumes() -> None:
    policy = CountingPolicy()
    seen: dict[str, int] = {}

    def script() -> None:
        wait_until(lambda: policy.calls >= 10)
        press(pygame.K_p)
        time.sleep(0.5)
        seen["paused at"] = policy.calls
        time.sleep(1.5)
        seen["still"] = policy.calls
        press(pygame.K_SPACE)
        wait_until(lambda: policy.calls >= seen["still"] + 10)
        press(pygame.K_ESCAPE)

    thread = in_background(script)
    started = time.perf_counter()
    result = play_games(policy, 1, PlayConfig(sync=True, max_steps=100_000, fps=30))
    wall = time.perf_counter() - started
    thread.join(5)
    assert seen["still"] == seen["paused at"], "no agent step while paused"
    assert result.stopped_by_user and result.steps >= seen["still"] + 10
    assert result.seconds <= wall - 1.5, "paused time is not counted as playing time"
    assert 20 <= result.steps_per_second <= 40, "the pace holds around a pause"


def test_game_over_screen_stays_until_a_key_and_shows_the_score(tmp_path: Path) -> None:
    """Asked to stay (--game-over-seconds; under SDL's dummy driver it would not wait by default)."""
    policy = CountingPolicy()
    shot = tmp_path / "last.png"
    seen: dict[str, object] = {}

    def script() -> None:
        wait_until(lambda: policy.calls >= 20)
        seen["game ended"] = time.perf_counter()
        time.sleep(1.5)
        seen["window"] = pygame.surfarray.array3d(pygame.display.get_surface()).swapaxes(0, 1)
        press(pygame.K_a)

    thread = in_background(script)
    config = PlayConfig(sync=True, max_steps=20, fps=0, rendering_scale=2, screenshot=str(shot), game_over_seconds=30)
    result = play_games(policy, 1, config, announce=lambda r: seen.setdefault("announced", time.perf_counter()))
    returned = time.perf_counter()
    thread.join(5)
    assert result.steps == 20 and not result.stopped_by_user
    waited = returned - seen["game ended"]
    assert waited >= 1.4, "the window waited on the game-over screen for a key"
    assert waited < 10, "left on the key"
    assert result.seconds < waited, "waiting there is not playing time"
    assert seen["announced"] < seen["game ended"] + 1.0, "the statistics came before the wait"
    game = pygame.surfarray.array3d(pygame.image.load(str(shot))).swapaxes(0, 1)  # --screenshot: the game
    middle = slice(game.shape[0] * 2 // 5, game.shape[0] * 3 // 5)

    def bright(image: np.ndarray) -> int:
        return int((image[middle].min(axis=2) > 200).sum())

    assert bright(seen["window"]) > 5 * bright(game) + 100, "white GAME OVER text over the middle of the field"
    assert seen["window"].mean() < game.mean(), "the game darkened behind the banner"


def test_headless_play_never_waits_for_a_key() -> None:
    started = time.perf_counter()
    result = play_games(CountingPolicy(), 1, PlayConfig(sync=True, headless=True, max_steps=20, fps=0))
    assert result.steps == 20 and time.perf_counter() - started < 10


def test_title_names_the_player_and_the_mode() -> None:
    policy = CountingPolicy()
    play_games(policy, 1, PlayConfig(sync=False, max_steps=5, fps=0, episodes=1, headless=False, seed=1))
    captions = set(policy.captions)
    assert captions == {"BreakoutNoFrameskip-v4: counting test policy, async inference"}, captions


def test_rendering_scale_takes_a_fraction_as_in_2019(tmp_path: Path) -> None:
    shot = tmp_path / "small.png"
    play_games(
        CountingPolicy(),
        1,
        PlayConfig(sync=True, headless=True, max_steps=3, rendering_scale=1.5, screenshot=str(shot)),
    )
    assert pygame.image.load(str(shot)).get_size() == (240, 315)


def test_overlay_does_not_show_a_stale_round_trip_while_on_the_fallback() -> None:
    class DownServer(CountingPolicy):
        name = "remote 127.0.0.1:1 model 'atari'"
        remote = True

        def q_values(self, frames: np.ndarray) -> np.ndarray:
            raise ServerUnavailable("cannot connect to 127.0.0.1:1 (test)")

    primary = DownServer()
    primary.latency.record(0.0042)  # an answer from before the server went down
    up = overlay_lines(primary, "sync", 3, "1/1", 15)
    assert "rtt 4.2 ms" in up[1]
    policy = FallbackPolicy(primary, CountingPolicy(), primary_down=ServerUnavailable("cannot connect (test)"))
    down = overlay_lines(policy, "sync", 3, "1/1", 15)
    assert "4.2" not in down[1] and "server down" in down[1], down


def test_standalone_player_is_synchronous_unless_asked(tmp_path: Path) -> None:
    from atari_trtis_demo.train.agent import make_agent

    agent = tmp_path / "agent"
    make_agent(4).save(str(agent))
    modes = {}
    for flags in ([], ["--async"]):
        stats = tmp_path / "stats.json"
        result = run_standalone(agent, "--fps", "0", "--max-steps", "30", "--json", str(stats), *flags, timeout=120)
        assert result.returncode == 0, result.stderr
        modes[tuple(flags)] = json.loads(stats.read_text())["mode"]
    assert modes == {(): "sync", ("--async",): "async"}


def drawn_whole_and_by_letter(font, word: str) -> tuple[np.ndarray, np.ndarray, int]:
    """``word`` drawn whole, and letter by letter with each letter at the advances of the ones before it: both
    images (the second cut to the first's size) and the letters' advances summed."""
    white, black = (255, 255, 255), (0, 0, 0)
    whole = font.render(word, True, white, black)
    letters = pygame.Surface((whole.get_width() + 64, whole.get_height()))
    letters.fill(black)
    x = 0
    for letter, metrics in zip(word, font.metrics(word), strict=True):
        # Max, not over: a letter's box may overlap its neighbour's ink (an 'r' overhangs its advance).
        letters.blit(font.render(letter, True, white, black), (x, 0), special_flags=pygame.BLEND_RGB_MAX)
        x += metrics[4]
    width, height = whole.get_size()
    return (
        pygame.surfarray.array3d(whole).astype(int),
        pygame.surfarray.array3d(letters)[:width, :height].astype(int),
        x,
    )


# Words of the overlay, the labels and the banners.
OVERLAY_WORDS = ("episode", "window", "score", "steps/s", "rtt", "inference", "latency", "SYNC", "GAME", "any")


@pytest.mark.parametrize("scale", [1, 2, 3, 4])
def test_the_windows_draw_words_whole(scale: float) -> None:
    """Each word of the overlay is its letters side by side at their advances. pygame.font drew 'episode' 3 px
    wider than that at the overlay's 16 px, the pixels bunched into a gap ('episod e', 'w indow'), at every size
    the windows use. Only the edges where two letters' anti-aliasing meet may differ a little."""
    from atari_trtis_demo.play.grid_screen import GridScreen
    from atari_trtis_demo.play.screen import Screen

    screen = Screen("fonts", scale=scale, headless=True, screenshot="unused.png")
    fonts = [screen.font, screen.big_font]
    if scale == 1:
        grid = GridScreen("fonts", 4, scale=1, headless=True, screenshot="unused.png")
        fonts += [grid.font, grid.big_font, grid.cell_font]
    for font in fonts:
        for word in OVERLAY_WORDS:
            whole, letters, advances = drawn_whole_and_by_letter(font, word)
            assert whole.shape[0] <= advances + 2, ("wider than its letters", word, font.get_linesize())
            assert np.abs(whole - letters).max() <= 32, ("a letter moved", word, font.get_linesize())
