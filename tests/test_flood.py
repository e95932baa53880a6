"""A stream flood beside real players and poisoned requests: one client must not freeze the shared server.

One ``ModelStreamInfer`` stream of valid requests, sent for 10 s without reading a single
answer, used to let Triton's batcher form batches of 8,000-18,000 requests (the twin's
``max_batch_size`` was 2**24); tritonserver grew to 8 GB and everyone else waited
minutes. Here the same flood runs beside 4 sync players and a client sending requests
that declare a batch of 2**62, all in one run, against a real tritonserver.

Run with ``-s`` to see the figures (docs/serving.md quotes them).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from helpers import ROOT, serving_on_free_ports

from atari_trtis_demo.client.errors import InferenceError
from atari_trtis_demo.client.inference_client import InferenceClient
from atari_trtis_demo.kserve import kserve_v2_pb2 as pb
from atari_trtis_demo.kserve.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from atari_trtis_demo.serving.triton_twin import TWIN_BATCH_FACTOR

FLOOD_SECONDS = 10.0
PLAYERS = 4
RSS_LIMIT = 1 << 30  # what the server may use, flood or not (issue 15)
RSS_GUARD = 3 << 30  # past this the flood is stopped at once, so that the machine lives
# Triton holds each streamed request until its answer is written, and a client that reads
# none holds them all: only closing its connection (--grpc-max-connection-age) frees them
# (docs/serving.md). Without that flag the memory bound and the 5 s backlog are a known gap
# (an expected failure reported at the end, after every other check) the twin cannot close.
CONNECTION_AGE_FLAG = "--grpc-max-connection-age="

# The flooder, in its own process so that its sending does not share the players' GIL:
# one stream, the same valid one-stack request as fast as gRPC takes it, answers never read.
FLOOD = r"""
import sys, time
import grpc
from atari_trtis_demo.kserve import kserve_v2_pb2 as pb

target, seconds = sys.argv[1], float(sys.argv[2])
request = pb.ModelInferRequest(model_name="atari")
tensor = request.inputs.add()
tensor.name, tensor.datatype = "input", "FP32"
tensor.shape.extend([1, 4, 84, 84])
request.raw_input_contents.append(bytes(4 * 84 * 84 * 4))


def requests():
    sent, end = 0, time.monotonic() + seconds
    print("start", flush=True)
    while time.monotonic() < end:
        sent += 1
        yield request
    print(f"sent {sent}", flush=True)
    time.sleep(3600)  # the stream stays open, its answers unread, until the test kills this process


channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 1 << 26)])
# The project's stubs have no ModelStreamInfer: the method is called by its KServe v2 path.
stream = channel.stream_stream(
    "/inference.GRPCInferenceService/ModelStreamInfer",
    request_serializer=pb.ModelInferRequest.SerializeToString,
    response_deserializer=lambda data: data,
)
replies = stream(requests())
time.sleep(3600)
"""


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def stub_shm_regions(pid: int) -> list[Path]:
    """The /dev/shm regions of the python-backend stubs that tritonserver ``pid`` started (its process group)."""
    regions = []
    for entry in Path("/proc").iterdir():
        try:
            args = (entry / "cmdline").read_bytes().decode().split("\0")
            if os.getpgid(int(entry.name)) == pid and args[0].endswith("triton_python_backend_stub"):
                regions.append(Path("/dev/shm") / args[2])
        except (OSError, ValueError, IndexError):
            continue
    return regions


def poison_request() -> pb.ModelInferRequest:
    """A request declaring a batch of 2**62 that carries one frame stack: Triton's size check passes it."""
    request = pb.ModelInferRequest(model_name="atari")
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = "input", "FP32"
    tensor.shape.extend([2**62, 4, 84, 84])
    request.raw_input_contents.append(np.zeros((4, 84, 84), np.float32).tobytes())
    return request


def test_a_stream_flood_neither_freezes_the_players_nor_grows_the_server_and_poison_still_fails_alone(
    repository: Path,
) -> None:
    session = ort.InferenceSession(str(repository / "atari" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    stacks = np.random.default_rng(7).random((8, 1, 4, 84, 84), dtype=np.float32)
    expected = [session.run(["action"], {"input": s})[0] for s in stacks]
    with serving_on_free_ports(repository) as server:
        pid = server.process.pid
        triton_args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        age_limited = any(a.startswith(CONNECTION_AGE_FLAG) for a in triton_args)
        stop = threading.Event()
        flood_end: list[float] = []
        # (player, sent at, answered at or None, what went wrong)
        records: list[tuple[int, float, float | None, str]] = []
        poison_outcomes: list[str] = []
        peak = [0]
        shm_peak = [0]
        regions = stub_shm_regions(pid)

        def player(index: int) -> None:
            with InferenceClient("127.0.0.1", server.grpc_port, "atari", timeout=30.0) as client:
                i = 0
                while not stop.is_set():
                    k = (index + i) % len(stacks)
                    sent = time.monotonic()
                    try:
                        got = client.infer(stacks[k])
                    except InferenceError as e:
                        records.append((index, sent, None, str(e)))
                    else:
                        wrong = "" if np.allclose(got, expected[k][0], rtol=0, atol=1e-5) else "wrong Q-values"
                        records.append((index, sent, time.monotonic(), wrong))
                    i += 1
                    time.sleep(0.01)  # about a real-time player's pace at most, not a second flood

        def poisoner() -> None:
            channel = grpc.insecure_channel(server.grpc_target)
            stub = GRPCInferenceServiceStub(channel)
            while not stop.is_set():
                try:
                    stub.ModelInfer(poison_request(), timeout=30)
                    poison_outcomes.append("answered")
                except grpc.RpcError as e:
                    poison_outcomes.append(f"{e.code().name}: {e.details()}")
                time.sleep(0.02)
            channel.close()

        def watch_memory(flooder: subprocess.Popen) -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], rss_bytes(pid))
                for region in regions:
                    with contextlib.suppress(OSError):
                        shm_peak[0] = max(shm_peak[0], region.stat().st_size)
                if peak[0] > RSS_GUARD and flooder.poll() is None:
                    flooder.kill()
                time.sleep(0.05)

        flooder = subprocess.Popen(
            [sys.executable, "-c", FLOOD, server.grpc_target, str(FLOOD_SECONDS)],
            stdout=subprocess.PIPE,
            text=True,
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
            },
        )
        threads = [threading.Thread(target=player, args=(i,)) for i in range(PLAYERS)]
        threads += [threading.Thread(target=poisoner), threading.Thread(target=watch_memory, args=(flooder,))]
        try:
            assert flooder.stdout is not None and flooder.stdout.readline().strip() == "start"
            flood_start = time.monotonic()
            for t in threads:
                t.start()
            line = flooder.stdout.readline().strip()  # "sent N" when the 10 s are over
            flood_end.append(time.monotonic())
            sent = int(line.split()[1]) if line.startswith("sent ") else -1
            time.sleep(6.0)  # the players keep playing past the 5 s that every answer has
        finally:
            stop.set()
            for t in threads:
                if t.ident is not None:
                    t.join(timeout=60)
            if flooder.poll() is None:
                flooder.send_signal(signal.SIGKILL)
            flooder.wait(60)  # a loaded machine may take a while to reap it
        # The server is still itself: a fresh player is answered at once.
        try:
            with InferenceClient("127.0.0.1", server.grpc_port, "atari", timeout=5.0) as client:
                fresh = "" if np.allclose(client.infer(stacks[0]), expected[0][0], rtol=0, atol=1e-5) else "wrong"
        except InferenceError as e:
            fresh = str(e)
        if server.process.poll() is not None:  # what Triton said before it died
            log = server.log_path.read_text(errors="replace").splitlines()
            fresh += f"; tritonserver exited with {server.process.returncode}: {log[-5:]}"
        try:
            stats = triton.InferenceServerClient(server.grpc_target).get_inference_statistics(
                "atari", as_json=True, client_timeout=10
            )
            batches = [int(b["batch_size"]) for m in stats["model_stats"] for b in m.get("batch_stats", [])]
        except Exception:  # a frozen server: its batches are unknown, the assertion below says so
            batches = []

    end = flood_end[0]
    during = [r for r in records if r[1] < end]
    answered = [r for r in records if r[2] is not None and not r[3]]
    failed = [r for r in records if r[2] is None or r[3]]
    # Every answer (failures are the 1% allowed) within 5 s of the flood's end.
    late = [r for r in during if r[2] is not None and r[2] > end + 5.0]
    worst = max((r[2] - r[1] for r in answered), default=float("nan"))
    share = len(answered) / max(1, len(records))
    poisoned = sorted(set(poison_outcomes))
    print(
        f"\nflood: {sent} requests in {end - flood_start:.1f} s; players: {len(records)} requests, "
        f"{len(answered)} answered ({share:.1%}), {len(during)} sent during the flood, worst round trip "
        f"{worst:.2f} s, {len(late)} answered over 5 s after the flood's end; tritonserver peak RSS "
        f"{peak[0] / 2**20:.0f} MiB{' (flood stopped at the guard)' if peak[0] > RSS_GUARD else ''}; "
        f"largest stub shm region "
        f"{shm_peak[0] / 2**20:.0f} MiB ({len(regions)} stubs); largest batch {max(batches, default=0)}; "
        f"poison: {len(poison_outcomes)} requests, outcomes {poisoned[:4]}; fresh player after: {fresh or 'answered'}"
    )
    assert not fresh, f"a fresh player after the flood: {fresh}"
    assert len(during) >= PLAYERS * 2, "the players hardly played during the flood: the test proved nothing"
    assert share >= 0.99, f"{len(failed)} of {len(records)} player requests failed, e.g. {[r[3] for r in failed[:3]]}"
    # The batcher never formed a batch beyond a small multiple of the model's limit (8 here).
    assert batches and max(batches) <= 8 * TWIN_BATCH_FACTOR, batches
    # Each poisoned request failed alone, with the twin's one line.
    assert poison_outcomes and "answered" not in poison_outcomes
    assert any("expected shape [n, 4, 84, 84] FP32 with 1 <= n <= 8, got [4, 84, 84]" in p for p in poisoned), poisoned
    # Last, what only Triton's gRPC frontend can bound: the flood's backlog (every answer
    # within 5 s of its end) and the server's memory. Triton reads an unread stream as fast
    # as it is sent, whatever the model config (docs/serving.md, "A stream flood").
    grown = f"tritonserver grew to {peak[0] / 2**20:.0f} MiB under a stream whose answers are never read"
    backlog = f"{len(late)} requests sent during the flood were answered more than 5 s after its end"
    if not age_limited and (late or peak[0] >= RSS_LIMIT):
        pytest.xfail(f"{grown}; {backlog}: serve does not pass {CONNECTION_AGE_FLAG}... to Triton")
    assert not late, backlog
    assert peak[0] < RSS_LIMIT, grown
