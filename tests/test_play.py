"""Stage 3: the players on real ALE games, with a real Triton server, a real pygame surface."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pygame
import pytest
from helpers import (
    REMOTE,
    STANDALONE,
    Player,
    assert_runs_without_chainer,
    free_ports,
    one_error_line,
    run_command,
    run_python_without,
    run_standalone,
    start_command,
    wait_for_answers,
)

from atari_trtis_demo.client.errors import ServerUnavailable
from atari_trtis_demo.convert.onnx_export import convert
from atari_trtis_demo.play.play_config import PlayConfig
from atari_trtis_demo.play.play_loop import play_games
from atari_trtis_demo.play.policies import FallbackPolicy, LocalChainerPolicy, Policy, RemotePolicy
from atari_trtis_demo.serving.serve import serving

# In-process play (window tests) draws on pygame's headless driver; the commands run with it too.
os.environ["SDL_VIDEODRIVER"] = "dummy"
# 'agents', 'repository' and 'server' (one Triton serving 'atari', 'pong' and 'slow') are conftest.py's.


def test_standalone_app_plays_and_reports(agents: dict[str, Path], tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    result = run_standalone(
        agents["breakout"], "--fps", "0", "--sync", "--max-steps", "300", "--episodes", "2", "--json", str(stats),
        "--epsilon", "1.0", "--seed", "3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "episode 1: score" in result.stdout and "episode 2: score" in result.stdout
    figures = json.loads(stats.read_text())
    assert f"requests {figures['requests']}," in result.stdout and "steps/s" in result.stdout
    assert figures["mode"] == "sync" and figures["steps"] == figures["requests"] == figures["latency_ms"]["count"]
    assert len(figures["episodes"]) == 2
    for episode in figures["episodes"]:
        # The loop's sum of env rewards equals the emulator's own count.
        assert episode["score"] == episode["ale_score"] and 0 < episode["steps"] <= 300
    assert sum(e["score"] for e in figures["episodes"]) > 0, (
        "random play (seeded) scores: the check above compares real rewards"
    )


@pytest.mark.parametrize("mode", ["--sync", "async"])
@pytest.mark.parametrize("game", ["breakout", "pong"])
def test_remote_app_plays_against_triton(server, game: str, mode: str, tmp_path: Path) -> None:
    env_id, model = {"breakout": ("BreakoutNoFrameskip-v4", "atari"), "pong": ("PongNoFrameskip-v4", "pong")}[game]
    stats = tmp_path / "stats.json"
    flags = [mode] if mode == "--sync" else []
    result = run_command(
        REMOTE, "--host", "127.0.0.1", "--port", str(server.grpc_port), "--model", model, "--env", env_id,
        "--headless", "--fps", "0", "--max-steps", "300", "--json", str(stats), "--epsilon", "0.3", *flags,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    figures = json.loads(stats.read_text())
    (episode,) = figures["episodes"]
    assert 0 < episode["steps"] <= 300 and episode["score"] == episode["ale_score"]
    # In async mode the request in flight when the game ends is dropped, unanswered.
    assert figures["requests"] - (mode == "async") <= figures["latency_ms"]["count"] <= figures["requests"]
    assert figures["requests"] > 0
    if mode == "--sync":
        assert figures["requests"] == episode["steps"]
    else:
        # Once the first answer is in, each step applies one answer, of an age the console reports too.
        staleness = figures["staleness_steps"]
        assert 0 < sum(staleness["histogram"].values()) <= episode["steps"], staleness
        assert f"max {staleness['max']};" in result.stdout, result.stdout
    assert f"127.0.0.1:{server.grpc_port}" in result.stdout


def test_async_play_at_the_real_time_pace_applies_the_previous_steps_answer(server) -> None:
    """At 15 agent steps/s a loopback round trip fits inside one step: staleness p50 at most 1."""
    from atari_trtis_demo.client.inference_client import InferenceClient

    with InferenceClient("127.0.0.1", server.grpc_port, "atari") as client:
        started = time.perf_counter()
        result = play_games(RemotePolicy(client), 1, PlayConfig(sync=False, headless=True, max_steps=45, epsilon=0))
        wall = time.perf_counter() - started
    assert result.error is None and result.steps == 45
    # Never faster than the pace; how close to 15 steps/s a loaded machine keeps is bench/bench_play.py's.
    assert result.steps_per_second <= 16 and wall >= 2.8, "paced at 15 steps/s by default, headless too"
    summary = result.to_json()["staleness_steps"]
    assert summary["p50"] <= 1, summary


def test_async_player_keeps_its_pace_with_a_slow_server(server) -> None:
    """Against a server that takes 50 ms an answer, sync play waits for each one; async plays on with the last
    answer while the next is in flight. How much faster that is, is bench/ material, not a unit test's."""
    from atari_trtis_demo.client.inference_client import InferenceClient

    for sync in (True, False):
        with InferenceClient("127.0.0.1", server.grpc_port, "slow") as client:
            result = play_games(RemotePolicy(client), 1, PlayConfig(sync=sync, headless=True, max_steps=60, fps=0))
        assert result.error is None and result.steps == 60
        if sync:
            assert result.requests == result.steps == result.latency["count"]
            assert result.latency["median_ms"] >= 50
        else:  # a step does not wait for an answer: one request in flight while the game plays on
            assert result.requests < result.steps, (result.requests, result.latency)


def test_window_shows_the_game_scaled(agents: dict[str, Path], tmp_path: Path) -> None:
    shot = tmp_path / "screen.png"
    policy = LocalChainerPolicy(str(agents["breakout"]))
    config = PlayConfig(sync=True, max_steps=40, rendering_scale=2, screenshot=str(shot), fps=0)
    from atari_trtis_demo.play.screen import Screen

    frames = []
    real_draw = Screen.draw

    def draw(self, rgb, *args):
        frames.append(rgb.copy())
        real_draw(self, rgb, *args)

    Screen.draw = draw
    try:
        result = play_games(policy, 1, config)
    finally:
        Screen.draw = real_draw
    assert result.steps == 40
    image = pygame.surfarray.array3d(pygame.image.load(str(shot))).swapaxes(0, 1)
    assert image.shape == (420, 320, 3)
    expected = np.repeat(np.repeat(frames[-1], 2, axis=0), 2, axis=1)
    # Everything above the overlay (bottom lines) is the game's last frame, scaled 2x.
    assert np.array_equal(image[:380], expected[:380])
    assert image[:380].std() > 10, "the game is drawn, not a blank surface"


def test_gif_recording(agents: dict[str, Path], tmp_path: Path) -> None:
    gif = tmp_path / "play.gif"
    result = play_games(
        LocalChainerPolicy(str(agents["breakout"])),
        1,
        PlayConfig(sync=True, headless=True, max_steps=20, rendering_scale=1, record=str(gif), fps=0),
    )
    assert result.steps == 20
    from PIL import Image, ImageSequence

    # One frame every RECORD_EVERY (2) steps at the real-time pace: 10 frames of 2/15 s. The GIF
    # writer merges identical consecutive frames into one longer one (two overlays can read the
    # same), so the frames' total duration is what counts, in GIF's 10 ms units (130 ms a frame).
    with Image.open(gif) as image:
        size = image.size
        durations = [frame.info["duration"] for frame in ImageSequence.Iterator(image)]
    assert size == (160, 210) and 7 <= len(durations) <= 10, (size, durations)
    assert 10 * 130 <= sum(durations) <= 10 * 140, durations


@pytest.mark.parametrize("fallback", [False, True])
def test_server_dying_mid_game(agents: dict[str, Path], tmp_path: Path, fallback: bool) -> None:
    repo = tmp_path / "trtismodel"
    convert(str(agents["breakout"]), repository=str(repo))
    http, grpc_port, metrics = free_ports(3)
    # Paced, and many games: play is surely still going when the server dies.
    args = ["--host", "127.0.0.1", "--port", str(grpc_port), "--headless", "--fps", "200", "--episodes", "1000",
            "--max-steps", "300", "--timeout", "2", "--json", str(tmp_path / "stats.json")]  # fmt: skip
    # Without fallback: --reconnect 0 ends play at the first failure (test_play_loop.py rides a restart out).
    args += ["--fallback-modelpath", str(agents["breakout"])] if fallback else ["--sync", "--reconnect", "0"]
    with serving(repo, http_port=http, grpc_port=grpc_port, metrics_port=metrics) as server:
        game = Player(*args)
        wait_for_answers(server, "atari", 100)  # playing against the server meanwhile
        server.stop()
    if fallback:
        game.wait_for("playing on with local inference")
        with serving(repo, http_port=http, grpc_port=grpc_port, metrics_port=metrics):  # the server is back
            game.wait_for("back to remote inference")
            ended = game.stop()
        assert ended.returncode == 0, ended.stderr
    else:
        ended = game.finish()
    out, err = ended.stdout, ended.stderr
    figures = json.loads((tmp_path / "stats.json").read_text())
    assert figures["requests"] > 0 and figures["steps"] > 0
    if fallback:
        assert out.count("playing on with local inference") == 1 and figures["fallback_switches"] == 1
        assert "Traceback" not in err and "InvalidStateError" not in err, err
        assert figures["error"] is None and figures["stopped_by_user"]
    else:
        line = one_error_line(
            ended,
            f"127.0.0.1:{grpc_port}",
            code=1,
        )
        # A server shutting down unloads its models first (NOT_FOUND): not the player's fault.
        assert "refused" not in line, line
        assert "requests" in out and figures["error"], "the statistics so far, and the failure that ended play"


class FlakyPolicy(Policy):
    """A real local policy that fails like a dead server while ``down`` is set."""

    def __init__(self, inner: LocalChainerPolicy) -> None:
        self.inner, self.down = inner, False
        self.name, self.n_actions, self.latency = "flaky", inner.n_actions, inner.latency

    def q_values(self, frames: np.ndarray) -> np.ndarray:
        if self.down:
            raise ServerUnavailable("cannot connect to 127.0.0.1:1 (test)")
        return self.inner.q_values(frames)


@pytest.mark.parametrize("sync", [True, False])
def test_fallback_returns_to_the_primary_when_it_answers_again(agents: dict[str, Path], sync: bool) -> None:
    primary = FlakyPolicy(LocalChainerPolicy(str(agents["breakout"])))
    fallback = LocalChainerPolicy(str(agents["breakout"]))
    policy = FallbackPolicy(primary, fallback, probe_seconds=0.05)
    frames = np.zeros((1, 4, 84, 84), np.float32)

    def ask() -> np.ndarray:
        return policy.q_values(frames) if sync else policy.q_values_async(frames).result(timeout=10)

    expected = ask()
    primary.down = True
    np.testing.assert_array_equal(ask(), expected)  # answered locally
    assert policy.on_fallback and policy.fallback_switches == 1
    primary.down = False
    time.sleep(0.1)
    ask()
    assert not policy.on_fallback, "back to the primary once it answers"
    before = fallback.latency.summary()["count"]
    ask()
    assert fallback.latency.summary()["count"] == before, "the fallback is idle again"


def test_server_unreachable_or_wrong_game_is_one_line(server) -> None:
    (port,) = free_ports(1)
    down = run_command(REMOTE, "--host", "127.0.0.1", "--port", str(port), "--headless", "--timeout", "2")
    # A down server is a run-time failure (exit 1), not a usage error (issue 16 item 6).
    assert down.returncode == 1 and down.stderr.strip().startswith("error: cannot connect to 127.0.0.1:")
    wrong = run_command(REMOTE, "--port", str(server.grpc_port), "--host", "127.0.0.1", "--env", "PongNoFrameskip-v4")
    one_error_line(wrong, "has 4 actions but PongNoFrameskip-v4 has 6")


def test_standalone_refuses_a_model_of_another_game(agents: dict[str, Path]) -> None:
    result = run_standalone(agents["pong"])
    assert result.returncode == 2 and "has 6 actions but BreakoutNoFrameskip-v4 has 4" in result.stderr


def test_remote_player_does_not_need_chainer(server) -> None:
    """Not only imported: the remote player plays 20 steps against the server without Chainer."""
    result = assert_runs_without_chainer(
        f"sys.argv = ['app.py', '--host', '127.0.0.1', '--port', '{server.grpc_port}', '--headless',"
        " '--max-steps', '20', '--fps', '0']\n"
        "from atari_trtis_demo.play.play_cli import remote_main\n"
        "raise SystemExit(remote_main())"
    )
    assert "20 agent steps" in result.stdout


def test_ctrl_c_ends_play_cleanly(agents: dict[str, Path]) -> None:
    proc = start_command(
        STANDALONE, "--modelpath", str(agents["breakout"]), "--headless", "--max-steps", "1000000",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    timer = threading.Timer(8, lambda: proc.send_signal(2))
    timer.start()
    out, err = proc.communicate(timeout=120)
    timer.cancel()
    assert proc.returncode == 0, err
    assert "agent steps" in out and "Traceback" not in err


def test_fallback_with_no_server_at_start_plays_locally_then_moves_to_the_server(
    agents: dict[str, Path], tmp_path: Path
) -> None:
    repo = tmp_path / "trtismodel"
    convert(str(agents["breakout"]), repository=str(repo))
    http, grpc_port, metrics = free_ports(3)
    stats = tmp_path / "stats.json"
    game = Player(
        "--host", "127.0.0.1", "--port", str(grpc_port), "--headless", "--fps", "100", "--episodes", "1000",
        "--timeout", "2", "--fallback-modelpath", str(agents["breakout"]), "--json", str(stats),
    )  # fmt: skip
    game.wait_for("playing on with local inference")
    with serving(repo, http_port=http, grpc_port=grpc_port, metrics_port=metrics) as server:
        game.wait_for("back to remote inference")
        wait_for_answers(server, "atari", 15)  # a few remote answers
        ended = game.stop()
    out, err = ended.stdout, ended.stderr
    assert ended.returncode == 0, err
    assert out.count("playing on with local inference") == 1 and f"cannot connect to 127.0.0.1:{grpc_port}" in out
    assert "Traceback" not in err and "InvalidStateError" not in err, err
    figures = json.loads(stats.read_text())
    assert figures["latency_ms"]["count"] > 0, "the server answered once it was up"
    assert figures["fallback_switches"] == 1 and figures["error"] is None


@pytest.mark.parametrize(
    "flags, words",
    [
        pytest.param(["--timeout", "0"], ["--timeout", "above 0"], id="timeout-zero"),
        pytest.param(["--fps", "-5"], ["--fps", "between 0 and 10000"], id="fps-negative"),
        pytest.param(["--port", "70000"], ["--port", "between 1 and 65535"], id="port-too-big"),
        pytest.param(["--episodes", "0"], ["--episodes", "at least 1"], id="episodes-zero"),
        pytest.param(["--max-steps", "-3"], ["--max-steps", "at least 1"], id="max-steps-negative"),
        pytest.param(["--epsilon", "1.5"], ["--epsilon", "between 0 and 1"], id="epsilon-above-1"),
        pytest.param(["--seed", "-1"], ["--seed", "between 0 and 2147483647"], id="seed-negative"),
        pytest.param(["--rendering_scale", "0"], ["--rendering_scale", "between 0.5 and 16"], id="scale-zero"),
        pytest.param(["--fps", "nan"], ["--fps"], id="fps-nan"),
    ],
)
def test_a_bad_number_is_one_line_before_any_work(flags: list[str], words: list[str]) -> None:
    (port,) = free_ports(1)  # no server: the flag must be refused before connecting
    for script, target in ((REMOTE, ["--host", "127.0.0.1", "--port", str(port)]), (STANDALONE, ["--modelpath", "x"])):
        if script == STANDALONE and flags[0] in ("--timeout", "--port"):
            continue
        one_error_line(run_command(script, *target, "--headless", *flags, timeout=60), *words, alone=True)


@pytest.mark.parametrize("flag", ["--json", "--screenshot", "--record"])
def test_an_output_file_in_a_missing_folder_is_refused_before_playing(flag: str, agents: dict[str, Path]) -> None:
    target = "/nonexistent-folder/out." + {"--json": "json", "--screenshot": "png", "--record": "gif"}[flag]
    started = time.monotonic()
    result = run_standalone(agents["breakout"], flag, target)
    one_error_line(result, flag, "/nonexistent-folder does not exist", alone=True)
    assert "episode" not in result.stdout and time.monotonic() - started < 30, "refused before playing"


def standalone_argv(agent: Path) -> list[str]:
    return ["--modelpath", str(agent)]


def remote_with_fallback_argv(agent: Path) -> list[str]:
    return ["--host", "127.0.0.1", "--port", str(free_ports(1)[0]), "--fallback-modelpath", str(agent)]


@pytest.mark.parametrize(
    "main, argv, flag",
    [
        pytest.param("standalone_main", standalone_argv, "--modelpath", id="standalone"),
        pytest.param("remote_main", remote_with_fallback_argv, "--fallback-modelpath", id="remote with fallback"),
    ],
)
def test_local_inference_in_a_client_only_install_is_one_line(
    main: str, argv, flag: str, agents: dict[str, Path]
) -> None:
    """After ./setup.sh --client there is no gym, Chainer or ChainerRL: say what to install."""
    code = (
        f"from atari_trtis_demo.play.play_cli import {main}\n"
        "from atari_trtis_demo.core.cli_args import run_cli\n"
        f"run_cli(lambda: {main}({argv(agents['breakout']) + ['--headless']!r}))"
    )
    result = run_python_without(code, modules=("gym", "chainer", "chainerrl"))
    line = one_error_line(result, "./setup.sh", alone=True)
    # Every package it lacks, not only the first import that failed (gym, which ChainerRL imports).
    assert line.startswith(f"error: {flag} ") and "needs chainer, chainerrl, gym, which are not installed" in line, line
