"""Issue 18, the newcomer's first hour: help that tells, no banners, one-line errors for a client install,
a game that serves by itself, recordings that keep their pixels, a training summary that agrees."""

from __future__ import annotations

import contextlib
import re
import socket

import numpy as np
import pytest
from helpers import CONVERTER, REMOTE, ROOT, SERVE, STANDALONE, TRAIN, option_helps, run_command, run_standalone

COMMANDS = {"train": TRAIN, "convert": CONVERTER, "serve": SERVE, "play": REMOTE, "play-local": STANDALONE}


@pytest.mark.parametrize("name", COMMANDS)
def test_every_flag_has_help_and_defaults_are_shown(name):
    result = run_command(COMMANDS[name], "--help", timeout=120, env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    helps = option_helps(result.stdout)
    assert len(helps) > 5, result.stdout
    missing = [flag for flag, text in helps.items() if not text]
    assert not missing, f"{name}: flags without help: {missing}\n{result.stdout}"
    # Every value flag that has a fixed default says it.
    expected = {
        "train": {"--steps": "50000000", "--eval-interval": "250000", "--gpu": "0", "--pretrained-type": "best"},
        "convert": {"--max-batch-size": "32", "--instance-kind": "KIND_GPU", "--name": "atari"},
        "serve": {"--grpc-port": "8001", "--http-port": "8000", "--ready-timeout": "120"},
        "play": {"--port": "8001", "--episodes": "1", "--seed": "0", "--epsilon": "0.05"},
        "play-local": {"--episodes": "1", "--seed": "0", "--rendering_scale": "3.0"},
    }[name]
    for flag, default in expected.items():
        assert f"(default: {default}" in helps[flag], (flag, helps[flag])


def test_serve_help_names_the_command_as_run():
    result = run_command(SERVE, "--help", timeout=120)
    assert result.stdout.startswith("usage: python -m atari_trtis_demo.serve "), result.stdout[:200]


# --- a tiny real training run, shared: its output (banners, summary) and its agent (client install, play) ---

BANNERS = ("A.L.E: Arcade Learning Environment", "Powered by Stella", "unmaintained", "Hello from the pygame")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A real 300-step training run with two evaluations: (finished process, run directory)."""
    out = tmp_path_factory.mktemp("tiny") / "results"
    flags = "--gpu -1 --steps 300 --replay-start-size 100 --eval-interval 150 --eval-n-steps 200 --n-best-episodes 1"
    flags += " --checkpoint-freq 0 --final-exploration-steps 200 --seed 3"
    result = run_command(TRAIN, "--outdir", str(out), *flags.split(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = out.iterdir()
    return result, run_dir


def test_training_prints_no_banner(tiny_run):
    result, _ = tiny_run
    for banner in BANNERS:
        assert banner not in result.stdout + result.stderr, (banner, result.stderr[:2000])


def test_local_play_prints_no_banner_and_each_line_once(tiny_run, tmp_path):
    _, run_dir = tiny_run
    result = run_standalone(run_dir / "best", "--fps", "0", "--max-steps", "30", timeout=300)
    assert result.returncode == 0, result.stderr
    for banner in BANNERS:
        assert banner not in result.stdout + result.stderr, (banner, result.stderr)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == len(set(lines)), lines


def test_end_of_training_summary_names_the_evaluation_it_differs_from(tiny_run):
    result, run_dir = tiny_run
    evaluations = re.findall(r"evaluation at step ([\d,]+): mean score ([\d.]+)[,:].* saved to best/", result.stderr)
    assert evaluations, result.stderr
    step, score = evaluations[-1]  # the last one saved is the agent in best/
    summary = result.stdout.splitlines()
    assert f"the agent of the evaluation at step {step}, mean score {score} there" in summary[0], summary
    mean = float(next(line for line in summary if line.startswith("mean:")).split(":", 1)[1])
    # It says why the figures differ exactly when they do.
    explained = f"(not the {score} of its evaluation at step {step}: these are other games" in result.stdout
    assert explained == (f"{mean:.2f}" != score), (mean, score, result.stdout)


# --- a client install: the Chainer commands say what to install, in one line ---


@pytest.mark.parametrize(
    "script, argv",
    [
        ("train", ["atari-train", "--gpu", "-1", "--outdir", "{tmp}/results", "--steps", "100"]),
        ("convert", ["atari-convert", "--model", "{agent}", "--repository", "{tmp}/repo"]),
        ("play_local", ["atari-play-local", "--modelpath", "{agent}", "--headless", "--max-steps", "5"]),
    ],
)
def test_client_install_chainer_commands_say_what_to_install(tiny_run, tmp_path, script, argv):
    from helpers import one_error_line, run_python_without

    _, run_dir = tiny_run
    argv = [a.format(tmp=tmp_path, agent=run_dir / "best") for a in argv]
    code = f"sys.argv = {argv!r}\nfrom atari_trtis_demo.console import {script}\n{script}()\n"
    result = run_python_without(code, modules=("chainer", "chainerrl", "onnx_chainer"))
    line = one_error_line(result, "./setup.sh", alone=True)
    assert "client install" in line or "not --client" in line, line
    assert not (tmp_path / "results").exists() and not (tmp_path / "repo").exists()


# --- the model zoo offline: the error names the variable that points at a mirror ---


def test_pretrained_offline_is_one_line_before_any_download_and_leaves_home_untouched(tmp_path):
    """Offline, --pretrained fails in one line naming the mirror variable, before ChainerRL's downloader prints
    "Downloading" or makes its cache (~/.chainer): nothing lands in the user's home or the working folder."""
    import subprocess

    from helpers import command, command_env, free_ports, one_error_line

    (closed,) = free_ports(1)  # nothing listens there: the download fails as offline
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = command_env({"ATARI_DEMO_MODEL_ZOO_URL": f"http://127.0.0.1:{closed}/", "HOME": str(home)})
    env.pop("CHAINER_DATASET_ROOT", None)  # ChainerRL's cache in $HOME/.chainer, as for a user
    result = subprocess.run(command(CONVERTER, "--pretrained", "PongNoFrameskip-v4"), cwd=work, env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    one_error_line(result, "--pretrained: cannot download", "DQN/Pong/best.zip", "ATARI_DEMO_MODEL_ZOO_URL")
    assert "Downloading" not in result.stdout + result.stderr, result.stdout
    assert list(home.iterdir()) == [] and list(work.iterdir()) == [], (list(home.rglob("*")), list(work.rglob("*")))


# --- a game that serves by itself: FIRE after each lost life (real ALE) ---


def ball_visible(rgb) -> bool:
    """Breakout's ball between the bricks and the paddle (rows 93-187, inside the walls)."""
    return bool((rgb[93:188, 8:152].sum(axis=2) > 0).any())


def test_fire_on_life_loss_serves_after_every_lost_life():
    from atari_trtis_demo.core.atari_wrappers import FireOnLifeLoss
    from atari_trtis_demo.core.envs import find_wrapper, make_env

    env = make_env("BreakoutNoFrameskip-v4", train=False, epsilon=0.0, seed=0, fire_on_life_loss=True)
    env.reset(seed=0)
    wrapper, ale = find_wrapper(env, FireOnLifeLoss), env.unwrapped.ale
    fire = env.unwrapped.get_action_meanings().index("FIRE")
    sent: list[int] = []  # the actions that reach the game below the wrapper
    inner_step = wrapper.env.step
    wrapper.env.step = lambda action: (sent.append(int(action)), inner_step(action))[1]
    lives, fired_at, visible, steps = ale.lives(), [0], 0, 0
    while True:  # the agent only moves right or stands: it never presses FIRE itself
        before = ale.getEpisodeFrameNumber()
        _, _, terminated, truncated, _ = env.step(2 if steps % 2 else 0)
        steps += 1
        visible += ball_visible(ale.getScreenRGB())
        if ale.lives() < lives:
            fired_at.append(steps)  # the next step is the override
            lives = ale.lives()
        assert ale.getEpisodeFrameNumber() > before
        if terminated or truncated or steps > 2000:
            break
    # Every life was served and lost: the game ended, having pressed FIRE at the start and after each of
    # the first four lost lives (the fifth ends the game).
    assert terminated and ale.lives() == 0, (steps, ale.lives())
    assert wrapper.fired == 5
    # FIRE reached the game exactly at the first step and at the step after each of the first four lost lives.
    assert [i for i, action in enumerate(sent) if action == fire] == fired_at[:5], fired_at
    assert visible > steps / 2, (visible, steps)  # the ball is in play in most steps


def test_without_the_option_a_game_that_never_fires_stands_still():
    from atari_trtis_demo.core.atari_wrappers import FireOnLifeLoss
    from atari_trtis_demo.core.envs import find_wrapper, make_env

    env = make_env("BreakoutNoFrameskip-v4", train=False, epsilon=0.0, seed=0, fire_on_life_loss=False)
    env.reset(seed=0)
    assert find_wrapper(env, FireOnLifeLoss) is None
    ale = env.unwrapped.ale
    visible = sum(ball_visible(ale.getScreenRGB()) for _ in range(200) if env.step(0) is not None)
    assert visible == 0 and ale.lives() == 5


def test_training_never_fires_for_the_agent():
    from atari_trtis_demo.core.atari_wrappers import FireOnLifeLoss
    from atari_trtis_demo.core.envs import find_wrapper, make_env

    env = make_env("BreakoutNoFrameskip-v4", train=True, fire_on_life_loss=True)
    assert find_wrapper(env, FireOnLifeLoss) is None


# --- mp4 recordings keep the window's pixels ---


def test_mp4_recording_pads_to_macro_blocks_and_keeps_the_pace(tiny_run, tmp_path):
    import imageio.v2 as imageio

    from atari_trtis_demo.play.screen import RECORD_EVERY

    _, run_dir = tiny_run
    video, shot = tmp_path / "play.mp4", tmp_path / "last.png"
    play = ["--fps", "0", "--max-steps", "40", "--record", str(video), "--screenshot", str(shot)]
    result = run_standalone(run_dir / "best", *play, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "resiz" not in result.stderr.lower(), result.stderr  # imageio's "resizing from (480, 630)" warning
    reader = imageio.get_reader(str(video))
    frames = [np.asarray(f, dtype=int) for f in reader]
    fps = reader.get_meta_data()["fps"]
    reader.close()
    window = np.asarray(imageio.imread(str(shot)))[:, :, :3].astype(int)  # 630 x 480 at the default scale 3
    assert window.shape == (630, 480, 3)
    # One frame every RECORD_EVERY agent steps, played at 15 agent steps/s: the Atari's own pace.
    assert len(frames) == 40 // RECORD_EVERY and fps == 15 / RECORD_EVERY
    # 630 rows padded with 10 black rows to 640, never stretched: the window's pixels, row for row.
    assert frames[-1].shape == (640, 480, 3)
    assert frames[-1][630:].mean() < 2
    assert np.abs(frames[-1][:630] - window).mean() < 2.5  # codec noise only; a stretched frame differs by ~5


# --- the grid window fits the screen, with gaps and readable labels ---


@pytest.mark.parametrize("n", [4, 16, 30, 64])
def test_grid_window_fits_the_display_with_gaps_and_readable_labels(n, monkeypatch):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")  # a real display surface; SDL's dummy screen is 1024x768
    from atari_trtis_demo.play.grid_screen import GAP, LABEL_HEIGHT, SCREEN_MARGIN, GridScreen

    screen = GridScreen("fit", n, scale=3)
    try:
        desktop_w, desktop_h = screen.pygame.display.get_desktop_sizes()[0]
        width, height = screen.surface.get_size()
        assert (width, height) == screen.window_size()
        assert width <= desktop_w - SCREEN_MARGIN[0] and height <= desktop_h - SCREEN_MARGIN[1], (width, height)
        cw, ch = screen.cell_size
        for i, (x, y) in enumerate(screen.cells):
            assert x >= 0 and y >= LABEL_HEIGHT and x + cw <= width and y + ch <= height - screen.bar_height
            for x2, y2 in screen.cells[i + 1 :]:  # apart by at least GAP, label strips included
                assert x2 >= x + cw + GAP or y2 >= y + ch + GAP + LABEL_HEIGHT or x2 + cw + GAP <= x, (x, y, x2, y2)
        assert screen.cell_font.get_linesize() >= 16  # about the overlay's size, at any cell scale
    finally:
        screen.pygame.quit()


def test_grid_of_16_fits_a_1280_px_screen():
    from atari_trtis_demo.play.grid_screen import GridScreen

    screen = GridScreen("fit", 16, scale=3, headless=True, screenshot="unused.png", max_size=(1280 - 16, 800 - 120))
    assert screen.window_size()[0] <= 1280 - 16 and screen.window_size()[1] <= 800 - 120


# --- demo.sh: a taken port never costs a training run ---

DEMO = ROOT / "demo.sh"


def run_demo(tmp_path, timeout: float, **knobs: str):
    import subprocess

    from helpers import command_env

    env = command_env({"DEMO_OUT": str(tmp_path / "demo"), "DEMO_SETUP": "0", **knobs})
    return subprocess.run(["bash", str(DEMO)], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


@contextlib.contextmanager
def port_taken(port: int):
    """A listening socket on 127.0.0.1:``port`` (or the port is taken already, by something else)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            pass  # taken already: just as good
        yield


def serve_and_play(serve: str, play: str) -> None:
    """Run ``serve`` (a command line) to its "ready", then ``play`` headless for a few steps: both succeed."""
    import shlex
    import signal
    import subprocess

    from helpers import command_env

    server = subprocess.Popen(shlex.split(serve), cwd=ROOT, env=command_env(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        said = []
        for line in server.stdout:  # ends when serve does: a failed start ends the loop too
            said.append(line)
            if " ready at " in line:
                break
        assert any(" ready at " in line for line in said), (said, server.stderr.read()[-2000:])
        played = subprocess.run([*shlex.split(play), "--headless", "--max-steps", "20", "--fps", "0"], cwd=ROOT,
                                env=command_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
        assert played.returncode == 0 and "20 agent steps" in played.stdout, played.stderr[-2000:]
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=60)
    assert server.returncode == 0


def test_demo_port_taken_stops_before_training_naming_demo_port(tmp_path):
    with port_taken(18500):
        result = run_demo(tmp_path, timeout=120, DEMO_PORT="18499")
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "DEMO_PORT=18499" in errors[0] and "18499-18501 is taken" in errors[0], result.stderr
    assert "training" not in result.stdout and not (tmp_path / "demo" / "results").exists()


def test_demo_passes_with_port_18000_taken_and_ends_with_the_commands_to_watch(tmp_path):
    from atari_trtis_demo.core.contract import DEFAULT_ENV_ID

    with port_taken(18000):
        result = run_demo(tmp_path, timeout=900, DEMO_STEPS="200", DEMO_PLAY_STEPS="60")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "ports 18000-18002: one is taken; the server will use" in result.stdout
    out = tmp_path / "demo"
    (run_dir,) = (out / "results").iterdir()
    tail = result.stdout[result.stdout.index("To watch this agent play in a window") :]
    # The exact commands, with this demo's model repository and agent, not the README's trtismodel/.
    assert f".venv/bin/python -m atari_trtis_demo.serve --model-repository {out}/trtismodel\n" in tail
    assert ".venv/bin/python src/app.py --host 127.0.0.1 --port 8001 --fire-on-life-loss\n" in tail
    assert f".venv/bin/python standalone_src/app.py --modelpath {run_dir}/200_finish --fire-on-life-loss" in tail
    # For ports 8000-8002 taken, the hint is two commands that work with 8000 taken (it used to move only gRPC).
    lines = [line.strip() for line in tail.splitlines()]
    serve_hint = next(line for line in lines if "atari_trtis_demo.serve" in line and "--http-port" in line)
    play_hint = next(line for line in lines if line.startswith(".venv/bin/python src/app.py") and "8001" not in line)
    with port_taken(8000):
        serve_and_play(serve_hint, play_hint)
    assert f'string_value: "{DEFAULT_ENV_ID}"' in (out / "trtismodel" / "atari" / "config.pbtxt").read_text()
    # The recorded game serves after each lost life: the ball is in play in most frames.
    import imageio.v2 as imageio

    frames = imageio.mimread(str(out / "gameplay.gif"))
    visible = [bool((np.asarray(f)[93 * 3 : 188 * 3, 8 * 3 : 152 * 3, :3].astype(int).sum(axis=2) > 120).any())
               for f in frames]  # fmt: skip
    assert sum(visible) > len(frames) / 2, (sum(visible), len(frames))
    for banner in BANNERS:
        assert banner not in result.stdout + result.stderr, banner


@pytest.mark.parametrize(
    "script, flags, missing",
    [
        (TRAIN, ["--gpu", "-1", "--outdir", "{tmp}/results", "--steps", "100"], "chainer, chainerrl, gym, matplotlib"),
        (CONVERTER, ["--model", "{tmp}/agent", "--repository", "{tmp}/repo"], "chainer, chainerrl, gym, onnx"),
    ],
    ids=["train_dqn.py", "converter.py"],
)
def test_client_install_scripts_name_every_missing_package(tmp_path, script, flags, missing):
    from helpers import one_error_line, run_python_without

    from atari_trtis_demo.core.cli_args import SERVER_SIDE_MODULES

    argv = [str(script), *(flag.format(tmp=tmp_path) for flag in flags)]
    code = f"import runpy\nsys.argv = {argv!r}\nrunpy.run_path({str(script)!r}, run_name='__main__')\n"
    result = run_python_without(code, modules=sorted(SERVER_SIDE_MODULES))  # as after ./setup.sh --client
    line = one_error_line(result, f"{script.name} needs {missing}", "./setup.sh", alone=True)
    assert "client install" in line and not any(tmp_path.iterdir()), "nothing written"


def test_learning_curve_command_without_matplotlib_is_one_line(tmp_path):
    from helpers import one_error_line, run_python_without

    scores = tmp_path / "scores.txt"
    scores.write_text("steps\tepisodes\telapsed\tmean\tmedian\tstdev\tmax\tmin\n100\t1\t1.0\t1\t1\t0\t1\t1\n")
    code = f"import runpy\nsys.argv = ['plots', {str(scores)!r}]\n"
    code += "runpy.run_module('atari_trtis_demo.plots', run_name='__main__')"
    result = run_python_without(code, modules=["matplotlib"])
    one_error_line(result, "python -m atari_trtis_demo.plots needs matplotlib, which is not installed", alone=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.txt"]
