"""Many games through one server (``src/app.py --games N``): real ALE games, a real Triton, real pygame surfaces."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import numpy as np
import pygame
import pytest
from helpers import REMOTE, Player, free_ports, one_error_line, run_command, wait_for_answers
from triton_stats import delta, metrics_url, read_metrics

from atari_trtis_demo.client.inference_client import InferenceClient
from atari_trtis_demo.play.grid_screen import GAP, LABEL_HEIGHT, MIN_WIDTH, GridScreen
from atari_trtis_demo.play.play_config import PlayConfig
from atari_trtis_demo.play.play_loop import play_games
from atari_trtis_demo.play.play_result import evaluation_summary
from atari_trtis_demo.play.policies import RemotePolicy

os.environ["SDL_VIDEODRIVER"] = "dummy"
ENV_ID = "BreakoutNoFrameskip-v4"
# The keys a one-game --json has: the aggregate of many games keeps them all.
PLAY_KEYS = {"mode", "policy", "episodes", "steps", "seconds", "steps_per_second", "requests", "latency_ms",
             "staleness_steps", "fallback_switches", "error", "stopped_by_user"}  # fmt: skip


def counters(server) -> dict[str, float]:
    return read_metrics(metrics_url(server.address, server.metrics_port), "atari")


def play_command(server, *flags: str):
    return run_command(REMOTE, "--host", "127.0.0.1", "--port", str(server.grpc_port), "--headless", *flags)


def test_n_games_send_one_wave_per_step(batching_server, tmp_path: Path) -> None:
    stats = tmp_path / "games.json"
    before = counters(batching_server)
    result = play_command(
        batching_server, "--games", "6", "--sync", "--fps", "0", "--max-steps", "40", "--json", str(stats)
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(stats.read_text())
    # Triton counts a request a moment after its answer is sent: wait for the player's count, then compare.
    sent = figures["latency_ms"]["count"]
    wait_for_answers(batching_server, "atari", before["nv_inference_request_success"] + sent)
    served = delta(before, counters(batching_server))
    assert PLAY_KEYS <= set(figures) and figures["mode"] == "sync"
    games = figures["games"]
    assert [g["game"] for g in games] == list(range(6)) and len({g["seed"] for g in games}) == 6, "seeded apart"
    waves = figures["latency_ms"]["count"]
    for game in games:
        (episode,) = game["episodes"]
        assert 0 < episode["steps"] <= 40 and episode["score"] == episode["ale_score"] == game["score"]
        assert game["requests"] == game["steps"] == episode["steps"], "one frame stack sent per step"
        assert game["latency_ms"]["count"] == waves, "its round trips are its waves'"
    assert figures["steps"] == sum(g["steps"] for g in games) == figures["requests"]
    # One ModelInfer request per step for all six games (six stacks fit the model's batch of 32).
    assert waves == max(g["steps"] for g in games) and served["nv_inference_request_success"] == waves, served
    assert served["nv_inference_count"] == figures["steps"], "every game's every stack, inferred once"
    assert "game 6: scores" in result.stdout and "n_episodes: 6 mean:" in result.stdout
    assert figures["client_cpu_seconds"] > 0


def test_a_wave_larger_than_the_model_batch_is_split_and_sent_at_once(batching_server) -> None:
    """40 stacks against max_batch_size 32: two requests (32 + 8), one answer of 40 rows in game order."""
    rng = np.random.default_rng(0)
    frames = rng.random((40, 4, 84, 84), dtype=np.float32)
    before = counters(batching_server)
    with InferenceClient("127.0.0.1", batching_server.grpc_port, "atari") as client:
        assert client.max_request_batch == 32
        q = client.infer_wave(frames)
        singly = np.stack([client.infer(f) for f in frames])
    # Triton counts a request a moment after its answer is sent: wait for the count, then check it exactly.
    wait_for_answers(batching_server, "atari", before["nv_inference_request_success"] + 2 + 40)
    served = delta(before, counters(batching_server))
    assert q.shape == (40, 4) and np.allclose(q, singly, atol=1e-5)
    assert served["nv_inference_request_success"] == 2 + 40 and served["nv_inference_count"] == 80


def test_async_games_keep_at_most_one_wave_in_flight(batching_server) -> None:
    before = counters(batching_server)
    with InferenceClient("127.0.0.1", batching_server.grpc_port, "atari") as client:
        outcome = play_games(RemotePolicy(client), 3, PlayConfig(env_id=ENV_ID, headless=True, fps=0, max_steps=60))
        # The wave in flight when the games ended is answered too (every wave holds the game that ran longest).
        waves = max(g.requests for g in outcome.games)
        wait_for_answers(batching_server, "atari", before["nv_inference_request_success"] + waves)
    a = outcome
    assert a.error is None and a.mode == "async" and 0 < a.steps <= 3 * 60
    answered = a.latency["count"]
    for game in outcome.games:
        figures = game.to_json()
        assert answered <= figures["requests"] <= min(figures["steps"], answered + 1), "one wave in flight at most"
        assert figures["staleness_steps"]["max"] >= 1
    assert delta(before, counters(batching_server))["nv_inference_request_success"] in (answered, answered + 1)


def test_paced_games_are_never_faster_than_real_time(batching_server) -> None:
    with InferenceClient("127.0.0.1", batching_server.grpc_port, "atari") as client:
        outcome = play_games(RemotePolicy(client), 4, PlayConfig(env_id=ENV_ID, headless=True, sync=True, max_steps=30))
    for game in outcome.games:
        rate = game.to_json()["steps_per_second"]
        # Never faster than 15/s (30 steps: the first starts the clock); how close to 15 a loaded machine keeps
        # many games is bench/bench_games.py's (--min-rate).
        assert rate <= 16.5, rate


def test_evaluation_summary_as_chainerrl_prints_it(batching_server, tmp_path: Path) -> None:
    stats = tmp_path / "eval.json"
    result = play_command(
        batching_server, "--games", "4", "--episodes", "2", "--fps", "0", "--max-steps", "50", "--json", str(stats)
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(stats.read_text())
    scores = [e["score"] for g in figures["games"] for e in g["episodes"]]
    assert len(scores) == 8 and all(e["steps"] <= 50 for g in figures["games"] for e in g["episodes"])
    assert figures["evaluation"] == {
        "episodes": 8,
        "mean": statistics.mean(scores),
        "median": statistics.median(scores),
        "stdev": statistics.stdev(scores),
        "max": max(scores),
        "min": min(scores),
    }
    assert f"n_episodes: 8 mean: {statistics.mean(scores):g} median: {statistics.median(scores):g}" in result.stdout
    assert evaluation_summary([3.0])["stdev"] == 0.0 and evaluation_summary([]) == {}


def test_grid_window_shows_every_game_in_its_cell(batching_server, tmp_path: Path) -> None:
    shot = tmp_path / "grid.png"
    shown: list[list[np.ndarray]] = []
    real_draw = GridScreen.draw_grid

    def draw_grid(self, screens, *args):
        shown.append([s.copy() for s in screens])
        real_draw(self, screens, *args)

    # Under SDL's dummy driver no key can come: the game-over screen does not wait.
    GridScreen.draw_grid = draw_grid
    try:
        with InferenceClient("127.0.0.1", batching_server.grpc_port, "atari") as client:
            config = PlayConfig(env_id=ENV_ID, sync=True, fps=0, max_steps=25, rendering_scale=1, screenshot=str(shot))
            outcome = play_games(RemotePolicy(client), 4, config)
    finally:
        GridScreen.draw_grid = real_draw
    assert outcome.steps == 100 and not outcome.stopped_by_user
    image = pygame.surfarray.array3d(pygame.image.load(str(shot))).swapaxes(0, 1)
    layout = GridScreen("test", 4, scale=1, headless=True, screenshot="unused.png")  # the same layout, not drawn on
    # 2x2 cells of 160x210, each under its label strip, GAP pixels apart (issue 18: tiles touched).
    row = LABEL_HEIGHT + 210 + GAP
    assert layout.cells == [
        (0, LABEL_HEIGHT),
        (160 + GAP, LABEL_HEIGHT),
        (0, row + LABEL_HEIGHT),
        (160 + GAP, row + LABEL_HEIGHT),
    ]
    assert image.shape[:2] == (2 * row + layout.bar_height, max(2 * 160 + GAP, MIN_WIDTH)), "and the overlay bar below"
    for (x, y), last in zip(layout.cells, shown[-1], strict=True):
        # Each cell is its own game's whole last screen (the label is above it, not over it).
        assert np.array_equal(image[y : y + 210, x : x + 160], last)
        assert last.std() > 10, "a game is drawn, not a blank cell"
        assert image[y - LABEL_HEIGHT : y, x : x + 160].max() > 200, "its label"
    assert image[2 * row :].max() > 200, "the overlay bar has text"
    pygame.quit()


@pytest.mark.parametrize(
    "flags, words",
    [
        pytest.param(["--games", "0"], ["--games", "between 1 and 256"], id="zero"),
    ],
)
def test_bad_games_flags_are_one_line(flags: list[str], words: list[str]) -> None:
    (port,) = free_ports(1)
    result = run_command(REMOTE, "--host", "127.0.0.1", "--port", str(port), "--headless", *flags, timeout=60)
    one_error_line(result, *words, alone=True)


def test_many_games_show_their_start_and_stop_on_ctrl_c_while_starting(batching_server) -> None:
    """Loading 64 emulators takes seconds: a line per bank of 32 says how far, and Ctrl-C stops it cleanly."""
    player = Player("--host", "127.0.0.1", "--port", str(batching_server.grpc_port), "--headless", "--games", "64")
    player.wait_for("creating 64 games: 32/64", timeout=240)
    result = player.stop()
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    # Stopped while the emulators load (nothing played), or while the first episodes start (no step played).
    stopped = "stopped while starting 64 games: nothing played" in result.stdout
    assert stopped or "0 agent steps" in result.stdout, result.stdout
