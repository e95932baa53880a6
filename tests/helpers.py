"""Small helpers shared by test modules: free ports, the project's commands, their one-line errors."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from atari_trtis_demo.kserve import kserve_v2_pb2 as pb
from atari_trtis_demo.kserve.grpc_service_pb2_grpc import GRPCInferenceServiceServicer

ROOT = Path(__file__).resolve().parents[1]
# The project's commands, each named once: scripts run by this interpreter, or a module run with -m.
TRAIN = ROOT / "train_src" / "train_dqn.py"
CONVERTER = ROOT / "onnx_converter_src" / "converter.py"
REMOTE = ROOT / "src" / "app.py"
STANDALONE = ROOT / "standalone_src" / "app.py"
SERVE = "atari_trtis_demo.serve"
# The models of the session's ``repository`` (conftest.py) with their action counts: Breakout as 'atari', Pong.
SERVED = {"atari": 4, "pong": 6}


# An option line of argparse's help: two spaces, the flags, then (on the same line or the next, indented) the help.
OPTION = re.compile(r"^  (-\S.*?)(?:\s{2,}(\S.*))?$")


def option_helps(help_text: str) -> dict[str, str]:
    """Each option of a ``--help`` output with its whole help text (continuation lines joined)."""
    helps: dict[str, str] = {}
    current = None
    for line in help_text.split("options:", 1)[1].splitlines():
        match = OPTION.match(line)
        if match:
            current = match.group(1).split()[0].rstrip(",")
            helps[current] = match.group(2) or ""
        elif current and line.startswith("    ") and line.strip():
            helps[current] = (helps[current] + " " + line.strip()).strip()
    return helps


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 right now."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def command(target: Path | str, *args: str, python_flags: Sequence[str] = ()) -> list[str]:
    """The argv running ``target`` with this interpreter: a script path, or a module name (``-m``)."""
    run = [str(target)] if isinstance(target, Path) else ["-m", target]
    return [sys.executable, *python_flags, *run, *args]


def command_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment, headless for pygame (no window opens), plus ``extra``."""
    return {**os.environ, "SDL_VIDEODRIVER": "dummy", **(extra or {})}


def run_command(
    target: Path | str,
    *args: str,
    timeout: float = 300,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
    python_flags: Sequence[str] = (),
) -> subprocess.CompletedProcess:
    """Run one of the project's commands to its end, output captured as text."""
    return subprocess.run(
        command(target, *args, python_flags=python_flags),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=command_env(env),
        cwd=cwd,
    )


def ctrl_c_as_in_a_terminal() -> None:
    """In a started command, before it runs: SIGINT does what Ctrl-C does in a terminal.

    A test run started in the background by a shell without job control (``pytest ... &``) ignores
    SIGINT, its children inherit that, and Python keeps an ignored SIGINT ignored: a test's Ctrl-C
    would then go unheard.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_command(
    target: Path | str, *args: str, env: dict[str, str] | None = None, **popen_kwargs: Any
) -> subprocess.Popen:
    """Start one of the project's commands (text pipes as given in ``popen_kwargs``), headless, from ROOT,
    with ``env`` added to this environment."""
    return subprocess.Popen(
        command(target, *args), text=True, env=command_env(env), cwd=ROOT, preexec_fn=ctrl_c_as_in_a_terminal,
        **popen_kwargs,
    )  # fmt: skip


def run_standalone(agent: Path | str, *flags: str, **kwargs: Any) -> subprocess.CompletedProcess:
    """``standalone_src/app.py --modelpath agent --headless`` and ``flags``, run to its end (``kwargs``: as for
    :func:`run_command`)."""
    return run_command(STANDALONE, "--modelpath", str(agent), "--headless", *flags, **kwargs)


@dataclass
class ServeProcess:
    """``python -m atari_trtis_demo.serve`` running in the background, read up to its 'Triton log:' line."""

    proc: subprocess.Popen
    grpc_port: int
    http_port: int
    metrics_port: int
    lines: list[str]  # its stdout so far: the 'ready' lines, the admin key's file, the log's
    workdir: str  # its temporary directory, where tritonserver and the twins run from


def start_serve(
    repository: Path, *flags: str, stderr: Any = subprocess.PIPE, env: dict[str, str] | None = None
) -> ServeProcess:
    """The serve command on free ports, serving ``repository``, ``flags`` added; ``stderr``: a pipe or an open
    file; ``env``: added to this environment."""
    http, grpc_port, metrics = free_ports(3)
    proc = start_command(
        SERVE, "--model-repository", str(repository),
        "--http-port", str(http), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics), *flags,
        stdout=subprocess.PIPE, stderr=stderr, env=env,
    )  # fmt: skip
    lines = []
    for line in proc.stdout:  # ends with serve: a failed start ends the loop too
        lines.append(line)
        if line.startswith("Triton log:"):
            workdir = str(Path(line.split()[2].rstrip(";")).parent)
            return ServeProcess(proc, grpc_port, http, metrics, lines, workdir)
    proc.wait(timeout=60)
    errors = proc.stderr.read() if stderr is subprocess.PIPE else ""
    raise AssertionError(f"serve did not start (exit {proc.returncode}): {lines} {errors[-2000:]}")


def answers(server: Any, model: str) -> float:
    """The inference requests for ``model`` that ``server`` (a serve command's or ``serving``'s) has answered so
    far, by Triton's own counter (its metrics endpoint, waited for: Triton opens it after its other ports)."""
    from triton_stats import metrics_url, wait_for_metrics

    url = metrics_url(getattr(server, "address", "127.0.0.1"), server.metrics_port)
    return wait_for_metrics(url, model)["nv_inference_request_success"]


def wait_for_answers(
    server: Any, model: str, n: float, timeout: float = 120, player: Player | subprocess.Popen | None = None
) -> None:
    """Until ``server`` has answered ``n`` inference requests for ``model`` in all (:func:`answers`): play is
    under way against it. ``player``: the player that should be asking, whose end fails the wait at once."""
    deadline = time.monotonic() + timeout
    while (answered := answers(server, model)) < n:
        if player is not None:
            proc = player.proc if isinstance(player, Player) else player
            if proc.poll() is not None:
                output = player.finish() if isinstance(player, Player) else proc.communicate(timeout=60)
                raise AssertionError(f"the player ended after {answered:g} answers of {n:g}: {output}")
        assert time.monotonic() < deadline, f"{answered:g} answers of {n:g} within {timeout} s"
        time.sleep(0.1)


def one_error_line(result: subprocess.CompletedProcess, *words: str, code: int = 2, alone: bool = False) -> str:
    """The command failed with ``code`` and said so in exactly one ``error:`` line holding ``words``; no Traceback.

    ``alone``: that line is all of stderr. Returns the line.
    """
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr[-3000:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    line = errors[0]
    if alone:
        assert result.stderr.strip().splitlines() == [line] and line.startswith("error: "), result.stderr
    for word in words:
        assert word in line, (word, line)
    return line


def run_python_without(
    code: str, modules: Sequence[str] = ("chainer", "chainerrl"), timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where importing any of ``modules`` fails, as in a client-only install."""
    blocked = f"import sys\nfor name in {tuple(modules)!r}: sys.modules[name] = None\n"
    return subprocess.run(
        [sys.executable, "-c", blocked + code], capture_output=True, text=True, timeout=timeout, env=command_env()
    )


def assert_runs_without_chainer(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``code`` runs to a clean exit with Chainer and ChainerRL unimportable; returns the finished process."""
    result = run_python_without(code, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def tree_digest(path: Path) -> dict[str, str]:
    """Every file and directory under ``path``, files with their hash: to prove a failed run changed nothing."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(path.rglob("*"))
    }


@contextlib.contextmanager
def serving_on_free_ports(repository: Path, grpc_port: int | None = None, **kwargs: Any) -> Iterator[Any]:
    """``serve.serving`` on free ports, its metrics endpoint up (Triton opens it a moment after it is ready,
    and tests read their counts there); ``grpc_port`` fixed when given; ``kwargs`` as for
    ``serve.start_server`` (``access``, ``tls``, ``no_http``...)."""
    from triton_stats import metrics_url, wait_for_metrics

    from atari_trtis_demo.serving.serve import serving

    http, grpc_, metrics = free_ports(3)
    with serving(repository, http_port=http, grpc_port=grpc_port or grpc_, metrics_port=metrics, **kwargs) as running:
        if running.serves_http:
            wait_for_metrics(metrics_url(running.address, running.metrics_port))
        yield running


def tritonserver_pid(workdir: str) -> int:
    """The tritonserver running from ``workdir`` (serve's workdir)."""
    from atari_trtis_demo.serving.triton_workdir import processes_using

    return next(
        pid for pid in processes_using(workdir) if Path(f"/proc/{pid}/comm").read_text().strip() == "tritonserver"
    )


def run_python_stdlib_only(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter that can import the standard library and this checkout, nothing else.

    ``-S`` skips ``site``: no site-packages (not the venv's, not the base interpreter's) and no
    ``.pth`` files, so any third-party import fails as it would in a bare Python. PYTHONPATH names
    this checkout alone, so the package under test is ROOT's, not an installed copy.
    """
    return subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**command_env(), "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )


def stock_chainerrl_dqn(n_actions: int, epsilon: float = 0.1):
    """A DQN built with ChainerRL's own classes around the project's Nature network, as the 2019 scripts did.

    Its ``save`` writes a plain ChainerRL agent directory (no agent_state.json): what the
    reproduction script and the model zoo produce. Chainer is imported here, not at module
    level, so that helpers stays importable in tests that run without it.
    """
    import chainer
    from chainerrl import agents, explorers, replay_buffer

    from atari_trtis_demo.train.agent import make_q_function

    q_function = make_q_function(n_actions)
    optimizer = chainer.optimizers.RMSpropGraves(lr=2.5e-4, alpha=0.95, momentum=0.0, eps=1e-2)
    optimizer.setup(q_function)
    explorer = explorers.ConstantEpsilonGreedy(epsilon, lambda: 0)
    return agents.DQN(q_function, optimizer, replay_buffer.ReplayBuffer(100), 0.99, explorer, replay_start_size=32)


class FakeAtariModel(GRPCInferenceServiceServicer):
    """A KServe v2 server whose model 'atari' looks right: live, ready, [-1,4,84,84] FP32 in and
    [-1,4] FP32 out. Subclasses answer ModelInfer (lie, hang, refuse); ``check_call`` runs first on
    every call but health (a key check, a count)."""

    n_actions = 4

    def check_call(self, context) -> None:
        pass

    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)

    def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=request.name == "atari")

    def ModelMetadata(self, request, context):
        self.check_call(context)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name="atari",
            inputs=[tensor(name="input", datatype="FP32", shape=[-1, 4, 84, 84])],
            outputs=[tensor(name="action", datatype="FP32", shape=[-1, self.n_actions])],
        )


class Squatter(FakeAtariModel):
    """A local user's KServe v2 server on [::1] at serve's port: it counts every call and keeps the keys sent."""

    def __init__(self) -> None:
        self.calls = 0
        self.keys: list[str] = []

    def check_call(self, context) -> None:
        self.calls += 1
        self.keys += [value for name, value in context.invocation_metadata() if "key" in name]

    def ServerLive(self, request, context):
        self.check_call(context)
        return super().ServerLive(request, context)

    def ModelInfer(self, request, context):
        self.check_call(context)
        response = pb.ModelInferResponse(model_name="atari", id=request.id)
        response.outputs.add(name="action", datatype="FP32", shape=[1, 4])
        response.raw_output_contents.append(np.zeros((1, 4), "<f4").tobytes())
        return response


class Player:
    """``src/app.py`` running headless in the background, its console lines collected as they come."""

    def __init__(self, *args: str) -> None:
        self.proc = start_command(REMOTE, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self._reader.start()

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None or self._reader.is_alive(), f"ended before '{text}': {self.finish()}"
            assert time.monotonic() < deadline, f"no '{text}' within {timeout} s: {self.lines}"
            time.sleep(0.1)

    def stop(self) -> subprocess.CompletedProcess:
        """Ctrl-C, as a user ends play: the statistics so far, exit code 0."""
        self.proc.send_signal(signal.SIGINT)
        return self.finish()

    def finish(self, timeout: float = 120) -> subprocess.CompletedProcess:
        err = self.proc.stderr.read()
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, "".join(self.lines), err)
