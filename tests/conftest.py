"""Fixtures shared by the test modules: fresh agents, one model repository and one Triton serving it."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from helpers import serving_on_free_ports

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


@pytest.fixture(scope="session", autouse=True)
def session_tmpdir(tmp_path_factory: pytest.TempPathFactory):
    """``$TMPDIR`` for this session, inside pytest's own temp folder: every serve's workdir and every log
    kept for the owner go there (from this process and from the commands it starts), and are removed
    with it after a green run (pyproject.toml: tmp_path_retention_policy)."""
    path = tmp_path_factory.mktemp("tmpdir")
    saved = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = str(path), str(path)
    yield path
    if saved[0] is None:
        del os.environ["TMPDIR"]
    else:
        os.environ["TMPDIR"] = saved[0]
    tempfile.tempdir = saved[1]


@pytest.fixture(scope="session")
def agents(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Fresh (untrained) agent directories: 'breakout' (4 actions) and 'pong' (6)."""
    from atari_trtis_demo.train.agent import make_agent

    root = tmp_path_factory.mktemp("agents")
    dirs = {"breakout": root / "breakout", "pong": root / "pong"}
    make_agent(4).save(str(dirs["breakout"]))
    make_agent(6).save(str(dirs["pong"]))
    return dirs


@pytest.fixture(scope="session")
def repository(agents: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """'atari' (Breakout) and 'pong' converted from ``agents`` with max_batch_size 8, and 'slow'.

    'slow' is a python-backend model answering fixed Q-values 50 ms after each request.
    'atari' records no game (converted without env_id), 'pong' records PongNoFrameskip-v4.
    """
    from atari_trtis_demo.convert.onnx_export import convert
    from atari_trtis_demo.core.model_config import render_config

    repo = tmp_path_factory.mktemp("serving") / "trtismodel"
    convert(str(agents["breakout"]), repository=str(repo), name="atari", max_batch_size=8)
    convert(str(agents["pong"]), repository=str(repo), name="pong", max_batch_size=8, env_id="PongNoFrameskip-v4")
    slow = repo / "slow"
    (slow / "1").mkdir(parents=True)
    (slow / "1" / "model.py").write_text(SLOW_MODEL)
    (slow / "config.pbtxt").write_text(render_config("slow", 4, backend="python", instance_kind="KIND_CPU"))
    return repo


@pytest.fixture(scope="session")
def server(repository: Path):
    """One Triton for the whole session serving ``repository`` on free ports."""
    with serving_on_free_ports(repository) as running:
        yield running


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1 and its key, made here by openssl: (cert, key)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="session")
def batching_server(agents: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """A Triton of its own serving the Breakout agent as 'atari' with the converter's defaults (batching on,
    max_batch_size 32), its metrics endpoint up: for many games at once."""
    from atari_trtis_demo.convert.onnx_export import convert

    repo = tmp_path_factory.mktemp("batching") / "trtismodel"
    convert(str(agents["breakout"]), repository=str(repo), name="atari", instance_kind="KIND_CPU")
    with serving_on_free_ports(repo) as running:  # its metrics endpoint up
        yield running
