"""Serving: a real tritonserver on 127.0.0.1, the official tritonclient and the project's client."""

from __future__ import annotations

import concurrent.futures
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from helpers import (
    ROOT,
    SERVE,
    SERVED,
    assert_runs_without_chainer,
    free_ports,
    one_error_line,
    run_command,
    serving_on_free_ports,
    start_serve,
)
from tritonclient.utils import InferenceServerException

from atari_trtis_demo.client.errors import (
    InvalidRequest,
    ModelNotReady,
    RequestTimeout,
    ServerGoingAway,
    ServerUnavailable,
)
from atari_trtis_demo.client.inference_client import InferenceClient
from atari_trtis_demo.core.errors import ServiceError, UserError
from atari_trtis_demo.core.model_repository import read_repository
from atari_trtis_demo.kserve import kserve_v2_pb2 as pb
from atari_trtis_demo.kserve.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from atari_trtis_demo.serving.triton_twin import TWIN_BATCH_FACTOR
from atari_trtis_demo.serving.triton_workdir import SHM_DIR, make_workdir, processes_using, shm_regions_of


def local_q_values(repository: Path, name: str, frames: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(repository / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(["action"], {"input": frames})[0]


def frames_batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 4, 84, 84), dtype=np.float32)


def test_committed_stubs_match_the_protos(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(ROOT / "scripts" / "generate_stubs.sh"), str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    for name in ("kserve_v2_pb2.py", "grpc_service_pb2_grpc.py"):
        built = (tmp_path / "atari_trtis_demo" / "kserve" / name).read_bytes()
        assert built == (ROOT / "atari_trtis_demo" / "kserve" / name).read_bytes(), f"{name} is stale: regenerate"


@pytest.mark.parametrize("name", list(SERVED))
def test_official_client_sees_the_model_and_gets_onnxruntime_answers(server, repository: Path, name: str) -> None:
    client = triton.InferenceServerClient(server.grpc_target)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
    meta = client.get_model_metadata(name)
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("input", "FP32", [-1, 4, 84, 84])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("action", "FP32", [-1, SERVED[name]])]
    config = client.get_model_config(name).config
    assert config.HasField("dynamic_batching")
    # The python-backend twin keeps the model's limit as a parameter (see triton_twin.twin_config).
    assert config.parameters["max_batch_size"].string_value == "8" and config.max_batch_size == 8 * TWIN_BATCH_FACTOR
    for batch in (1, 7):
        frames = frames_batch(batch, seed=batch)
        tensor = triton.InferInput("input", list(frames.shape), "FP32")
        tensor.set_data_from_numpy(frames)
        got = client.infer(name, [tensor]).as_numpy("action")
        np.testing.assert_allclose(got, local_q_values(repository, name, frames), rtol=0, atol=1e-6)
    client.close()


@pytest.mark.parametrize("name", list(SERVED))
def test_project_client_checks_the_model_and_gets_onnxruntime_answers(server, repository: Path, name: str) -> None:
    with InferenceClient("127.0.0.1", server.grpc_port, name) as client:
        assert client.n_actions == SERVED[name] and client.batched
        frames = frames_batch(7, seed=11)
        expected = local_q_values(repository, name, frames)
        np.testing.assert_allclose(client.infer(frames), expected, rtol=0, atol=1e-6)
        single = client.infer(frames[0])
        assert single.shape == (SERVED[name],)
        np.testing.assert_allclose(single, expected[0], rtol=0, atol=1e-6)
        np.testing.assert_allclose(client.infer_async(frames[3]).result(timeout=10), expected[3], rtol=0, atol=1e-6)
        stats = client.stats.summary()
        assert stats["count"] == 3 and 0 < stats["median_ms"] <= stats["p99_ms"]


def rename_input(request: pb.ModelInferRequest) -> None:
    request.inputs[0].name = "frames"


def narrow_the_frames(request: pb.ModelInferRequest) -> None:
    del request.inputs[0].shape[:]
    request.inputs[0].shape.extend([1, 4, 84, 83])


def declare_fp16(request: pb.ModelInferRequest) -> None:
    request.inputs[0].datatype = "FP16"


def drop_four_bytes(request: pb.ModelInferRequest) -> None:
    request.raw_input_contents[0] = request.raw_input_contents[0][:-4]


def ask_an_unknown_model(request: pb.ModelInferRequest) -> None:
    request.model_name = "no_such_model"


def unchanged(request: pb.ModelInferRequest) -> None:
    pass


@pytest.mark.parametrize(
    "batch, alter, status, error",
    [
        pytest.param(1, rename_input, "INVALID_ARGUMENT", InvalidRequest, id="input name"),
        pytest.param(1, narrow_the_frames, "INVALID_ARGUMENT", InvalidRequest, id="shape"),
        pytest.param(1, declare_fp16, "INVALID_ARGUMENT", InvalidRequest, id="data type"),
        pytest.param(1, drop_four_bytes, "INVALID_ARGUMENT", InvalidRequest, id="byte count"),
        pytest.param(9, unchanged, "INVALID_ARGUMENT", InvalidRequest, id="batch over max"),
        # To a client, a model it checked and now NOT_FOUND is going away (a server shutting down).
        pytest.param(1, ask_an_unknown_model, "NOT_FOUND", ServerGoingAway, id="unknown model"),
    ],
)
def test_bad_requests_get_the_right_status_and_the_server_keeps_serving(
    server, batch: int, alter, status: str, error: type
) -> None:
    with InferenceClient("127.0.0.1", server.grpc_port, "atari") as client:
        request = client.build_request(frames_batch(batch))
        alter(request)
        with pytest.raises(error) as err:
            client.model_infer(request)
        message = str(err.value)
        assert status in message and f"127.0.0.1:{server.grpc_port}" in message and "\n" not in message
        # The raw status as gRPC reports it, through the generated stub: the same code.
        channel = grpc.insecure_channel(server.grpc_target)
        with pytest.raises(grpc.RpcError) as raw:
            GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
        assert raw.value.code().name == status
        channel.close()
        # The next good request is served.
        assert client.infer(frames_batch(1)).shape == (1, 4)


def triton_metric(server, metric: str, model: str = "atari") -> float:
    """One per-model counter from Triton's Prometheus endpoint (summed over versions)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(metric + "{") and f'model="{model}"' in line
    )


def raw_request(shape: list[int], payload: bytes) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="atari")
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = "input", "FP32"
    tensor.shape.extend(shape)
    request.raw_input_contents.append(payload)
    return request


def test_a_hostile_request_fails_alone_while_its_batch_mates_are_answered(server, repository: Path) -> None:
    """Declared batches that overflow Triton's byte-count check, sent among good requests from 8 clients.

    Triton merges concurrent requests into one execution; each bad one must get its own
    one-line INVALID_ARGUMENT and every good one its right Q-values.
    """
    one_stack = frames_batch(1, seed=99)
    overflowing = [[2**62, 4, 84, 84], [2**32, 4, 84, 84], [2**63 - 1, 4, 84, 84]]
    executions_before = triton_metric(server, "nv_inference_exec_count")
    requests_before = triton_metric(server, "nv_inference_request_success") + triton_metric(
        server, "nv_inference_request_failure"
    )
    rounds = 60

    def good_client(seed: int) -> list[str]:
        problems = []
        with InferenceClient("127.0.0.1", server.grpc_port, "atari") as client:
            for i in range(rounds):
                frames = frames_batch(1 + (seed + i) % 3, seed=seed * 1000 + i)
                try:
                    got = client.infer(frames)
                except InvalidRequest as e:
                    problems.append(str(e))
                    continue
                if not np.allclose(got, local_q_values(repository, "atari", frames), rtol=0, atol=1e-5):
                    problems.append(f"wrong Q-values in round {i}")
        return problems

    def hostile_client(seed: int) -> list[str]:
        details = []
        channel = grpc.insecure_channel(server.grpc_target)
        stub = GRPCInferenceServiceStub(channel)
        for i in range(rounds):
            try:
                stub.ModelInfer(raw_request(overflowing[(seed + i) % 3], one_stack.tobytes()), timeout=10)
                details.append("answered")
            except grpc.RpcError as e:
                details.append(f"{e.code().name}: {e.details()}")
        channel.close()
        return details

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        good = [pool.submit(good_client, seed) for seed in range(4)]
        hostile = [pool.submit(hostile_client, seed) for seed in range(4)]
        problems = [p for f in good for p in f.result(timeout=300)]
        replies = [d for f in hostile for d in f.result(timeout=300)]
    assert problems == [], f"{len(problems)} good requests failed, e.g. {problems[:3]}"
    assert len(replies) == 4 * rounds
    assert any("expected shape [n, 4, 84, 84] FP32 with 1 <= n <= 8, got [4, 84, 84]" in d for d in replies), replies
    for detail in set(replies):
        # Refused by the model (overflowing batches) or by Triton's own size check.
        assert detail.startswith("INVALID_ARGUMENT: ") and "input 'input'" in detail and "\n" not in detail, detail
        assert "Traceback" not in detail and ".py" not in detail and "/" not in detail, detail
    executions = triton_metric(server, "nv_inference_exec_count") - executions_before
    requests = (
        triton_metric(server, "nv_inference_request_success")
        + triton_metric(server, "nv_inference_request_failure")
        - requests_before
    )
    assert executions < requests, "Triton merged no requests: the test did not exercise a shared batch"

    # A declared batch of 2**61 + 1 reaches the model as a batch of 1 (Triton 2.51's core
    # truncates it to 32 bits): it gets the Q-values of the one stack it carries, no more.
    channel = grpc.insecure_channel(server.grpc_target)
    try:
        reply = GRPCInferenceServiceStub(channel).ModelInfer(
            raw_request([2**61 + 1, 4, 84, 84], one_stack.tobytes()), timeout=10
        )
        assert list(reply.outputs[0].shape) == [1, 4]
        got = np.frombuffer(reply.raw_output_contents[0], "<f4").reshape(1, 4)
        np.testing.assert_allclose(got, local_q_values(repository, "atari", one_stack), rtol=0, atol=1e-6)
    except grpc.RpcError as e:  # a Triton with core's overflow fix refuses it outright
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        channel.close()


def test_official_client_gets_the_same_refusals(server) -> None:
    client = triton.InferenceServerClient(server.grpc_target)
    wrong = triton.InferInput("frames", [1, 4, 84, 84], "FP32")
    wrong.set_data_from_numpy(frames_batch(1))
    with pytest.raises(InferenceServerException, match="INVALID_ARGUMENT"):
        client.infer("atari", [wrong])
    with pytest.raises(InferenceServerException):
        client.infer("no_such_model", [wrong])
    good = triton.InferInput("input", [1, 4, 84, 84], "FP32")
    good.set_data_from_numpy(frames_batch(1))
    assert client.infer("atari", [good]).as_numpy("action").shape == (1, 4)
    client.close()


def test_client_refuses_an_unknown_model_or_a_wrong_one_in_one_line(server, tmp_path: Path) -> None:
    with pytest.raises(ModelNotReady, match=f"model 'breakout' not found or not ready on 127.0.0.1:{server.grpc_port}"):
        InferenceClient("127.0.0.1", server.grpc_port, "breakout")


def test_client_reports_a_down_server_within_its_deadline() -> None:
    (port,) = free_ports(1)
    start_time = time.monotonic()
    with pytest.raises(ServerUnavailable, match=f"cannot connect to 127.0.0.1:{port}") as err:
        InferenceClient("127.0.0.1", port, "atari", timeout=2.0)
    assert time.monotonic() - start_time < 2.0 + 1.0
    assert "\n" not in str(err.value) and isinstance(err.value, ServiceError)  # exit 1, not a usage error


def test_client_survives_a_server_restart(repository: Path) -> None:
    (grpc_port,) = free_ports(1)
    frames = frames_batch(1)
    with serving_on_free_ports(repository, grpc_port) as first:
        client = InferenceClient("127.0.0.1", first.grpc_port, "atari", timeout=2.0)
        expected = client.infer(frames)
    with pytest.raises((ServerUnavailable, RequestTimeout)):
        client.infer(frames)
    with serving_on_free_ports(repository, grpc_port):
        deadline = time.monotonic() + 15
        while True:  # the channel reconnects by itself; no new client is made
            try:
                np.testing.assert_array_equal(client.infer(frames), expected)
                break
            except ServerUnavailable:
                assert time.monotonic() < deadline, "the client did not reconnect"
                time.sleep(0.2)
    client.close()


def test_serve_command_stops_cleanly_on_sigterm(repository: Path, tmp_path: Path) -> None:
    """... and nothing lands in the user's home (onnxruntime in the twins wrote ~/.cache/Microsoft/)."""
    home = tmp_path / "home"
    home.mkdir()
    started = start_serve(repository, env={"HOME": str(home)})
    proc, grpc_port, lines, workdir = started.proc, started.grpc_port, started.lines, started.workdir
    assert any(f"atari ready at 127.0.0.1:{grpc_port} (gRPC)" in line for line in lines), lines
    assert processes_using(workdir), "tritonserver runs from its temporary directory"
    with InferenceClient("127.0.0.1", grpc_port, "pong") as client:
        assert client.infer(frames_batch(2)).shape == (2, 6)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "server stopped" in out
    assert processes_using(workdir) == [], "no tritonserver or backend stub left"
    assert not Path(workdir).exists(), "temporary files removed"
    assert list(home.rglob("*")) == [], "nothing written into HOME"


def no_model(repo: Path, served: Path) -> str:
    return "no model in it"


def config_without_model_file(repo: Path, served: Path) -> str:
    (repo / "atari").mkdir()
    (repo / "atari" / "config.pbtxt").write_text((served / "atari" / "config.pbtxt").read_text())
    return str(repo / "atari" / "1" / "model.onnx")


def malformed_config(repo: Path, served: Path) -> str:
    (repo / "atari" / "1").mkdir(parents=True)
    (repo / "atari" / "1" / "model.onnx").write_bytes(b"")
    config = (served / "atari" / "config.pbtxt").read_text()
    (repo / "atari" / "config.pbtxt").write_text(config.replace("max_batch_size: 8", "max_batch_size: eight"))
    return str(repo / "atari" / "config.pbtxt")


@pytest.mark.parametrize(
    "make_repo, also_run_serve",
    [
        pytest.param(config_without_model_file, False, id="missing model file"),
        pytest.param(malformed_config, True, id="malformed config"),
        pytest.param(no_model, False, id="no model"),
    ],
)
def test_bad_repository_fails_at_once_naming_the_file(
    make_repo, also_run_serve: bool, repository: Path, tmp_path: Path
) -> None:
    """``make_repo`` fills an empty repository from the served one and returns what the error must name."""
    repo = tmp_path / "repo"
    repo.mkdir()
    expect = make_repo(repo, repository)
    with pytest.raises(UserError) as err:
        read_repository(repo)
    assert expect in str(err.value) and "\n" not in str(err.value)
    if also_run_serve:
        result = run_command(SERVE, "--model-repository", str(repo), timeout=60)
        assert one_error_line(result, alone=True) == f"error: {err.value}"


def test_client_module_does_not_import_chainer() -> None:
    result = assert_runs_without_chainer(
        "import atari_trtis_demo.client.inference_client, atari_trtis_demo.serving.serve\nprint('ok')", timeout=60
    )
    assert result.stdout.strip() == "ok", result.stderr


@pytest.mark.parametrize(
    "flags, words",
    [
        pytest.param(["--grpc-port", "70000"], ["--grpc-port", "70000", "between 1 and 65535"], id="port-too-big"),
        pytest.param(["--http-port", "0"], ["--http-port", "between 1 and 65535"], id="port-zero"),
        pytest.param(["--metrics-port", "eighty"], ["--metrics-port", "'eighty'"], id="port-not-a-number"),
        pytest.param(["--ready-timeout", "-1"], ["--ready-timeout", "above 0"], id="timeout-negative"),
        pytest.param(["--log-verbose", "9"], ["--log-verbose", "between 0 and 3"], id="verbosity"),
        pytest.param(
            ["--grpc-port", "18555", "--http-port", "18555"], ["the ports must differ", "18555"], id="same-port-twice"
        ),
    ],
)
def test_serve_flags_out_of_range_are_one_line(flags: list[str], words: list[str], repository: Path) -> None:
    one_error_line(run_command(SERVE, "--model-repository", str(repository), *flags, timeout=60), *words, alone=True)


def test_serve_refuses_a_port_another_server_holds_and_that_server_keeps_serving(server, repository: Path) -> None:
    """A leftover Triton (or NVIDIA's container) on the gRPC port: no 'ready' for a server serve did not start."""
    http, metrics = free_ports(2)
    result = run_command(
        SERVE, "--model-repository", str(repository),
        "--grpc-port", str(server.grpc_port), "--http-port", str(http), "--metrics-port", str(metrics), timeout=60,
    )  # fmt: skip
    assert "ready" not in result.stdout
    one_error_line(result, f"--grpc-port {server.grpc_port}: port {server.grpc_port} is in use", alone=True)
    with InferenceClient("127.0.0.1", server.grpc_port, "atari") as client:
        assert client.infer(frames_batch(1)).shape == (1, 4)


def test_serve_checks_the_repository_before_the_ports(server, tmp_path: Path) -> None:
    """An empty repository and a taken port: the repository is named, not the port (fixing the port first
    would only lead to the next error)."""
    empty = tmp_path / "trtismodel"
    empty.mkdir()
    result = run_command(SERVE, "--model-repository", str(empty), "--grpc-port", str(server.grpc_port), timeout=60)
    line = one_error_line(result, str(empty), "no model", alone=True)
    assert "in use" not in line, line


def test_readiness_is_that_of_the_server_started_not_of_whoever_answers_on_the_port(server, tmp_path: Path) -> None:
    """A process that never serves, on a port where another Triton answers ready: never reported ready."""
    from atari_trtis_demo.serving.triton_process import TritonServer, wait_until_ready

    (tmp_path / "tritonserver.log").write_text("")
    impostor = subprocess.Popen(["sleep", "30"])
    try:
        started = TritonServer(
            impostor, "127.0.0.1", server.http_port, server.grpc_port, server.metrics_port, ["atari"],
            tmp_path, tmp_path / "tritonserver.log",
        )  # fmt: skip
        with pytest.raises(UserError, match="did not get ready within 2 s"):
            wait_until_ready(started, timeout=2)
    finally:
        impostor.kill()
        impostor.wait()


def test_a_failed_start_names_the_taken_port_and_keeps_the_log(
    repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The port taken between serve's check and Triton's bind: Triton's own failure, told as its cause."""
    from atari_trtis_demo.serving import serve

    monkeypatch.setattr(serve, "check_ports", lambda address, ports: None)
    made: list[Path] = []  # the start's workdir, whose prefix names its regions
    monkeypatch.setattr(serve, "make_workdir", lambda: made.append(make_workdir()) or made[-1])
    http, grpc_port, metrics = free_ports(3)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", grpc_port))
        holder.listen()
        with pytest.raises(UserError) as err:
            serve.start_server(repository, http_port=http, grpc_port=grpc_port, metrics_port=metrics)
    message = str(err.value)
    assert f"port {grpc_port} is in use on 127.0.0.1" in message and "NVML" not in message, message
    log = Path(message.rsplit("Triton's log: ", 1)[1].rstrip(")"))
    assert log.is_file() and f"127.0.0.1:{grpc_port}" in log.read_text()
    assert log.stat().st_mode & 0o777 == 0o600 and log.parent == made[0].parent, "the owner's, beside the workdir"
    log.unlink()
    assert made and not shm_regions_of(made[0]), "the failed start's stubs left no /dev/shm region"


def test_kill_9_of_serve_takes_triton_with_it_and_the_next_start_cleans_up(repository: Path) -> None:
    started = start_serve(repository)
    proc, grpc_port, workdir = started.proc, started.grpc_port, started.workdir
    assert len(processes_using(workdir)) >= 2, "tritonserver and its backend stub run"
    regions = shm_regions_of(Path(workdir))
    assert regions, "each backend stub has its /dev/shm region"
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 15
    while processes_using(workdir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_using(workdir) == [], "tritonserver and its stub died with serve"
    with socket.socket() as probe:  # the port is free again
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", grpc_port))
    assert Path(workdir).is_dir(), "a killed serve cannot clean up itself"
    result = run_command(SERVE, "--model-repository", str(repository), "--grpc-port", "70000", timeout=60)
    assert result.returncode == 2 and Path(workdir).is_dir(), "a bad flag stops before touching anything"
    with serving_on_free_ports(repository):
        assert not Path(workdir).exists(), "the next start removed what the killed one left"
        assert not any((SHM_DIR / name).exists() for name in regions), "and its stubs' /dev/shm regions"
