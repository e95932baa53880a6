"""The game travels with the model: agent directory -> repository config -> server -> both players."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tritonclient.grpc as triton
from helpers import free_ports

from atari_trtis_demo.agent import make_agent, make_q_function
from atari_trtis_demo.envs import check_env_id
from atari_trtis_demo.errors import UserError
from atari_trtis_demo.inference_client import InferenceClient
from atari_trtis_demo.onnx_export import convert
from atari_trtis_demo.serve import serving

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "train_src" / "train_dqn.py"
CONVERT = ROOT / "onnx_converter_src" / "converter.py"
REMOTE = ROOT / "src" / "app.py"
STANDALONE = ROOT / "standalone_src" / "app.py"
PONG, BREAKOUT = "PongNoFrameskip-v4", "BreakoutNoFrameskip-v4"
TINY_RUN = ["--gpu", "-1", "--replay-start-size", "32", "--eval-interval", "40", "--eval-n-steps", "20",
            "--n-best-episodes", "1", "--checkpoint-freq", "0"]  # fmt: skip
HEADLESS = ["--headless", "--fps", "0", "--max-steps", "50"]


def run(script: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy"}
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def one_error_line(result: subprocess.CompletedProcess) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


def state_of(agent_dir: Path) -> dict:
    return json.loads((agent_dir / "agent_state.json").read_text())


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A Pong agent as this project writes it, and a stock ChainerRL Pong directory that records no game."""
    import chainer
    from chainerrl import agents as chainerrl_agents
    from chainerrl import explorers, replay_buffer

    root = tmp_path_factory.mktemp("game_id_agents")
    make_agent(6, env_id=PONG).save(str(root / "pong"))
    q_function = make_q_function(6)
    optimizer = chainer.optimizers.RMSpropGraves(lr=2.5e-4, alpha=0.95, momentum=0.0, eps=1e-2)
    optimizer.setup(q_function)
    stock = chainerrl_agents.DQN(
        q_function, optimizer, replay_buffer.ReplayBuffer(100), 0.99,
        explorers.ConstantEpsilonGreedy(0.1, lambda: 0), replay_start_size=32,
    )  # fmt: skip
    stock.save(str(root / "stock_pong"))
    return {"pong": root / "pong", "stock_pong": root / "stock_pong"}


@pytest.fixture(scope="module")
def pong_server(agents: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """Triton serving the Pong agent as 'atari', converted with no --env."""
    repo = tmp_path_factory.mktemp("game_id_repo") / "trtismodel"
    convert(str(agents["pong"]), repository=str(repo), instance_kind="KIND_CPU")
    http, grpc_port, metrics = free_ports(3)
    with serving(repo, http_port=http, grpc_port=grpc_port, metrics_port=metrics) as running:
        yield running


def test_training_records_the_game_and_resume_keeps_to_it(tmp_path: Path) -> None:
    outdir = tmp_path / "results"
    first = run(TRAIN, "--env", PONG, "--steps", "40", "--outdir", str(outdir), *TINY_RUN)
    assert first.returncode == 0, first.stderr[-3000:]
    (run_dir,) = outdir.iterdir()
    assert state_of(run_dir / "40_finish") == {"t": 40, "n_actions": 6, "env_id": PONG}
    assert state_of(run_dir / "best")["env_id"] == PONG

    # --resume on the --outdir (a folder of runs) picks its newest run; the game must stay the same.
    wrong = run(TRAIN, "--resume", str(outdir), "--steps", "60", "--outdir", str(outdir), *TINY_RUN)
    line = one_error_line(wrong)
    assert str(run_dir / "40_finish") in line and f"plays {PONG}" in line and f"--env {PONG}" in line, line
    resumed = run(TRAIN, "--env", PONG, "--resume", str(outdir), "--steps", "60", "--outdir", str(outdir), *TINY_RUN)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    new_run = next(p for p in outdir.iterdir() if p != run_dir)
    assert f"Resuming from {run_dir / '40_finish'} at step 40" in resumed.stderr
    assert f"Continuing in a new run directory {new_run}; the checkpoint's run {run_dir} stays as it was" in (
        resumed.stderr
    )
    assert state_of(new_run / "60_finish") == {"t": 60, "n_actions": 6, "env_id": PONG}
    assert not (run_dir / "60_finish").exists(), "the checkpoint's run is left as it was"


def test_agent_directories_record_their_game_only_when_known(tmp_path: Path) -> None:
    make_agent(4, env_id=BREAKOUT).save(str(tmp_path / "known"))
    make_agent(4).save(str(tmp_path / "unknown"))
    assert state_of(tmp_path / "known") == {"t": 0, "n_actions": 4, "env_id": BREAKOUT}
    assert state_of(tmp_path / "unknown") == {"t": 0, "n_actions": 4}


def test_converter_records_the_game_and_refuses_a_contradicting_env(agents: dict[str, Path], tmp_path: Path) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    def config_of(repo: Path) -> model_config_pb2.ModelConfig:
        return text_format.Parse((repo / "atari" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())

    result = run(CONVERT, "--model", str(agents["pong"]), "--repository", str(tmp_path / "repo"))
    assert result.returncode == 0, result.stderr
    assert f"game: {PONG} (the model's own" in result.stdout and f"real {PONG} frames" in result.stdout
    assert config_of(tmp_path / "repo").parameters["env_id"].string_value == PONG

    wrong = run(CONVERT, "--model", str(agents["pong"]), "--repository", str(tmp_path / "r2"), "--env", BREAKOUT)
    line = one_error_line(wrong)
    assert f"--env {BREAKOUT}" in line and PONG in line and "agent_state.json" in line, line
    assert not (tmp_path / "r2").exists(), "a refused conversion writes nothing"

    # The 2019 --out mode works as before.
    out = run(CONVERT, "--model", str(agents["pong"]), "--out", str(tmp_path / "model.onnx"))
    assert out.returncode == 0 and (tmp_path / "model.onnx").stat().st_size > 1_000_000, out.stderr


def test_stock_chainerrl_directory_converts_with_env(agents: dict[str, Path], tmp_path: Path) -> None:
    """No agent_state.json: --env names the game (and is recorded); without it the default game must fit."""
    result = convert(str(agents["stock_pong"]), repository=str(tmp_path / "repo"), env_id=PONG)
    assert result.env_id == PONG and result.recorded_env_id is None
    assert 'key: "env_id" value: { string_value: "PongNoFrameskip-v4" }' in Path(result.config_path or "").read_text()
    with pytest.raises(UserError, match=f"6 actions but {BREAKOUT} has 4: pass --env"):
        convert(str(agents["stock_pong"]), repository=str(tmp_path / "r2"))


def test_the_server_reports_the_models_game(pong_server) -> None:
    with InferenceClient("127.0.0.1", pong_server.grpc_port, "atari") as client:
        assert client.env_id == PONG and client.n_actions == 6
    official = triton.InferenceServerClient(f"127.0.0.1:{pong_server.grpc_port}")
    config = official.get_model_config("atari").config
    assert config.parameters["env_id"].string_value == PONG


def test_remote_player_plays_the_models_game(pong_server, tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    result = run(REMOTE, "--host", "127.0.0.1", "--port", str(pong_server.grpc_port), *HEADLESS, "--json", str(stats))
    assert result.returncode == 0, result.stderr
    assert f"game: {PONG} (the model's own, recorded in the config of model 'atari'" in result.stdout
    assert json.loads(stats.read_text())["steps"] == 50

    wrong = run(REMOTE, "--host", "127.0.0.1", "--port", str(pong_server.grpc_port), *HEADLESS, "--env", BREAKOUT)
    line = one_error_line(wrong)
    assert f"--env {BREAKOUT} contradicts the model's game {PONG}" in line, line
    assert "episode" not in wrong.stdout


def test_a_misspelt_game_is_refused_before_connecting() -> None:
    (port,) = free_ports(1)  # nothing listens: the name must be refused first
    line = one_error_line(run(REMOTE, "--host", "127.0.0.1", "--port", str(port), "--env", "Breakout", "--headless"))
    assert line.startswith(f"error: --env: unknown Atari env id 'Breakout'; did you mean {BREAKOUT}, "), line
    with pytest.raises(UserError, match=f"did you mean {PONG}, ALE/Pong-v5"):
        check_env_id("pong")


def test_standalone_player_plays_the_models_game(agents: dict[str, Path]) -> None:
    result = run(STANDALONE, "--modelpath", str(agents["pong"]), *HEADLESS)
    assert result.returncode == 0, result.stderr
    assert f"game: {PONG} (the model's own, recorded in {agents['pong'] / 'agent_state.json'})" in result.stdout
    line = one_error_line(run(STANDALONE, "--modelpath", str(agents["pong"]), *HEADLESS, "--env", BREAKOUT))
    assert f"--env {BREAKOUT} contradicts the model's game {PONG}" in line, line


def test_standalone_player_plays_a_stock_directory_with_env(agents: dict[str, Path]) -> None:
    result = run(STANDALONE, "--modelpath", str(agents["stock_pong"]), *HEADLESS, "--env", PONG)
    assert result.returncode == 0, result.stderr
    assert f"game: {PONG} (--env; the model records no game)" in result.stdout
    line = one_error_line(run(STANDALONE, "--modelpath", str(agents["stock_pong"]), *HEADLESS))
    assert f"has 6 actions but {BREAKOUT} has 4" in line, line


def test_progress_eta_waits_for_the_updates() -> None:
    """While the replay buffer fills (fast, no updates) the line says when updates start, not a false ETA."""
    import io

    from atari_trtis_demo.training import ProgressLine

    class Agent:
        class replay_updater:  # noqa: N801 - shaped like ChainerRL's ReplayUpdater
            replay_start_size = 1000

        replay_buffer: list[int] = []

    stream = io.StringIO()
    progress = ProgressLine(total_steps=10_000, step_offset=0, stream=stream, log_interval=0.0)
    progress.window = [(progress.start - 10.0, 0)]  # 500 steps in 10 s: the fill's pace
    Agent.replay_buffer = [0] * 500
    progress(None, Agent(), 500)
    line = stream.getvalue()
    assert "filling the replay buffer, updates start in 10s (ETA after they do)" in line or "in 9s" in line, line
    assert "ETA 3m" not in line, "no ETA from the fill's pace"
    Agent.replay_buffer = [0] * 1000
    progress(None, Agent(), 1000)  # updates start: the fill's pace is forgotten
    assert [step for _, step in progress.window] == [1000]
    assert stream.getvalue().splitlines()[-1].split(" | ")[2] == "ETA ?"
    progress.window = [(progress.window[0][0] - 50.0, 1000)]  # the update phase: 500 steps in 50 s
    progress(None, Agent(), 1500)
    last = stream.getvalue().splitlines()[-1]
    assert "ETA 14m" in last and "filling" not in last, last  # 8,500 steps at 10 steps/s
