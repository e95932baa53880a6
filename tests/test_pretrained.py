"""A published agent in one command: converter.py --pretrained against a local mirror of ChainerRL's model zoo."""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import CONVERTER, REMOTE, one_error_line, run_command, serving_on_free_ports, stock_chainerrl_dqn

from atari_trtis_demo.core.model_repository import read_repository

PONG = "PongNoFrameskip-v4"


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """ChainerRL's zoo layout, <root>/DQN/<Game>/<best|final>.zip holding <type>/, served over HTTP on 127.0.0.1."""
    root = tmp_path_factory.mktemp("zoo")
    # An agent directory as ChainerRL's own DQN saves it (what the zoo's archives hold): no agent_state.json.
    agent = tmp_path_factory.mktemp("published") / "best"
    stock_chainerrl_dqn(6).save(str(agent))
    (root / "DQN" / "Pong").mkdir(parents=True)
    with zipfile.ZipFile(root / "DQN" / "Pong" / "best.zip", "w") as archive:
        for name in sorted(os.listdir(agent)):
            archive.write(agent / name, f"best/{name}")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def run(script: Path, *args: str, cwd: Path, zoo_url: str = "") -> subprocess.CompletedProcess:
    """One of the commands run from ``cwd``, ChainerRL's download cache inside it, the zoo at ``zoo_url``."""
    env = {"CHAINER_DATASET_ROOT": str(cwd / "cache")} | ({"ATARI_DEMO_MODEL_ZOO_URL": zoo_url} if zoo_url else {})
    return run_command(script, *args, env=env, cwd=cwd)


def test_pretrained_agent_downloads_converts_serves_and_plays(zoo: str, tmp_path: Path) -> None:
    result = run(CONVERTER, "--pretrained", PONG, "--instance-kind", "KIND_CPU", cwd=tmp_path, zoo_url=zoo)
    assert result.returncode == 0, result.stderr[-3000:]
    # Everything under results/pretrained/<env>/: the agent (best/) and its repository (trtismodel/).
    agent_dir, repository = tmp_path / "results" / "pretrained" / PONG / "best", f"results/pretrained/{PONG}/trtismodel"
    assert f"saved ChainerRL's published best DQN for {PONG} in results/pretrained/{PONG}/best" in result.stdout
    state = json.loads((agent_dir / "agent_state.json").read_text())
    assert state["env_id"] == PONG and state["n_actions"] == 6
    assert {"model.npz", "target_model.npz", "optimizer.npz"} <= set(os.listdir(agent_dir))
    (model,) = read_repository(tmp_path / repository)  # the config as serve reads it
    assert model.config.parameters["env_id"].string_value == PONG
    assert f"python -m atari_trtis_demo.serve --model-repository {repository}\n" in result.stdout
    assert "python src/app.py --host 127.0.0.1 --port 8001" in result.stdout

    with serving_on_free_ports(tmp_path / repository) as running:
        stats = tmp_path / "stats.json"
        play = run(REMOTE, "--host", "127.0.0.1", "--port", str(running.grpc_port), "--headless", "--fps", "0",
                   "--max-steps", "50", "--json", str(stats), cwd=tmp_path)  # fmt: skip
    assert play.returncode == 0, play.stderr
    assert f"game: {PONG} (the model's own" in play.stdout
    assert json.loads(stats.read_text())["steps"] == 50


def test_pretrained_failures_are_one_line(zoo: str, tmp_path: Path) -> None:
    missing = run(CONVERTER, "--pretrained", PONG, "--pretrained-type", "final", cwd=tmp_path, zoo_url=zoo)
    line = one_error_line(missing, "DQN/Pong/final.zip")
    assert line.startswith("error: --pretrained: cannot download"), line
    both = run(CONVERTER, "--pretrained", PONG, "--model", "x", cwd=tmp_path)
    assert both.returncode == 2 and "give --model DIR" in both.stderr
    wrong = run(CONVERTER, "--pretrained", PONG, "--env", "BreakoutNoFrameskip-v4", cwd=tmp_path)
    assert wrong.returncode == 2 and "contradicts --pretrained" in wrong.stderr
    assert not (tmp_path / "results" / "pretrained" / PONG / "trtismodel").exists()
