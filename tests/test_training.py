"""The training stage: real (short) runs of train_dqn.py on Breakout, saves, resume, errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import chainer
import numpy as np
import pytest
from chainerrl import agents
from helpers import TRAIN, one_error_line, run_command, start_command, stock_chainerrl_dqn, tree_digest

from atari_trtis_demo.core.envs import make_env
from atari_trtis_demo.core.errors import UserError
from atari_trtis_demo.train.agent import load_agent, make_agent, read_agent_step

# A run short enough for a test: 300 agent steps, updates from step 200, two evaluations.
SHORT_RUN = [
    "--gpu", "-1", "--steps", "300", "--replay-start-size", "200", "--eval-interval", "150",
    "--eval-n-steps", "100", "--n-best-episodes", "1", "--checkpoint-freq", "100",
]  # fmt: skip


def only_run_dir(outdir: Path) -> Path:
    runs = [p for p in outdir.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def params_of(agent: agents.DQN) -> dict[str, np.ndarray]:
    return {name: np.array(p.array) for name, p in agent.model.namedparams()}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    outdir = tmp_path_factory.mktemp("results")
    result = run_command(TRAIN, *SHORT_RUN, "--outdir", str(outdir), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return only_run_dir(outdir)


def test_short_run_writes_chainerrl_layout(trained_run: Path) -> None:
    names = set(os.listdir(trained_run))
    assert {"args.txt", "command.txt", "scores.txt", "bestscores.json", "learning_curve.png", "best"} <= names
    assert {"300_finish", "200_checkpoint", "300_checkpoint"} <= names
    assert "100_checkpoint" not in names, "only the newest two checkpoints are kept"
    assert "environ.txt" not in names, "environment variables must not be dumped"
    assert not [n for n in names if ".tmp-" in n or ".old-" in n], "no leftovers of atomic saves"
    for agent_dir in ("best", "300_finish", "300_checkpoint"):
        assert {"model.npz", "target_model.npz", "optimizer.npz"} <= set(os.listdir(trained_run / agent_dir))
    rows = (trained_run / "scores.txt").read_text().splitlines()
    assert rows[0].split("\t")[:4] == ["steps", "episodes", "elapsed", "mean"]
    steps = [int(r.split("\t")[0]) for r in rows[1:]]
    assert len(steps) >= 2 and steps[-1] == 300 and steps[0] >= 150
    assert json.loads((trained_run / "args.txt").read_text())["steps"] == 300
    best = json.loads((trained_run / "bestscores.json").read_text())
    assert best["episodes"] == 1 and {"mean", "median", "stdev", "max", "min"} <= set(best)
    assert (trained_run / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert read_agent_step(str(trained_run / "300_finish")) == 300


def test_saved_agent_loads_back_and_acts(trained_run: Path) -> None:
    env = make_env("BreakoutNoFrameskip-v4", train=False)
    agent = make_agent(4)
    untrained = params_of(agent)
    load_agent(agent, str(trained_run / "best"), env_n_actions=4)
    loaded = params_of(agent)
    assert any(not np.array_equal(untrained[k], loaded[k]) for k in loaded)
    obs, _ = env.reset(seed=0)
    for _ in range(10):
        action = agent.act(obs)
        assert 0 <= action < 4
        obs, *_ = env.step(action)
    # Existing ChainerRL tools read the directory: a stock ChainerRL DQN loads it too.
    stock = stock_chainerrl_dqn(4, epsilon=0.0)
    stock.load(str(trained_run / "best"))
    for key, value in params_of(stock).items():
        assert np.array_equal(value, loaded[key])


def test_resume_continues_the_step_count_and_the_scores(trained_run: Path, tmp_path: Path) -> None:
    result = run_command(
        TRAIN, *SHORT_RUN, "--steps", "500", "--outdir", str(tmp_path), "--resume", str(trained_run), timeout=600
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "at step 300" in result.stderr
    run = only_run_dir(tmp_path)
    assert read_agent_step(str(run / "500_finish")) == 500
    assert not (run / "100_checkpoint").exists() and not (run / "300_checkpoint").exists()
    steps = [int(r.split("\t")[0]) for r in (run / "scores.txt").read_text().splitlines()[1:]]
    previous = [int(r.split("\t")[0]) for r in (trained_run / "scores.txt").read_text().splitlines()[1:]]
    assert steps[: len(previous)] == previous, "the resumed run keeps the earlier scores"
    assert len(steps) > len(previous) and steps[-1] > 300, "the resumed run evaluates after step 450"
    assert json.loads((run / "args.txt").read_text())["resume"] == str(trained_run)


class _FailAfter:
    """Makes chainer's save_npz fail on its n-th call, after writing half a file."""

    def __init__(self, real, n: int) -> None:
        self.real, self.n, self.calls = real, n, 0

    def __call__(self, file, obj, *args, **kwargs):
        self.calls += 1
        if self.calls == self.n:
            with open(file, "wb") as f:
                f.write(b"PK\x03\x04 half a zip")
            raise OSError(28, "No space left on device (injected)")
        return self.real(file, obj, *args, **kwargs)


@pytest.mark.parametrize("fail_on", [1, 2, 3])
def test_failed_save_leaves_the_previous_agent_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_on: int):
    agent = make_agent(4)
    target = tmp_path / "best"
    agent.save(str(target))
    before = params_of(agent)
    for param in agent.model.params():
        param.array += 1.0
    import chainerrl.agent

    monkeypatch.setattr(chainerrl.agent.serializers, "save_npz", _FailAfter(chainer.serializers.save_npz, fail_on))
    with pytest.raises(OSError, match="injected"):
        agent.save(str(target))
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["best"], "no temporary directory left behind"
    fresh = make_agent(4)
    load_agent(fresh, str(target))
    for key, value in params_of(fresh).items():
        assert np.array_equal(value, before[key])


SAVE_LOOP = """
import sys
from atari_trtis_demo.train.agent import make_agent
agent = make_agent(4)
print("ready", flush=True)
i = 0
while True:
    for p in agent.model.params():
        p.array[...] = i
    agent.save(sys.argv[1])
    i += 1
"""


def test_killed_save_leaves_a_loadable_agent(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint"
    rng = np.random.default_rng(0)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", SAVE_LOOP, str(target)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(1.0 + rng.random())  # several saves of ~20 MB each happen meanwhile
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        agent = make_agent(4)
        load_agent(agent, str(target))  # recovers a save killed between its renames
        values = {float(p.array.flat[0]) for p in agent.model.params()}
        assert len(values) == 1, "every array comes from the same save"


def logged_step(run: Path) -> int:
    """The last training step ChainerRL logged at an episode's end in ``run``/log.txt (0 before the first)."""
    log = run / "log.txt"
    steps = re.findall(r" step:(\d+) episode:", log.read_text()) if log.exists() else []
    return int(steps[-1]) if steps else 0


def interrupted(argv: list[str], past_step: int = 0, timeout: float = 300) -> tuple[subprocess.Popen, Path, str]:
    """train_dqn.py ``argv``, Ctrl-C'd once its run has logged a training step beyond ``past_step``:
    (the finished process, its run directory, its stderr)."""
    proc = start_command(TRAIN, *argv, stderr=subprocess.PIPE)
    said = []
    for line in proc.stderr:  # ends with the process: a failed start ends the loop too
        said.append(line)
        if line.startswith("Output files are saved in"):
            break
    assert said and said[-1].startswith("Output files are saved in"), "".join(said)[-3000:]
    run = Path(said[-1].split(" in ", 1)[1].strip())
    deadline = time.monotonic() + timeout
    while logged_step(run) <= past_step:
        assert proc.poll() is None and time.monotonic() < deadline, (proc.poll(), logged_step(run))
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    return proc, run, "".join(said) + err


def test_ctrl_c_saves_and_the_same_command_continues_the_run(tmp_path: Path) -> None:
    command = ["--gpu", "-1", "--steps", "100000", "--replay-start-size", "50", "--outdir", str(tmp_path)]
    proc, first_run, err = interrupted(command)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert only_run_dir(tmp_path) == first_run
    saved = [p for p in first_run.iterdir() if p.name.endswith("_except")]
    assert len(saved) == 1 and f"--resume {saved[0]}" in err and "run the same command again to continue" in err
    first_step = read_agent_step(str(saved[0]))
    assert first_step > 0
    load_agent(make_agent(4), str(saved[0]))
    first_files = tree_digest(first_run)

    # The very same command takes that run up, says so in one line, and Ctrl-C saves again further on.
    proc, second_run, err = interrupted(command, past_step=first_step)
    assert proc.returncode == 130, err
    said = [line for line in err.splitlines() if "interrupted run" in line]
    assert said == [
        f"Continuing the interrupted run {first_run} from {saved[0].name}/ at step {first_step:,}, as this same "
        "command was stopped there (another --outdir starts afresh); the replay buffer starts empty, and refills "
        "for 50 steps before updates continue"
    ], err
    assert "Resuming from" not in err and "Continuing in a new run directory" not in err, "one line, not three"
    assert second_run != first_run and tree_digest(first_run) == first_files, "the first run stays as it was"
    (again,) = [p for p in second_run.iterdir() if p.name.endswith("_except")]
    assert read_agent_step(str(again)) > first_step
    assert json.loads((second_run / "args.txt").read_text()) == json.loads((first_run / "args.txt").read_text())


def write_run(outdir: Path, name: str, args: dict, agents: dict[str, int], env_id: str = "BreakoutNoFrameskip-v4"):
    """A run directory as training leaves one: args.txt and agent directories (``{"1200_except": 1200}``), each
    with the agent_state.json that names its step and game (the weights are not needed to choose among them)."""
    run = outdir / name
    run.mkdir(parents=True)
    (run / "args.txt").write_text(json.dumps(args))
    for agent, step in agents.items():
        (run / agent).mkdir()
        (run / agent / "agent_state.json").write_text(json.dumps({"t": step, "n_actions": 4, "env_id": env_id}))
    return run


def test_the_same_command_takes_up_only_its_own_interrupted_unfinished_run(tmp_path: Path) -> None:
    from atari_trtis_demo.train.resume import interrupted_run
    from atari_trtis_demo.train.train_config import TrainOptions

    args = vars(TrainOptions(gpu=-1, outdir=str(tmp_path)))
    assert interrupted_run(args) is None, "nothing there"
    write_run(tmp_path, "20260101T000000.000000", args, {"1000_checkpoint": 1000, "1200_except": 1200})
    point = interrupted_run(args)
    assert point is not None and (point.agent_dir, point.step) == (
        str(tmp_path / "20260101T000000.000000" / "1200_except"),
        1200,
    )
    # A newer run of another game, or with any other flag, is another command's: the first is still taken up.
    pong = {**args, "env": "PongNoFrameskip-v4"}
    write_run(tmp_path, "20260102T000000.000000", pong, {"3000_except": 3000}, env_id="PongNoFrameskip-v4")
    write_run(tmp_path, "20260103T000000.000000", {**args, "seed": 1}, {"5000_except": 5000})
    assert interrupted_run(args).step == 1200 and interrupted_run(pong).step == 3000
    # The same command's newest run finished (resumed and ran to its end): nothing to take up.
    write_run(tmp_path, "20260104T000000.000000", args, {"1500_except": 1500, "50000000_finish": 50_000_000})
    assert interrupted_run(args) is None
    # Its newest run has no agent saved at Ctrl-C (killed, or running now): not taken up either.
    write_run(tmp_path, "20260105T000000.000000", args, {"2000_checkpoint": 2000})
    assert interrupted_run(args) is None


def test_resume_from_a_folder_of_runs_takes_the_most_steps_and_says_why(tmp_path: Path) -> None:
    from atari_trtis_demo.train.resume import resolve_resume
    from atari_trtis_demo.train.train_config import TrainOptions

    args = vars(TrainOptions())
    older = write_run(tmp_path, "20260101T000000.000000", args, {"5000_checkpoint": 5000, "5200_except": 5200})
    write_run(tmp_path, "20260102T000000.000000", args, {"1000_checkpoint": 1000})  # newer, fewer steps
    write_run(tmp_path, "20260103T000000.000000", args, {"9000_checkpoint": 9000}, env_id="PongNoFrameskip-v4")
    point = resolve_resume(str(tmp_path), "BreakoutNoFrameskip-v4")
    assert (point.agent_dir, point.step) == (str(older / "5200_except"), 5200)
    assert point.why == (
        f"--resume {tmp_path}: continuing from {older / '5200_except'} (step 5,200, the most steps of its 2 runs "
        "of BreakoutNoFrameskip-v4 with a checkpoint)"
    )
    assert resolve_resume(str(tmp_path), "PongNoFrameskip-v4").step == 9000
    assert resolve_resume(str(older), "BreakoutNoFrameskip-v4").step == 5200, "a run directory: its newest"
    assert resolve_resume(str(older / "5000_checkpoint")).why is None, "an agent directory: itself"


def _write_agent(path: Path, n_actions: int) -> Path:
    make_agent(n_actions).save(str(path))
    return path


# Bad inputs for train_dqn.py: each prepares what it needs under tmp_path and returns the
# command line (given a short CPU run writing to tmp_path/out) and the words of its one error line.


def unknown_env(tmp_path: Path, run: list[str]) -> tuple[list[str], list[str]]:
    return [*run, "--env", "Breakout-v9"], ["Breakout-v9", "did you mean", "Breakout-v5"]


def missing_load(tmp_path: Path, run: list[str]) -> tuple[list[str], list[str]]:
    return [*run, "--load", str(tmp_path / "nope")], [str(tmp_path / "nope"), "does not exist"]


def corrupt_model(tmp_path: Path, run: list[str]) -> tuple[list[str], list[str]]:
    agent_dir = _write_agent(tmp_path / "agent", 4)
    (agent_dir / "model.npz").write_bytes(b"not a zip at all")
    return [*run, "--load", str(agent_dir)], [str(agent_dir / "model.npz"), "corrupt"]


def wrong_action_count(tmp_path: Path, run: list[str]) -> tuple[list[str], list[str]]:
    agent_dir = _write_agent(tmp_path / "pong_agent", 6)
    return [*run, "--load", str(agent_dir)], [str(agent_dir / "model.npz"), "6 actions", "4"]


def not_nature_dqn(tmp_path: Path, run: list[str]) -> tuple[list[str], list[str]]:
    (tmp_path / "other").mkdir()
    np.savez(tmp_path / "other" / "model.npz", **{"0/W": np.zeros((3, 3))})
    return [*run, "--load", str(tmp_path / "other")], ["not a Nature DQN", "model.npz"]


def gpu_without_cuda(tmp_path: Path, run: list[str]) -> tuple[list[str], list[str]]:
    return ["--gpu", "0", "--steps", "10"], ["--gpu 0", "CUDA is not available", "--gpu -1"]


def resume_empty(tmp_path: Path, run: list[str]) -> tuple[list[str], list[str]]:
    (tmp_path / "empty_run").mkdir()
    return [*run, "--resume", str(tmp_path / "empty_run")], ["--resume", "no checkpoint"]


@pytest.mark.parametrize(
    "bad_input",
    [unknown_env, missing_load, corrupt_model, wrong_action_count, not_nature_dqn, gpu_without_cuda, resume_empty],
    ids=lambda case: case.__name__,
)
def test_bad_input_is_one_clear_line(bad_input, tmp_path: Path) -> None:
    args, expect = bad_input(tmp_path, ["--gpu", "-1", "--steps", "10", "--outdir", str(tmp_path / "out")])
    one_error_line(run_command(TRAIN, *args, timeout=180), *expect)
    assert not (tmp_path / "out").exists(), "a refused run writes nothing"


# Each flag and the out-of-range values it must refuse.
TRAIN_OUT_OF_RANGE = {
    "--seed": ["-1", str(2**31)],
    "--gpu": ["-2"],
    "--steps": ["0", "1e6"],
    "--replay-start-size": ["31"],
    "--eval-n-steps": ["0"],
    "--eval-interval": ["-5"],
    "--n-best-episodes": ["0"],
    "--replay-capacity": ["0"],
    "--checkpoint-freq": ["-1"],
    "--final-exploration-steps": ["0"],
    "--logging-level": ["99", "-1"],
}


@pytest.mark.parametrize(
    ("flag", "value"), [(flag, value) for flag, values in TRAIN_OUT_OF_RANGE.items() for value in values]
)
def test_out_of_range_number_is_one_line_before_chainer_is_imported(flag: str, value: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    # A run that would finish at once if the flag were wrongly accepted.
    args = ["--gpu", "-1", "--steps", "10", "--replay-start-size", "32", "--eval-interval", "10", "--eval-n-steps", "5",
            "--n-best-episodes", "1", "--checkpoint-freq", "0", "--outdir", str(out), f"{flag}={value}"]  # fmt: skip
    result = run_command(TRAIN, *args, timeout=300, python_flags=["-X", "importtime"])
    one_error_line(result, flag, value)
    assert "usage:" not in result.stderr, result.stderr[-3000:]
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")
    }
    assert imported and "chainer" not in imported, "refused before Chainer is imported"
    assert not out.exists(), "a refused run writes nothing"


def test_resume_removes_unfinished_saves_of_a_killed_run(trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    agents_before = {
        name: tree_digest(run / name) for name in ("best", "200_checkpoint", "300_checkpoint", "300_finish")
    }
    an_hour_ago = time.time() - 3600

    def unfinished_save(name: str, file: str, *, age: float | None = an_hour_ago) -> Path:
        path = run / name
        path.mkdir()
        (path / file).write_bytes(b"PK\x03\x04" + bytes(2_000_000))  # half of a ~20 MB save
        if age is not None:
            for p in (path / file, path):
                os.utime(p, (age, age))
        return path

    killed = [unfinished_save("300_checkpoint.tmp-abcd1234", "model.npz"),
              unfinished_save("best.tmp-0123beef", "optimizer.npz")]  # fmt: skip
    in_progress = unfinished_save("400_checkpoint.tmp-feedf00d", "model.npz", age=None)  # another process saving now
    not_a_save = unfinished_save("notes.tmp-12345678", "notes.txt")
    # A save killed between its two renames: the .old- directory is the only copy of 100_checkpoint.
    only_copy = run / "100_checkpoint.old-87654321"
    shutil.copytree(run / "200_checkpoint", only_copy)

    result = run_command(
        TRAIN, *SHORT_RUN, "--steps", "320", "--outdir", str(tmp_path / "out"), "--resume", str(run), timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    removed = [line for line in result.stderr.splitlines() if line.startswith("removed ")]
    assert removed == [f"removed 2 unfinished saves (4 MB) left by a killed run in {run}"], result.stderr[-3000:]
    assert not any(p.exists() for p in killed)
    assert in_progress.exists() and not_a_save.exists() and only_copy.exists()
    assert {name: tree_digest(run / name) for name in agents_before} == agents_before, "real agents untouched"
    for name, step in (("300_checkpoint", 300), ("best", None), ("100_checkpoint", 200)):
        agent = make_agent(4)
        load_agent(agent, str(run / name), env_n_actions=4)  # 100_checkpoint: recovered from its .old- copy
        assert step is None or agent.t == step
    assert read_agent_step(str(only_run_dir(tmp_path / "out") / "320_finish")) == 320


def test_load_pretrained_uses_chainerrl_model_zoo_layout(tmp_path: Path) -> None:
    # A model zoo laid out as ChainerRL's: <root>/DQN/<Game>/<best|final>.zip holding best/.
    agent_dir = _write_agent(tmp_path / "best", 4)
    zoo = tmp_path / "zoo" / "DQN" / "Breakout"
    zoo.mkdir(parents=True)
    with zipfile.ZipFile(zoo / "best.zip", "w") as archive:
        for name in os.listdir(agent_dir):
            archive.write(agent_dir / name, f"best/{name}")
    env = {"ATARI_DEMO_MODEL_ZOO_URL": f"file://{tmp_path / 'zoo'}/", "CHAINER_DATASET_ROOT": str(tmp_path / "cache")}
    common = ["--gpu", "-1", "--load-pretrained", "--demo", "--eval-n-steps", "60"]
    result = run_command(TRAIN, *common, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "n_episodes:" in result.stdout
    assert (tmp_path / "cache" / "pfnet" / "chainerrl" / "models" / "DQN" / "Breakout" / "best" / "model.npz").exists()
    missing = run_command(TRAIN, *common, "--pretrained-type", "final", env=env, timeout=300)
    assert missing.returncode == 2
    assert "error: --load-pretrained: cannot download" in missing.stderr and "final.zip" in missing.stderr


def test_load_rejects_a_directory_saved_mid_way(tmp_path: Path) -> None:
    agent_dir = _write_agent(tmp_path / "agent", 4)
    (agent_dir / "model.npz").unlink()
    with pytest.raises(UserError, match="model.npz: file not found"):
        load_agent(make_agent(4), str(agent_dir))


def test_progress_line_shows_steps_rate_eta_epsilon_and_scores() -> None:
    import io

    from atari_trtis_demo.train.training import ProgressLine, format_duration

    class Agent:
        class explorer:  # noqa: N801 - shaped like ChainerRL's LinearDecayEpsilonGreedy
            epsilon = 0.55

    class Env:
        recent_scores = [2.0, 4.0]

    stream = io.StringIO()
    progress = ProgressLine(total_steps=1000, step_offset=0, stream=stream, log_interval=0.0)
    progress.window = [(progress.start - 10.0, 0)]  # 10 s ago at step 0
    progress(Env(), Agent(), 500)
    line = stream.getvalue()
    assert line.endswith("\n") and "\r" not in line, "no carriage returns in a log file"
    assert "step 500/1,000 (50.0%)" in line
    assert "eps 0.550" in line and "game score 3.0 (last 2)" in line
    rate = float(line.split(" steps/s")[0].split("| ")[-1])
    assert 45 < rate <= 50  # 500 steps in a little over 10 s
    assert "ETA 10s" in line or "ETA 9s" in line
    assert [format_duration(s) for s in (12, 249, 7500, 3 * 86400 + 4 * 3600)] == ["12s", "4m 09s", "2h 05m", "3d 04h"]


def test_progress_eta_waits_for_the_updates() -> None:
    """While the replay buffer fills (fast, no updates) the line says when updates start, not a false ETA."""
    import io

    from atari_trtis_demo.train.training import ProgressLine

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


def test_a_cpu_eta_of_days_is_followed_by_one_line_naming_the_gpu_and_the_published_agent() -> None:
    """The README's stage-1 command on the CPU: 5x10^7 steps at ~25 steps/s, weeks. Once, after the first ETA."""
    import io

    from atari_trtis_demo.train.train_cli import build_parser, cpu_hint
    from atari_trtis_demo.train.train_config import TrainOptions
    from atari_trtis_demo.train.training import ProgressLine

    literal = TrainOptions(**vars(build_parser().parse_args(["--env", "BreakoutNoFrameskip-v4", "--gpu", "-1"])))
    hint = cpu_hint(literal.env)
    assert "--gpu 0" in hint and "python onnx_converter_src/converter.py --pretrained BreakoutNoFrameskip-v4" in hint

    class Agent:  # no replay buffer: updating, as after the fill
        pass

    for tty, total, shown in ((False, literal.steps, True), (True, literal.steps, True), (False, 3000, False)):
        stream = io.StringIO()
        stream.isatty = lambda tty=tty: tty  # a terminal rewrites the line in place; the hint gets its own
        progress = ProgressLine(total_steps=total, step_offset=0, stream=stream, interval=0.0, log_interval=0.0,
                                hint=hint)  # fmt: skip
        for step in (500, 1000):
            progress.window = [(progress.start - step / 25, 0)]  # 25 steps/s
            progress(None, Agent(), step)
        lines = [line for line in stream.getvalue().replace("\r", "\n").splitlines() if line]
        assert [line for line in lines if line == hint] == ([hint] if shown else []), lines
        if shown:
            assert "ETA 23d" in lines[lines.index(hint) - 1] and lines[-1].startswith("step 1,000/"), lines


def test_each_evaluation_says_what_became_of_best() -> None:
    from atari_trtis_demo.train.training import evaluation_line

    assert (
        evaluation_line(1500, 0.0, None, None)
        == "evaluation at step 1,500: mean score 0.00, the run's first, saved to best/"
    )
    assert evaluation_line(3000, 2.5, 1500, 0.0) == (
        "evaluation at step 3,000: mean score 2.50, better than the 0.00 at step 1,500: saved to best/"
    )
    assert (
        evaluation_line(4500, 1.0, 3000, 2.5)
        == "evaluation at step 4,500: mean score 1.00; best/ keeps the 2.50 of step 3,000"
    )
