"""The server's CPU per request at batch 1 (and per stack at batch 32) against the bare onnxruntime forward.

    .venv/bin/python bench/bench_twin.py [--requests 500] [--rounds 6] [--old 41fab34] [--port 19100]
        [--flags="--backend-config=python,shm-default-byte-size=33554432"] [--env NAME=VALUE]

One run, one tritonserver prepared as ``serve`` prepares it (python-backend twins of a
freshly converted Pong Nature DQN, the converter's config), every side a model of its own
with its own stub process; each round measures every side in turn (the order reversed
every other round), and the medians over rounds are reported:

- ``bare``: onnxruntime in this process with the twin's session settings
  (``triton_twin.ORT_SETTINGS``), CPU per call in a hot loop, batch 1 and batch 32; and the
  batch-1 forward right after reading 16 MB of other memory (its weights out of the caches,
  as in a server that does other work between two requests), for reference;
- ``twin``: this tree's twin (``triton_twin_model.py``);
- ``old``: the twin of ``--old`` (its ``triton_twin_model.py``, read with ``git show``), same config;
- ``twin_delay0`` and ``twin_nobatch``: this twin with ``max_queue_delay_microseconds: 0``,
  and without dynamic batching: what Triton's batcher costs at batch 1;
- ``floor``: a python-backend model that answers zeros without running anything: what
  tritonserver and the python backend cost per request whatever the model does;
- ``twin_flags``, with ``--flags`` or ``--env``: this twin in a second tritonserver started
  with serve's command line plus those Triton flags (or environment variables), for trying
  a server setting side by side (docs/benchmarks.md lists those tried).

Server CPU is that tritonserver's (all its threads) plus the side's own stub process, read
from ``/proc/<pid>/task/*/schedstat`` before and after ``--requests`` sync requests of one
frame stack (and ``--requests / 8`` of 32 stacks), divided by the requests (stacks). The
client round trip is the mean of this process's sync calls; Triton's breakdown (queue,
input, infer, output) comes from its metrics endpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from triton_stats import ServerBreakdown, delta, metrics_url, read_metrics, wait_for_metrics

from atari_trtis_demo.client.errors import ModelNotReady, ServerUnavailable
from atari_trtis_demo.client.inference_client import InferenceClient
from atari_trtis_demo.convert.onnx_export import convert
from atari_trtis_demo.core.model_repository import read_repository
from atari_trtis_demo.serving import triton_twin
from atari_trtis_demo.serving.serve import serving
from atari_trtis_demo.serving.triton_process import TritonServer
from atari_trtis_demo.train.agent import make_agent

ROOT = Path(__file__).resolve().parents[1]
GAME, N_ACTIONS = "PongNoFrameskip-v4", 6
# The floor: a python-backend model that checks nothing and runs nothing.
FLOOR_MODEL = """
import os
import sys

for path in reversed(os.environ.get("ATARI_TRTIS_SITE_PACKAGES", "").split(os.pathsep)):  # as the twin does
    if path and path not in sys.path:
        sys.path.insert(0, path)

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.answers = {n: [pb_utils.Tensor("action", np.zeros((n, 6), np.float32))] for n in (1, 32)}

    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                output_tensors=self.answers[pb_utils.get_input_tensor_by_name(request, "input").shape()[0]]
            )
            for request in requests
        ]
"""


def process_cpu(pid: int) -> float:
    """CPU seconds of every thread of one process, in nanoseconds' precision (0 once it is gone)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for task in tasks:
        try:
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9


def stub_pid(server: TritonServer, model: str) -> int:
    """The python-backend stub process that runs ``model`` (its model.py path names the model)."""
    marker = f"/{model}/1/".encode()
    for entry in os.listdir("/proc"):
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(fields[2]) == server.process.pid and len(args) > 1 and marker in args[1]:
            return int(entry)
    raise SystemExit(f"no stub process found for model {model}")


def build_repository(tmp: Path, old: str) -> tuple[Path, Path]:
    """The twin repository serve would make, with each side as a model of its own, and the backend folder."""
    make_agent(N_ACTIONS).save(str(tmp / "agent"))
    convert(str(tmp / "agent"), repository=str(tmp / "onnx"), name="twin", instance_kind="KIND_CPU", env_id=GAME)
    repo = triton_twin.prepare_twin_repository(read_repository(tmp / "onnx"), tmp)
    backends = triton_twin.prepare_python_backend(tmp / "python")
    old_source = subprocess.run(
        ["git", "show", f"{old}:atari_trtis_demo/serving/triton_twin_model.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    config = (repo / "twin" / "config.pbtxt").read_text()
    delay = re.compile(r"max_queue_delay_microseconds: \d+")
    sides = {
        "old": (old_source, config),
        "twin_delay0": (None, delay.sub("max_queue_delay_microseconds: 0", config)),
        "twin_nobatch": (None, config[: config.index("dynamic_batching {")]),
        "floor": (FLOOR_MODEL, config),
    }
    for name, (source, text) in sides.items():
        shutil.copytree(repo / "twin", repo / name, symlinks=True)
        (repo / name / "config.pbtxt").write_text(text.replace('name: "twin"', f'name: "{name}"', 1))
        if source is not None:
            (repo / name / "1" / triton_twin.TWIN_FILENAME).write_text(source)
    flagged = tmp / "flagged"
    flagged.mkdir()
    shutil.copytree(repo / "twin", flagged / "twin_flags", symlinks=True)
    (flagged / "twin_flags" / "config.pbtxt").write_text(config.replace('name: "twin"', 'name: "twin_flags"', 1))
    return repo, backends


@contextlib.contextmanager
def flagged_server(like: TritonServer, repo: Path, port: int, flags: list[str], env: list[str]) -> Iterator[Any]:
    """A second tritonserver: ``like``'s command line on ``repo`` and ``port`` (.. + 2), plus ``flags`` and ``env``."""
    replaced = {"--model-repository": repo, "--grpc-port": port, "--http-port": port + 1, "--metrics-port": port + 2}
    command = [
        f"{a.split('=')[0]}={replaced[a.split('=')[0]]}" if a.split("=")[0] in replaced else a for a in like.command
    ]
    environment = {**triton_twin.server_environment(), **dict(item.split("=", 1) for item in env)}
    with (repo.parent / "flagged.log").open("w") as log:
        process = subprocess.Popen(
            command + flags, stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                InferenceClient("127.0.0.1", port, "twin_flags", timeout=2).close()
                break
            except (ServerUnavailable, ModelNotReady):
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = (repo.parent / "flagged.log").read_text(errors="replace")[-2000:]
                    raise SystemExit(f"tritonserver with {flags} {env} did not get ready:\n{tail}") from None
                time.sleep(0.5)
        yield SimpleNamespace(process=process, address=like.address, grpc_port=port, metrics_port=port + 2)
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # Triton unloads its models: the stubs remove their shared memory
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def bare_forward(onnx_file: Path) -> Callable[[np.ndarray, int, bool], float]:
    """CPU seconds per onnxruntime call on ``frames``, the twin's session settings, in this process."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(triton_twin.ORT_SETTINGS["ort_intra_op_threads"])
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    for key in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
        options.add_session_config_entry(key, triton_twin.ORT_SETTINGS["ort_allow_spinning"])
    session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    other_memory = np.ones(4 << 20, np.float32)  # 16 MB

    def measure(frames: np.ndarray, calls: int, cold: bool) -> float:
        for _ in range(10):
            session.run(None, {"input": frames})
        spent = 0.0
        for _ in range(calls):
            if cold:
                other_memory.sum()
            start = time.thread_time()
            session.run(None, {"input": frames})
            spent += time.thread_time() - start
        return spent / calls

    return measure


def infer(client: InferenceClient, frames: np.ndarray, dropped: list[int]) -> None:
    """One sync request; sent again (and counted in ``dropped``) when a connection's closing lost it."""
    try:
        client.infer(frames)
    except ServerUnavailable:  # serve closes every connection after about a second (docs/serving.md)
        dropped[0] += 1
        client.infer(frames)


def serve_side(server: TritonServer, client: InferenceClient, model: str, frames: np.ndarray, calls: int) -> dict:
    """Server CPU per frame stack, client round trip and Triton's breakdown over ``calls`` sync requests."""
    url = metrics_url(server.address, server.metrics_port)
    pids = [server.process.pid, stub_pid(server, model)]
    dropped = [0]
    for _ in range(10):
        infer(client, frames, dropped)
    before, cpu, times = read_metrics(url, model), sum(map(process_cpu, pids)), []
    for _ in range(calls):
        start = time.perf_counter()
        infer(client, frames, dropped)
        times.append(time.perf_counter() - start)
    cpu = sum(map(process_cpu, pids)) - cpu
    breakdown = ServerBreakdown.of(delta(before, read_metrics(url, model)))
    return {
        "cpu": cpu / (calls * len(frames)),
        "rtt": float(np.mean(times)),
        "breakdown": breakdown,
        "dropped": dropped[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500, help="batch-1 requests per side and round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--old", default="41fab34", help="git revision whose twin is the 'old' side")
    parser.add_argument("--port", type=int, default=19100, help="gRPC port (HTTP and metrics use the next two)")
    parser.add_argument(
        "--flags",
        default="",
        help='Triton flags of a second server (side twin_flags), one string: --flags="--a=1 --b=2"',
    )
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for that second server's environment")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    batches = {1: rng.random((1, 4, 84, 84), dtype=np.float32), 32: rng.random((32, 4, 84, 84), dtype=np.float32)}
    sides = ["twin", "old", "twin_delay0", "twin_nobatch", "floor"] + ["twin_flags"] * bool(args.flags or args.env)
    results: dict[tuple[str, int], list[dict]] = {(side, b): [] for side in sides for b in batches}
    bare: dict[str, list[float]] = {"1": [], "32": [], "1 cold": []}
    with tempfile.TemporaryDirectory() as tmp_name:
        repo, backends = build_repository(Path(tmp_name), args.old)
        forward = bare_forward(Path(tmp_name) / "onnx" / "twin" / "1" / "model.onnx")
        ports = {"grpc_port": args.port, "http_port": args.port + 1, "metrics_port": args.port + 2}
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(serving(repo, backend_directory=str(backends), **ports))
            wait_for_metrics(metrics_url(server.address, server.metrics_port))
            server_of = dict.fromkeys(sides, server)
            if "twin_flags" in sides:
                flags = shlex.split(args.flags)
                server_of["twin_flags"] = stack.enter_context(
                    flagged_server(server, Path(tmp_name) / "flagged", args.port + 3, flags, args.env)
                )
            clients = {side: InferenceClient("127.0.0.1", server_of[side].grpc_port, side) for side in sides}
            try:
                for round_index in range(args.rounds):
                    bare["1"].append(forward(batches[1], args.requests, False))
                    bare["1 cold"].append(forward(batches[1], args.requests // 2, True))
                    bare["32"].append(forward(batches[32], max(1, args.requests // 8), False) / 32)
                    for side in sides if round_index % 2 == 0 else sides[::-1]:
                        for b, frames in batches.items():
                            calls = args.requests if b == 1 else max(1, args.requests // 8)
                            results[side, b].append(serve_side(server_of[side], clients[side], side, frames, calls))
                    print(f"round {round_index + 1} of {args.rounds} done", flush=True)
            finally:
                for client in clients.values():
                    client.close()
    report(results, bare, sides, args)


def spread(values: list[float], scale: float = 1.0) -> str:
    """Median and the middle half of ``values``: '1.10 (0.95-1.30)'."""
    low, median, high = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    return f"{scale * median:.2f} ({scale * low:.2f}-{scale * high:.2f})"


def report(results: dict, bare: dict, sides: list[str], args: argparse.Namespace) -> None:
    forward = {key: statistics.median(values) for key, values in bare.items()}
    print(
        f"\n{args.rounds} rounds, {args.requests} batch-1 and {max(1, args.requests // 8)} batch-32 sync requests "
        f"per side and round; medians (middle half of the rounds). Bare onnxruntime forward, CPU per frame stack: "
        f"batch 1 {spread(bare['1'], 1e3)} ms, after 16 MB read {spread(bare['1 cold'], 1e3)} ms; "
        f"batch 32 {spread(bare['32'], 1e3)} ms"
    )
    print("side           batch 1: server CPU per request, x bare, round trip   batch 32: server CPU per stack, x bare")
    for side in sides:
        one, many = [r["cpu"] for r in results[side, 1]], [r["cpu"] for r in results[side, 32]]
        rtt = statistics.median(r["rtt"] for r in results[side, 1])
        print(
            f"{side:14s} {spread(one, 1e3):>18s} ms  {statistics.median(one) / forward['1']:4.2f}x  "
            f"{1e3 * rtt:.2f} ms        {spread(many, 1e3):>18s} ms  {statistics.median(many) / forward['32']:4.2f}x"
        )
    dropped = sum(r["dropped"] for runs in results.values() for r in runs)
    print(f"requests lost to a connection's closing and sent again: {dropped}")
    print("Triton's breakdown at batch 1 (last round):")
    for side in sides:
        print(f"  {side:13s} {results[side, 1][-1]['breakdown'].line()}")
    print("server CPU, side against side within each round:")
    for new, old in [("twin", "old"), ("twin_delay0", "twin"), ("twin_nobatch", "twin")] + [("twin_flags", "twin")] * (
        "twin_flags" in sides
    ):
        ratios = {
            b: [n["cpu"] / o["cpu"] for n, o in zip(results[new, b], results[old, b], strict=True)] for b in (1, 32)
        }
        print(f"  {new:12s} / {old:4s}: batch 1 {spread(ratios[1])}x, batch 32 {spread(ratios[32])}x")


if __name__ == "__main__":
    main()
