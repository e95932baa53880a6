"""Stage 3: the players on real ALE games, with a real Triton server, a real pygame surface."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pygame
import pytest
from helpers import free_ports

from atari_trtis_demo.agent import make_agent
from atari_trtis_demo.game import PlayConfig, play
from atari_trtis_demo.inference_client import ServerUnavailable
from atari_trtis_demo.onnx_export import convert
from atari_trtis_demo.policies import FallbackPolicy, LocalChainerPolicy, Policy, RemotePolicy
from atari_trtis_demo.serve import serving

ROOT = Path(__file__).resolve().parents[1]
REMOTE = ROOT / "src" / "app.py"
STANDALONE = ROOT / "standalone_src" / "app.py"
os.environ["SDL_VIDEODRIVER"] = "dummy"

SLOW_MODEL = '''
import os
import sys
import time

# As serve's twins do: this environment's numpy (<2) first; the stub is built for numpy 1.
sys.path.insert(0, os.environ["ATARI_TRTIS_SITE_PACKAGES"])
import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    """Answers fixed Q-values after 50 ms per request: a deliberately slow server."""

    def execute(self, requests):
        responses = []
        for request in requests:
            frames = pb_utils.get_input_tensor_by_name(request, "input").as_numpy()
            time.sleep(0.05)
            q = np.tile(np.array([0.1, 0.4, 0.3, 0.2], np.float32), (frames.shape[0], 1))
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("action", q)]))
        return responses
'''


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("agents")
    dirs = {"breakout": root / "breakout", "pong": root / "pong"}
    make_agent(4).save(str(dirs["breakout"]))
    make_agent(6).save(str(dirs["pong"]))
    return dirs


@pytest.fixture(scope="module")
def server(agents: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """Triton with 'atari' (Breakout), 'pong', and 'slow' (sleeps 50 ms per request)."""
    repo = tmp_path_factory.mktemp("repo") / "trtismodel"
    convert(str(agents["breakout"]), repository=str(repo), name="atari")
    convert(str(agents["pong"]), repository=str(repo), name="pong", env_id="PongNoFrameskip-v4")
    slow = repo / "slow"
    (slow / "1").mkdir(parents=True)
    (slow / "1" / "model.py").write_text(SLOW_MODEL)
    config = (repo / "atari" / "config.pbtxt").read_text().replace('name: "atari"', 'name: "slow"')
    config = config.replace('platform: "onnxruntime_onnx"', 'backend: "python"').replace("KIND_GPU", "KIND_CPU")
    (slow / "config.pbtxt").write_text(config.replace('default_model_filename: "model.onnx"', ""))
    http, grpc_port, metrics = free_ports(3)
    with serving(repo, http_port=http, grpc_port=grpc_port, metrics_port=metrics) as running:
        yield running


def run_app(script: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "SDL_VIDEODRIVER": "dummy"},
    )


def test_standalone_app_plays_and_reports(agents: dict[str, Path], tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    result = run_app(
        STANDALONE, "--modelpath", str(agents["breakout"]), "--headless", "--fps", "0", "--sync", "--max-steps", "300",
        "--episodes", "2", "--json", str(stats), "--epsilon", "1.0", "--seed", "3",
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
    result = run_app(
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
        assert figures["staleness_steps"]["max"] >= 0 and "staleness" in result.stdout
    assert f"127.0.0.1:{server.grpc_port}" in result.stdout


def test_async_player_keeps_its_pace_with_a_slow_server(server) -> None:
    from atari_trtis_demo.inference_client import InferenceClient

    rates = {}
    for sync in (True, False):
        with InferenceClient("127.0.0.1", server.grpc_port, "slow") as client:
            result = play(RemotePolicy(client), PlayConfig(sync=sync, headless=True, max_steps=60, fps=0))
        assert result.error is None and result.steps == 60
        if sync:
            assert result.requests == result.steps == result.latency["count"]
            assert result.latency["median_ms"] >= 50
        rates[sync] = result.steps_per_second
    assert rates[False] >= 3 * rates[True], rates


def test_window_shows_the_game_scaled(agents: dict[str, Path], tmp_path: Path) -> None:
    shot = tmp_path / "screen.png"
    policy = LocalChainerPolicy(str(agents["breakout"]))
    config = PlayConfig(sync=True, max_steps=40, rendering_scale=2, screenshot=str(shot), fps=0)
    from atari_trtis_demo.screen import Screen

    frames = []
    real_draw = Screen.draw

    def draw(self, rgb, *args):
        frames.append(rgb.copy())
        real_draw(self, rgb, *args)

    Screen.draw = draw
    try:
        result = play(policy, config)
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
    result = play(
        LocalChainerPolicy(str(agents["breakout"])),
        # Unpaced, so that the overlay's steps/s differs from frame to frame: the GIF writer
        # merges identical consecutive frames into one longer one.
        PlayConfig(sync=True, headless=True, max_steps=20, rendering_scale=1, record=str(gif), fps=0),
    )
    assert result.steps == 20
    import imageio.v2 as imageio

    frames = imageio.mimread(str(gif))
    assert len(frames) == 10 and frames[0].shape[:2] == (210, 160)


def start_game(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REMOTE), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "SDL_VIDEODRIVER": "dummy"},
    )  # fmt: skip


class Game:
    """``src/app.py`` running headless, its console lines collected as they come."""

    def __init__(self, args: list[str]) -> None:
        self.proc = start_game(args)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self._reader.start()

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None, f"the game ended before '{text}': {self.finish()}"
            assert time.monotonic() < deadline, f"no '{text}' within {timeout} s: {self.lines}"
            time.sleep(0.1)

    def stop(self) -> tuple[str, str]:
        """Ctrl-C, as a user ends play: the statistics so far, exit code 0."""
        self.proc.send_signal(signal.SIGINT)
        return self.finish()

    def finish(self) -> tuple[str, str]:
        err = self.proc.stderr.read()
        self.proc.wait(timeout=60)
        self._reader.join(timeout=10)
        return "".join(self.lines), err


@pytest.mark.parametrize("fallback", [False, True])
def test_server_dying_mid_game(agents: dict[str, Path], tmp_path: Path, fallback: bool) -> None:
    repo = tmp_path / "trtismodel"
    convert(str(agents["breakout"]), repository=str(repo))
    http, grpc_port, metrics = free_ports(3)
    # Paced, and many games: play is surely still going when the server dies.
    args = ["--host", "127.0.0.1", "--port", str(grpc_port), "--headless", "--fps", "200", "--episodes", "1000",
            "--max-steps", "300", "--timeout", "2", "--json", str(tmp_path / "stats.json")]  # fmt: skip
    args += ["--fallback-modelpath", str(agents["breakout"])] if fallback else ["--sync"]
    with serving(repo, http_port=http, grpc_port=grpc_port, metrics_port=metrics) as server:
        game = Game(args)
        time.sleep(6)  # playing against the server meanwhile
        server.stop()
    if fallback:
        game.wait_for("playing on with local inference")
        with serving(repo, http_port=http, grpc_port=grpc_port, metrics_port=metrics):  # the server is back
            game.wait_for("back to remote inference")
            out, err = game.stop()
        assert game.proc.returncode == 0, err
    else:
        out, err = game.finish()
    figures = json.loads((tmp_path / "stats.json").read_text())
    assert figures["requests"] > 0 and figures["steps"] > 0
    if fallback:
        assert out.count("playing on with local inference") == 1 and figures["fallback_switches"] == 1
        assert "Traceback" not in err and "InvalidStateError" not in err, err
        assert figures["error"] is None and figures["stopped_by_user"]
    else:
        assert game.proc.returncode == 1
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"127.0.0.1:{grpc_port}" in errors[0] and "Traceback" not in err
        # A server shutting down unloads its models first (NOT_FOUND): not the player's fault.
        assert "refused" not in errors[0], errors[0]
        assert "requests" in out and len(figures["episodes"]) < 1000, "the statistics so far are printed"


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
    frames = np.zeros((4, 84, 84), np.float32)

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
    down = run_app(REMOTE, "--host", "127.0.0.1", "--port", str(port), "--headless", "--timeout", "2")
    assert down.returncode == 2 and down.stderr.strip().startswith("error: cannot connect to 127.0.0.1:")
    wrong = run_app(REMOTE, "--port", str(server.grpc_port), "--host", "127.0.0.1", "--env", "PongNoFrameskip-v4")
    assert wrong.returncode == 2
    errors = [line for line in wrong.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "has 4 actions but PongNoFrameskip-v4 has 6" in errors[0]
    assert "Traceback" not in wrong.stderr


def test_standalone_refuses_a_model_of_another_game(agents: dict[str, Path]) -> None:
    result = run_app(STANDALONE, "--modelpath", str(agents["pong"]), "--headless")
    assert result.returncode == 2 and "has 6 actions but BreakoutNoFrameskip-v4 has 4" in result.stderr


def test_remote_player_does_not_need_chainer(server) -> None:
    code = (
        "import sys; sys.modules['chainer'] = None; sys.modules['chainerrl'] = None\n"
        f"sys.argv = ['app.py', '--host', '127.0.0.1', '--port', '{server.grpc_port}', '--headless',"
        " '--max-steps', '20', '--fps', '0']\n"
        "from atari_trtis_demo.play_cli import remote_main\n"
        "raise SystemExit(remote_main())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "20 agent steps" in result.stdout


def test_ctrl_c_ends_play_cleanly(agents: dict[str, Path]) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(STANDALONE), "--modelpath", str(agents["breakout"]), "--headless",
         "--max-steps", "1000000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
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
    game = Game(
        ["--host", "127.0.0.1", "--port", str(grpc_port), "--headless", "--fps", "100", "--episodes", "1000",
         "--timeout", "2", "--fallback-modelpath", str(agents["breakout"]), "--json", str(stats)]
    )  # fmt: skip
    game.wait_for("playing on with local inference")
    with serving(repo, http_port=http, grpc_port=grpc_port, metrics_port=metrics):
        game.wait_for("back to remote inference")
        time.sleep(1)  # a few remote answers
        out, err = game.stop()
    assert game.proc.returncode == 0, err
    assert out.count("playing on with local inference") == 1 and f"cannot connect to 127.0.0.1:{grpc_port}" in out
    assert "Traceback" not in err and "InvalidStateError" not in err, err
    figures = json.loads(stats.read_text())
    assert figures["latency_ms"]["count"] > 0, "the server answered once it was up"
    assert figures["fallback_switches"] == 1 and figures["error"] is None


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


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
        pytest.param(["--rendering_scale", "0"], ["--rendering_scale", "between 1 and 16"], id="scale-zero"),
        pytest.param(["--fps", "nan"], ["--fps"], id="fps-nan"),
    ],
)
def test_a_bad_number_is_one_line_before_any_work(flags: list[str], words: list[str]) -> None:
    (port,) = free_ports(1)  # no server: the flag must be refused before connecting
    for script, target in ((REMOTE, ["--host", "127.0.0.1", "--port", str(port)]), (STANDALONE, ["--modelpath", "x"])):
        if script == STANDALONE and flags[0] in ("--timeout", "--port"):
            continue
        line = one_error_line(run_app(script, *target, "--headless", *flags, timeout=60))
        for word in words:
            assert word in line, (script.name, line)


@pytest.mark.parametrize("flag", ["--json", "--screenshot", "--record"])
def test_an_output_file_in_a_missing_folder_is_refused_before_playing(flag: str, agents: dict[str, Path]) -> None:
    target = "/nonexistent-folder/out." + {"--json": "json", "--screenshot": "png", "--record": "gif"}[flag]
    started = time.monotonic()
    result = run_app(STANDALONE, "--modelpath", str(agents["breakout"]), "--headless", flag, target)
    line = one_error_line(result)
    assert flag in line and "/nonexistent-folder does not exist" in line, line
    assert "episode" not in result.stdout and time.monotonic() - started < 30, "refused before playing"


@pytest.mark.parametrize("app", ["standalone", "remote with fallback"])
def test_local_inference_in_a_client_only_install_is_one_line(app: str, agents: dict[str, Path]) -> None:
    """After ./setup.sh --client there is no gym, Chainer or ChainerRL: say what to install."""
    argv = (
        ["--modelpath", str(agents["breakout"])]
        if app == "standalone"
        else ["--host", "127.0.0.1", "--port", str(free_ports(1)[0]), "--fallback-modelpath", str(agents["breakout"])]
    )
    main = "standalone_main" if app == "standalone" else "remote_main"
    code = (
        "import sys\n"
        "for name in ('gym', 'chainer', 'chainerrl'): sys.modules[name] = None\n"
        f"from atari_trtis_demo.play_cli import {main}\n"
        "from atari_trtis_demo.cli_args import run_cli\n"
        f"run_cli(lambda: {main}({argv + ['--headless']!r}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    line = one_error_line(result)
    flag = "--modelpath" if app == "standalone" else "--fallback-modelpath"
    assert line.startswith(f"error: {flag} ") and "./setup.sh" in line and "Traceback" not in result.stderr, line
