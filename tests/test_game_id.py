"""The game travels with the model: agent directory -> repository config -> server -> both players."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tritonclient.grpc as triton
from helpers import (
    CONVERTER,
    REMOTE,
    TRAIN,
    free_ports,
    one_error_line,
    run_command,
    run_standalone,
    serving_on_free_ports,
    stock_chainerrl_dqn,
)

from atari_trtis_demo.client.inference_client import InferenceClient
from atari_trtis_demo.convert.onnx_export import convert
from atari_trtis_demo.core.envs import check_env_id
from atari_trtis_demo.core.errors import UserError
from atari_trtis_demo.core.model_repository import read_repository
from atari_trtis_demo.train.agent import make_agent

PONG, BREAKOUT = "PongNoFrameskip-v4", "BreakoutNoFrameskip-v4"
TINY_RUN = ["--gpu", "-1", "--replay-start-size", "32", "--eval-interval", "40", "--eval-n-steps", "20",
            "--n-best-episodes", "1", "--checkpoint-freq", "0"]  # fmt: skip
HEADLESS = ["--headless", "--fps", "0", "--max-steps", "50"]


def state_of(agent_dir: Path) -> dict:
    return json.loads((agent_dir / "agent_state.json").read_text())


@pytest.fixture(scope="module")
def pong_agents(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A Pong agent as this project writes it (its game recorded), and a stock ChainerRL Pong directory (none).

    Not conftest's ``agents``: those record no game, and these must.
    """
    root = tmp_path_factory.mktemp("game_id_agents")
    make_agent(6, env_id=PONG).save(str(root / "pong"))
    stock_chainerrl_dqn(6).save(str(root / "stock_pong"))
    return {"pong": root / "pong", "stock_pong": root / "stock_pong"}


@pytest.fixture(scope="module")
def pong_server(pong_agents: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """Triton serving the Pong agent as 'atari', converted with no --env: the game must come from the agent."""
    repo = tmp_path_factory.mktemp("game_id_repo") / "trtismodel"
    convert(str(pong_agents["pong"]), repository=str(repo), instance_kind="KIND_CPU")
    with serving_on_free_ports(repo) as running:
        yield running


def test_training_records_the_game_and_resume_keeps_to_it(tmp_path: Path) -> None:
    outdir = tmp_path / "results"
    first = run_command(TRAIN, "--env", PONG, "--steps", "40", "--outdir", str(outdir), *TINY_RUN)
    assert first.returncode == 0, first.stderr[-3000:]
    (run_dir,) = outdir.iterdir()
    assert state_of(run_dir / "40_finish") == {"t": 40, "n_actions": 6, "env_id": PONG}
    assert state_of(run_dir / "best")["env_id"] == PONG

    # --resume on the --outdir (a folder of runs) picks its newest run; the game must stay the same.
    wrong = run_command(TRAIN, "--resume", str(outdir), "--steps", "60", "--outdir", str(outdir), *TINY_RUN)
    line = one_error_line(wrong)
    assert str(run_dir / "40_finish") in line and f"plays {PONG}" in line and f"--env {PONG}" in line, line
    resumed = run_command(
        TRAIN, "--env", PONG, "--resume", str(outdir), "--steps", "60", "--outdir", str(outdir), *TINY_RUN
    )
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


def test_converter_records_the_game_and_refuses_a_contradicting_env(
    pong_agents: dict[str, Path], tmp_path: Path
) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    def config_of(repo: Path) -> model_config_pb2.ModelConfig:
        return text_format.Parse((repo / "atari" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())

    result = run_command(CONVERTER, "--model", str(pong_agents["pong"]), "--repository", str(tmp_path / "repo"))
    assert result.returncode == 0, result.stderr
    assert f"game: {PONG} (the model's own" in result.stdout and f"real {PONG} frames" in result.stdout
    assert config_of(tmp_path / "repo").parameters["env_id"].string_value == PONG

    wrong = run_command(
        CONVERTER, "--model", str(pong_agents["pong"]), "--repository", str(tmp_path / "r2"), "--env", BREAKOUT
    )
    line = one_error_line(wrong)
    assert f"--env {BREAKOUT}" in line and PONG in line and "agent_state.json" in line, line
    assert not (tmp_path / "r2").exists(), "a refused conversion writes nothing"

    # The 2019 --out mode works as before.
    out = run_command(CONVERTER, "--model", str(pong_agents["pong"]), "--out", str(tmp_path / "model.onnx"))
    assert out.returncode == 0 and (tmp_path / "model.onnx").stat().st_size > 1_000_000, out.stderr


def test_stock_chainerrl_directory_converts_with_env(pong_agents: dict[str, Path], tmp_path: Path) -> None:
    """No agent_state.json: --env names the game (and is recorded); without it the default game must fit."""
    result = convert(str(pong_agents["stock_pong"]), repository=str(tmp_path / "repo"), env_id=PONG)
    assert result.env_id == PONG and result.recorded_env_id is None
    (model,) = read_repository(tmp_path / "repo")  # the config as serve reads it
    assert model.config.parameters["env_id"].string_value == PONG
    with pytest.raises(UserError, match=f"6 actions but {BREAKOUT} has 4: pass --env"):
        convert(str(pong_agents["stock_pong"]), repository=str(tmp_path / "r2"))


def test_the_server_reports_the_models_game(pong_server) -> None:
    with InferenceClient("127.0.0.1", pong_server.grpc_port, "atari") as client:
        assert client.env_id == PONG and client.n_actions == 6
    official = triton.InferenceServerClient(f"127.0.0.1:{pong_server.grpc_port}")
    config = official.get_model_config("atari").config
    assert config.parameters["env_id"].string_value == PONG


def test_remote_player_plays_the_models_game(pong_server, tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    result = run_command(
        REMOTE, "--host", "127.0.0.1", "--port", str(pong_server.grpc_port), *HEADLESS, "--json", str(stats)
    )
    assert result.returncode == 0, result.stderr
    assert f"game: {PONG} (the model's own, recorded in the config of model 'atari'" in result.stdout
    assert json.loads(stats.read_text())["steps"] == 50

    wrong = run_command(
        REMOTE, "--host", "127.0.0.1", "--port", str(pong_server.grpc_port), *HEADLESS, "--env", BREAKOUT
    )
    line = one_error_line(wrong)
    assert f"--env {BREAKOUT} contradicts the model's game {PONG}" in line, line
    assert "episode" not in wrong.stdout


def test_a_misspelt_game_is_refused_before_connecting() -> None:
    (port,) = free_ports(1)  # nothing listens: the name must be refused first
    line = one_error_line(
        run_command(REMOTE, "--host", "127.0.0.1", "--port", str(port), "--env", "Breakout", "--headless")
    )
    assert line.startswith(f"error: --env: unknown Atari env id 'Breakout'; did you mean {BREAKOUT}, "), line
    with pytest.raises(UserError, match=f"did you mean {PONG}, ALE/Pong-v5"):
        check_env_id("pong")


def test_standalone_player_plays_the_models_game(pong_agents: dict[str, Path]) -> None:
    result = run_standalone(pong_agents["pong"], *HEADLESS)
    assert result.returncode == 0, result.stderr
    assert f"game: {PONG} (the model's own, recorded in {pong_agents['pong'] / 'agent_state.json'})" in result.stdout
    line = one_error_line(run_standalone(pong_agents["pong"], *HEADLESS, "--env", BREAKOUT))
    assert f"--env {BREAKOUT} contradicts the model's game {PONG}" in line, line


def test_standalone_player_plays_a_stock_directory_with_env(pong_agents: dict[str, Path]) -> None:
    result = run_standalone(pong_agents["stock_pong"], *HEADLESS, "--env", PONG)
    assert result.returncode == 0, result.stderr
    assert f"game: {PONG} (--env; the model records no game)" in result.stdout
    line = one_error_line(run_standalone(pong_agents["stock_pong"], *HEADLESS))
    assert f"has 6 actions but {BREAKOUT} has 4" in line, line
