"""Stage 2: ChainerRL agent -> ONNX -> Triton model repository, checked with onnxruntime."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from helpers import CONVERTER, ROOT, one_error_line, run_command, stock_chainerrl_dqn, tree_digest
from tritonclient.grpc import model_config_pb2

from atari_trtis_demo.convert import onnx_export
from atari_trtis_demo.convert.onnx_export import convert, observation_samples
from atari_trtis_demo.core.envs import OldGymAPI, make_env
from atari_trtis_demo.core.errors import UserError
from atari_trtis_demo.train.agent import batch_q_values, load_q_function, make_agent


def train_tiny_agent(env_id: str, path: Path, steps: int = 80) -> Path:
    """A few real DQN updates on real frames, so the weights are not the initial ones."""
    env = OldGymAPI(make_env(env_id, train=True), seed=0)
    agent = make_agent(env.action_space.n, replay_start_size=32, update_interval=1)
    obs, reward = env.reset(), 0.0
    for _ in range(steps):
        obs, reward, done, info = env.step(agent.act_and_train(obs, reward))
        if done or info.get("needs_reset"):
            agent.stop_episode_and_train(obs, reward, done)
            obs, reward = env.reset(), 0.0
    agent.save(str(path))
    return path


@pytest.fixture(scope="module")
def breakout_agent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_agent("BreakoutNoFrameskip-v4", tmp_path_factory.mktemp("breakout") / "best")


@pytest.fixture(scope="module")
def pong_agent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_agent("PongNoFrameskip-v4", tmp_path_factory.mktemp("pong") / "best")


@pytest.mark.parametrize("game", ["breakout", "pong"])
def test_repository_model_matches_chainer_and_config_is_triton_valid(
    game: str, breakout_agent: Path, pong_agent: Path, tmp_path: Path
) -> None:
    agent_dir, env_id, n_actions = {
        "breakout": (breakout_agent, "BreakoutNoFrameskip-v4", 4),
        "pong": (pong_agent, "PongNoFrameskip-v4", 6),
    }[game]
    repo = tmp_path / "trtismodel"
    result = convert(str(agent_dir), repository=str(repo), env_id=env_id, max_batch_size=16, instance_kind="KIND_CPU")
    assert result.n_actions == n_actions and result.max_abs_diff <= 1e-5
    assert result.model_path == str(repo / "atari" / "1" / "model.onnx")

    model = onnx.load(result.model_path)
    weights = {init.name for init in model.graph.initializer}
    assert [i.name for i in model.graph.input] == ["input"], "weights must not be graph inputs"
    assert len(weights) == 10
    assert "Reshape" not in {n.op_type for n in model.graph.node}
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"

    q_function, _ = load_q_function(str(agent_dir))
    session = ort.InferenceSession(result.model_path, providers=["CPUExecutionProvider"])
    frames = observation_samples(env_id, n=32, seed=3)
    for batch in (1, 7, 32):
        (got,) = session.run(["action"], {"input": frames[:batch]})
        expected = batch_q_values(q_function, frames[:batch])
        assert got.shape == (batch, n_actions)
        assert np.max(np.abs(got - expected)) <= 1e-5
        assert np.array_equal(got.argmax(1), expected.argmax(1))

    config = text_format.Parse((repo / "atari" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.name == "atari" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 16 and config.default_model_filename == "model.onnx"
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("input", model_config_pb2.TYPE_FP32, [4, 84, 84])
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("action", model_config_pb2.TYPE_FP32, [n_actions])
    ]
    assert config.HasField("dynamic_batching")
    assert [(g.count, g.kind) for g in config.instance_group] == [(1, model_config_pb2.ModelInstanceGroup.KIND_CPU)]


def test_example_repository_config_is_triton_valid() -> None:
    config = text_format.Parse(
        (ROOT / "trtismodel" / "atari" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert config.platform == "onnxruntime_onnx" and list(config.input[0].dims) == [4, 84, 84]
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU


def test_versions_are_numbered_and_never_overwritten_without_force(breakout_agent: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    first = convert(str(breakout_agent), repository=str(repo))
    second = convert(str(breakout_agent), repository=str(repo))
    assert first.model_path.endswith("/atari/1/model.onnx") and second.model_path.endswith("/atari/2/model.onnx")
    before = tree_digest(repo)
    with pytest.raises(UserError, match="--version 2: .* already exists"):
        convert(str(breakout_agent), repository=str(repo), version=2)
    assert tree_digest(repo) == before
    convert(str(breakout_agent), repository=str(repo), version=2, force=True)
    assert sorted(os.listdir(repo / "atari")) == ["1", "2", "config.pbtxt"], "no staging leftovers"


def test_failed_verification_leaves_the_repository_untouched(
    breakout_agent: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    convert(str(breakout_agent), repository=str(repo))
    before = tree_digest(repo)
    real_export = onnx_export.export_onnx

    def corrupted_export(q_function):  # a wrong weight: the export no longer matches Chainer
        model = real_export(q_function)
        bias = next(i for i in model.graph.initializer if i.name.endswith("_1_b"))
        values = onnx.numpy_helper.to_array(bias).copy()
        values[0] += 0.5
        bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
        return model

    monkeypatch.setattr(onnx_export, "export_onnx", corrupted_export)
    with pytest.raises(UserError, match="verification failed at batch 1"):
        convert(str(breakout_agent), repository=str(repo))
    with pytest.raises(UserError, match="verification failed"):
        convert(str(breakout_agent), out=str(tmp_path / "model.onnx"))
    assert tree_digest(repo) == before
    assert not (tmp_path / "model.onnx").exists()


def test_cli_out_file_as_in_2019_and_from_inside_its_directory(breakout_agent: Path, tmp_path: Path) -> None:
    out = tmp_path / "onnxmodel" / "model.onnx"
    result = run_command(
        CONVERTER, "--model", str(breakout_agent), "--out", str(out), "--gpu", "0", cwd=CONVERTER.parent
    )
    assert result.returncode == 0, result.stderr
    assert "verified" in result.stdout and f"wrote {out} (4 actions)" in result.stdout
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.zeros((3, 4, 84, 84), np.float32)})[0].shape == (3, 4)
    again = run_command(CONVERTER, "--model", str(breakout_agent), "--out", str(out))
    assert again.returncode == 2 and "--force" in again.stderr


# Bad inputs for the converter: each sets up (agent directory, repository) and returns
# the --model to give and the words the one error line must hold.


def missing_dir(model_dir: Path, repo: Path, agent: Path) -> tuple[Path, list[str]]:
    return model_dir, [str(model_dir), "does not exist"]


def missing_npz(model_dir: Path, repo: Path, agent: Path) -> tuple[Path, list[str]]:
    model_dir.mkdir()
    return model_dir, [str(model_dir / "model.npz"), "file not found"]


def corrupt_npz(model_dir: Path, repo: Path, agent: Path) -> tuple[Path, list[str]]:
    model_dir.mkdir()
    (model_dir / "model.npz").write_bytes(b"\x00" * 100)
    return model_dir, [str(model_dir / "model.npz"), "corrupt"]


def not_nature_dqn(model_dir: Path, repo: Path, agent: Path) -> tuple[Path, list[str]]:
    model_dir.mkdir()
    np.savez(model_dir / "model.npz", **{"0/0/W": np.zeros((16, 4, 8, 8), np.float32)})
    return model_dir, [str(model_dir / "model.npz"), "not a Nature DQN", "0/0/W"]


def unwritable_repository(model_dir: Path, repo: Path, agent: Path) -> tuple[Path, list[str]]:
    locked = repo / "atari"
    locked.mkdir()
    locked.chmod(0o500)
    if os.access(locked, os.W_OK):  # root ignores permissions: use a file where a directory must go
        locked.chmod(0o700)
        locked.rmdir()
        locked.write_text("not a directory")
    return agent, ["--repository", "cannot write"]


@pytest.mark.parametrize(
    "bad_input",
    [missing_dir, missing_npz, corrupt_npz, not_nature_dqn, unwritable_repository],
    ids=lambda case: case.__name__,
)
def test_bad_input_is_one_line_and_leaves_the_repository_untouched(
    bad_input, breakout_agent: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "keep.txt").write_text("a file the user had")
    model_dir, expect = bad_input(tmp_path / "agent", repo, breakout_agent)
    before = tree_digest(repo)
    result = run_command(CONVERTER, "--model", str(model_dir), "--repository", str(repo))
    one_error_line(result, *expect)
    assert tree_digest(repo) == before


def test_agent_saved_by_stock_chainerrl_converts(tmp_path: Path) -> None:
    """A directory written by ChainerRL's own DQN (the reproduction script's agent) works too."""
    stock_chainerrl_dqn(6).save(str(tmp_path / "best"))
    assert not (tmp_path / "best" / "agent_state.json").exists(), "a plain ChainerRL directory"
    result = convert(str(tmp_path / "best"), out=str(tmp_path / "model.onnx"), env_id="PongNoFrameskip-v4")
    assert result.n_actions == 6 and result.max_abs_diff <= 1e-5


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("../../escape", id="escape"),
        pytest.param('at"ari', id="quote"),
        pytest.param("..", id="dotdot"),
        pytest.param("a/b", id="slash"),
        pytest.param("", id="empty"),
    ],
)
def test_bad_model_name_is_one_line_and_writes_nothing(name: str, breakout_agent: Path, tmp_path: Path) -> None:
    repo = tmp_path / "work" / "repo"
    repo.mkdir(parents=True)
    (repo / "keep.txt").write_text("a file the user had")
    before = tree_digest(tmp_path)
    # Relative to the repository as the user would type it, from inside the tmp dir.
    result = run_command(
        CONVERTER, "--model", str(breakout_agent), "--repository", "work/repo", "--name", name, cwd=tmp_path
    )
    one_error_line(result, "--name")
    assert "usage:" not in result.stderr, result.stderr
    assert tree_digest(tmp_path) == before, "nothing written inside or outside the repository"


def test_library_refuses_bad_model_names_before_writing(tmp_path: Path) -> None:
    from atari_trtis_demo.core.model_config import render_config
    from atari_trtis_demo.core.model_repository import write_model_version

    for name in ("../escape", 'at"ari', "..", ".", "a/b", ""):
        with pytest.raises(UserError, match="--name"):
            render_config(name, 4)
        with pytest.raises(UserError, match="--name"):
            write_model_version(str(tmp_path / "repo"), name, b"onnx", "config")
        with pytest.raises(UserError, match="--name"):  # before the (missing) model is even looked at
            convert(str(tmp_path / "no-agent"), repository=str(tmp_path / "repo"), name=name)
    assert list(tmp_path.iterdir()) == []
    for name in ("atari", "breakout_v2", "pong-1.0", "A.b-c_d"):
        assert f'name: "{name}"' in render_config(name, 4)


# Each flag and the out-of-range values it must refuse.
CONVERT_OUT_OF_RANGE = {
    "--version": ["0", "-3", "two"],
    "--max-batch-size": ["0", "5000"],
    "--instance-count": ["0", "65"],
    "--gpu": ["-2"],
}


@pytest.mark.parametrize(
    ("flag", "value"), [(flag, value) for flag, values in CONVERT_OUT_OF_RANGE.items() for value in values]
)
def test_numeric_flag_out_of_range_is_one_line_before_any_work(flag: str, value: str, tmp_path: Path) -> None:
    # The agent directory does not exist: a range check that ran after conversion began
    # would report --model instead of the flag.
    args = ["--model", str(tmp_path / "agent"), "--repository", str(tmp_path / "repo"), f"{flag}={value}"]
    result = run_command(CONVERTER, *args)
    one_error_line(result, flag, value)
    assert "usage:" not in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_numeric_flags_at_their_bounds_are_accepted(tmp_path: Path) -> None:
    bounds = ["--version", "1", "--max-batch-size", "4096", "--instance-count", "64", "--gpu", "-1"]
    result = run_command(CONVERTER, "--model", str(tmp_path / "agent"), "--repository", str(tmp_path / "repo"), *bounds)
    assert result.returncode == 2 and "error: --model" in result.stderr, result.stderr  # past the parser


CONSOLE_SCRIPTS = ["atari-train", "atari-convert", "atari-serve", "atari-play", "atari-play-local"]


def test_console_scripts_are_installed_and_errors_are_one_line(tmp_path: Path) -> None:
    """``pip install -e .`` puts the five commands beside the interpreter; each says a bad input in one line."""
    bindir = Path(sys.executable).with_name("atari-convert").parent
    assert [name for name in CONSOLE_SCRIPTS if not (bindir / name).is_file()] == []
    result = subprocess.run(
        [str(bindir / "atari-convert"), "--model", str(tmp_path / "agent"), "--max-batch-size", "0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    one_error_line(result, "--max-batch-size", alone=True)
    missing = subprocess.run(
        [str(bindir / "atari-convert"), "--model", str(tmp_path / "agent")], capture_output=True, text=True, timeout=120
    )
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
        f"error: --model {tmp_path / 'agent'}: directory does not exist"
    ], missing.stderr
    assert list(tmp_path.iterdir()) == []


def test_atomic_file_write_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    from atari_trtis_demo.core import atomic

    target = tmp_path / "config.pbtxt"
    atomic.write_bytes(str(target), b"old")
    with pytest.raises(RuntimeError), atomic.replacing_file(str(target)) as tmp:
        Path(tmp).write_bytes(b"half of the new")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["config.pbtxt"]
    atomic.write_bytes(str(target), b"new")
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["config.pbtxt"]


def test_config_options_for_a_python_model_and_for_no_batching() -> None:
    """What tests and benchmarks need besides the converter's config: a python model, no dynamic batching."""
    from atari_trtis_demo.core.model_config import render_config

    def parse(text: str) -> model_config_pb2.ModelConfig:
        return text_format.Parse(text, model_config_pb2.ModelConfig())

    python = parse(render_config("slow", 4, backend="python", instance_kind="KIND_CPU", max_queue_delay_us=250))
    assert python.backend == "python" and python.platform == "" and python.default_model_filename == "model.py"
    assert python.dynamic_batching.max_queue_delay_microseconds == 250
    single = parse(render_config("single", 6, dynamic_batching=False))
    assert single.platform == "onnxruntime_onnx" and single.default_model_filename == "model.onnx"
    assert not single.HasField("dynamic_batching") and list(single.output[0].dims) == [6]
    with pytest.raises(UserError, match="backend"):
        render_config("atari", 4, backend="tensorflow")


def test_queue_delay_for_many_players_reaches_the_config(breakout_agent: Path, tmp_path: Path) -> None:
    repo = tmp_path / "trtismodel"
    result = run_command(CONVERTER, "--model", str(breakout_agent), "--repository", str(repo),
                         "--max-queue-delay-us", "3000")  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = text_format.Parse((repo / "atari" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.dynamic_batching.max_queue_delay_microseconds == 3000
    refused = run_command(CONVERTER, "--model", str(breakout_agent), "--repository", str(repo),
                          "--max-queue-delay-us", "-1")  # fmt: skip
    assert "--max-queue-delay-us" in one_error_line(refused)


def test_readmes_stage_2_command_leaves_the_tracked_repository_as_committed(tmp_path: Path) -> None:
    """README's ``converter.py --model results/<run>/best --repository trtismodel`` after its stage 1 (Breakout):
    the tracked config.pbtxt is byte for byte what the converter writes, and the model it adds is ignored by git."""
    from atari_trtis_demo.core.contract import DEFAULT_ENV_ID

    command = "python onnx_converter_src/converter.py --model results/<run>/best --repository trtismodel"
    assert command in (ROOT / "README.md").read_text()
    tracked = subprocess.run(["git", "ls-files", "trtismodel"], cwd=ROOT, capture_output=True, text=True, check=True)
    checkout = tmp_path / "checkout"
    for name in tracked.stdout.split():
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_bytes((ROOT / name).read_bytes())
    before = tree_digest(checkout / "trtismodel")
    make_agent(4, env_id=DEFAULT_ENV_ID).save(str(checkout / "results" / "run" / "best"))  # as stage 1 saves it
    result = run_command(CONVERTER, *command.replace("<run>", "run").split()[2:], cwd=checkout)
    assert result.returncode == 0, result.stderr[-3000:]
    after = tree_digest(checkout / "trtismodel")
    added = {path: digest for path, digest in after.items() if before.get(path) != digest}
    assert set(added) == {"atari/1", "atari/1/model.onnx"}, added  # config.pbtxt and README.md unchanged
    ignored = subprocess.run(["git", "check-ignore", "-q", "trtismodel/atari/1/model.onnx"], cwd=ROOT)
    assert ignored.returncode == 0, "git status stays clean: the version directory is ignored"
