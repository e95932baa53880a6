"""Players over several servers (issue 22): ``--host`` lists and ``dns:`` names, balanced by gRPC's
round_robin, each server checked, per-server counts in the JSON, and no game losing a step when one
of three real ``serve`` processes is killed mid-game.

The fast part runs small KServe servers of this module (real grpcio on 127.0.0.1, the project's
stubs) that count the calls they answer; the three-server test runs ``python -m
atari_trtis_demo.serve`` three times and ``src/app.py`` against all three.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers import REMOTE, SERVE, FakeAtariModel, Player, free_ports, one_error_line, run_command, start_command
from triton_stats import metrics_url, read_metrics, wait_for_metrics

from atari_trtis_demo.client.errors import KeyRefused, ServersDisagree, ServerUnavailable, TlsMismatch
from atari_trtis_demo.client.inference_client import InferenceClient
from atari_trtis_demo.client.server_list import parse_servers
from atari_trtis_demo.core.contract import ENV_ID_KEY
from atari_trtis_demo.core.errors import UserError
from atari_trtis_demo.core.keys import PLAYER_HEADER as KEY_HEADER
from atari_trtis_demo.kserve import kserve_v2_pb2 as pb
from atari_trtis_demo.kserve.grpc_service_pb2_grpc import add_GRPCInferenceServiceServicer_to_server

FRAMES = np.zeros((4, 84, 84), np.float32)


class CountingModel(FakeAtariModel):
    """A KServe server whose model 'atari' answers fixed Q-values and counts the inferences it answered."""

    def __init__(self, n_actions: int = 4, key: str | None = None, env_id: str = "BreakoutNoFrameskip-v4") -> None:
        self.n_actions, self.key, self.env_id = n_actions, key, env_id
        self.answered = 0
        self.lock = threading.Lock()

    def ModelConfig(self, request, context):
        self.check_call(context)
        response = pb.ModelConfigResponse()
        response.config.name = "atari"
        response.config.parameters[ENV_ID_KEY].string_value = self.env_id
        return response

    def check_call(self, context) -> None:
        if self.key is not None and dict(context.invocation_metadata()).get(KEY_HEADER) != self.key:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "wrong key")

    def ModelInfer(self, request, context):
        self.check_call(context)
        rows = request.inputs[0].shape[0]
        with self.lock:
            self.answered += 1
        q = np.tile(np.arange(self.n_actions, dtype=np.float32), (rows, 1))
        tensor = pb.ModelInferResponse.InferOutputTensor(name="action", datatype="FP32", shape=list(q.shape))
        return pb.ModelInferResponse(model_name="atari", outputs=[tensor], raw_output_contents=[q.tobytes()])


@dataclass
class Fake:
    model: CountingModel
    server: grpc.Server
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def start_fake(port: int, model: CountingModel, credentials: grpc.ServerCredentials | None = None) -> Fake:
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(4))
    add_GRPCInferenceServiceServicer_to_server(model, server)
    if credentials is None:
        server.add_insecure_port(f"127.0.0.1:{port}")
    else:
        server.add_secure_port(f"127.0.0.1:{port}", credentials)
    server.start()
    return Fake(model, server, port)


@pytest.fixture()
def three() -> Iterator[list[Fake]]:
    fakes = [start_fake(port, CountingModel()) for port in free_ports(3)]
    yield fakes
    for fake in fakes:
        fake.server.stop(None)


def host_list(fakes: list[Fake]) -> str:
    return ",".join(fake.address for fake in fakes)


# -- --host: one server, a list, a dns: name -----------------------------------------------


def test_one_server_is_the_target_it_always_was() -> None:
    assert parse_servers("10.0.0.5", 8001).target == "10.0.0.5:8001"
    assert parse_servers("10.0.0.5:9000", 8001).target == "10.0.0.5:9000"
    assert parse_servers("::1", 8001).target == "[::1]:8001"
    assert parse_servers("[::1]:9000", 8001).target == "[::1]:9000"
    assert not parse_servers("server.example", 8001).balanced


def test_a_list_is_one_balanced_target_of_addresses_each_entry_with_its_port_or_port() -> None:
    servers = parse_servers("10.0.0.1:8001, 10.0.0.2:9000,10.0.0.3", 7000)
    assert servers.balanced
    assert servers.target == "ipv4:10.0.0.1:8001,10.0.0.2:9000,10.0.0.3:7000"
    assert servers.address == "10.0.0.1:8001,10.0.0.2:9000,10.0.0.3:7000"
    assert parse_servers("[::1]:8001,::1", 9).target == "ipv6:[::1]:8001,[::1]:9"
    # A name is resolved into its addresses, and certificates are checked against the first name.
    named = parse_servers("localhost:8001,127.0.0.2:8002", 1)
    assert named.target == "ipv4:127.0.0.1:8001,127.0.0.2:8002" and named.tls_override == "localhost"


def test_a_dns_name_keeps_its_name_and_gets_a_port() -> None:
    assert parse_servers("dns:///triton.ns.svc:8001", 1).target == "dns:///triton.ns.svc:8001"
    servers = parse_servers("dns:///triton.ns.svc", 8005)
    assert servers.target == "dns:///triton.ns.svc:8005" and servers.balanced and servers.tls_override is None
    assert parse_servers("dns://10.0.0.10/triton:8001", 1).target == "dns://10.0.0.10/triton:8001"


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("a,,b", ["empty entry"]),
        ("a,", ["empty entry"]),
        ("a:x", ["'a:x'", "not a TCP port"]),
        ("a:70000", ["not a TCP port"]),
        ("127.0.0.1:8001,127.0.0.1:8001", ["listed twice", "127.0.0.1:8001"]),
        ("dns:///a:8001,b", ["alone"]),
        ("http://a:8001", ["dns:///NAME"]),
        ("127.0.0.1,::1", ["one family"]),
        ("[::1:8001", ["[IPv6]:PORT"]),
        ("a:8001:9", ["neither HOST:PORT nor an IPv6 address"]),
    ],
)
def test_a_bad_host_is_one_line_naming_the_flag(spec: str, words: list[str]) -> None:
    with pytest.raises(UserError) as caught:
        parse_servers(spec, 8001)
    assert f"--host {spec}" in str(caught.value) or f"--host '{spec}'" in str(caught.value)
    for word in words:
        assert word in str(caught.value)


def test_a_bad_host_list_is_exit_2_from_the_player() -> None:
    result = run_command(REMOTE, "--host", "127.0.0.1:1,,127.0.0.1:2", "--headless", timeout=120)
    one_error_line(result, "--host", "empty entry", alone=True)


def test_a_name_that_does_not_resolve_is_a_server_error() -> None:
    with pytest.raises(ServerUnavailable, match="cannot resolve 'no-such-host.invalid'"):
        parse_servers("127.0.0.1,no-such-host.invalid", 8001)


# -- balanced calls, checks and counts -----------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_calls_are_spread_over_every_server_and_counted_per_server(three: list[Fake], mode: str) -> None:
    with InferenceClient(host_list(three), 1, timeout=5) as client:
        for _ in range(60):
            q = client.infer(FRAMES) if mode == "sync" else client.infer_async(FRAMES).result(timeout=10)
            assert list(q) == [0, 1, 2, 3]
        counted = client.answered_by_server()
    answered = [fake.model.answered for fake in three]
    assert sum(answered) == 60 and all(n >= 10 for n in answered), answered  # round_robin: about 20 each
    # The client's per-server counts are gRPC's: every call each server answered, the checks included.
    assert sorted(counted) == sorted(fake.address for fake in three)
    for fake in three:
        assert counted[fake.address] >= fake.model.answered


def test_a_dns_name_plays_every_address_of_the_name(three: list[Fake]) -> None:
    # localhost resolves to 127.0.0.1 and ::1 here; the server listens on the first only.
    with InferenceClient(f"dns:///localhost:{three[0].port}", 1, timeout=5) as client:
        for _ in range(5):
            client.infer(FRAMES)
        assert client.address == f"dns:///localhost:{three[0].port}"
        assert client.answered_by_server()[three[0].address] >= 5
    assert three[0].model.answered == 5


def test_a_server_of_the_list_with_another_model_is_refused_at_connection(three: list[Fake]) -> None:
    other = start_fake(free_ports(1)[0], CountingModel(n_actions=6))
    try:
        with pytest.raises(ServersDisagree) as caught:
            InferenceClient(f"{three[0].address},{other.address}", 1, timeout=5)
        assert other.address in str(caught.value) and "6 actions" in str(caught.value)
        assert "4 actions" in str(caught.value)
    finally:
        other.server.stop(None)


def test_a_server_that_joins_later_with_another_game_ends_play(three: list[Fake]) -> None:
    # Same tensors, another game: no answer's shape tells it; the check of each new server does.
    late_port = free_ports(1)[0]
    with InferenceClient(f"{three[0].address},127.0.0.1:{late_port}", 1, timeout=5) as client:
        client.infer(FRAMES)  # the second server is down: play goes on with the first
        late = start_fake(late_port, CountingModel(env_id="SpaceInvadersNoFrameskip-v4"))
        try:
            deadline = time.monotonic() + 60
            with pytest.raises(ServersDisagree, match=f"127.0.0.1:{late_port} serves .* SpaceInvadersNoFrameskip-v4"):
                while time.monotonic() < deadline:
                    client.infer(FRAMES)
                    time.sleep(0.02)
        finally:
            late.server.stop(None)


def test_a_server_that_is_down_at_the_start_gets_calls_once_it_is_up(three: list[Fake]) -> None:
    late_port = free_ports(1)[0]
    with InferenceClient(f"{three[0].address},127.0.0.1:{late_port}", 1, timeout=5) as client:
        for _ in range(5):
            client.infer(FRAMES)
        late = start_fake(late_port, CountingModel())
        try:
            deadline = time.monotonic() + 60
            while late.model.answered == 0:
                assert time.monotonic() < deadline, "the server that came up got no call within 60 s"
                client.infer(FRAMES)
                time.sleep(0.02)
            assert client.answered_by_server()[late.address] >= 1
        finally:
            late.server.stop(None)


def test_the_key_goes_to_every_server_and_a_refusal_names_the_variable(
    three: list[Fake], monkeypatch: pytest.MonkeyPatch
) -> None:
    for fake in three:
        fake.model.key = "sesame"
    monkeypatch.setenv("ATARI_DEMO_KEY", "sesame")
    with InferenceClient(host_list(three), 1, timeout=5) as client:
        for _ in range(30):
            client.infer(FRAMES)
    assert all(fake.model.answered >= 5 for fake in three)
    monkeypatch.setenv("ATARI_DEMO_KEY", "wrong")
    with pytest.raises(KeyRefused, match="ATARI_DEMO_KEY"):
        InferenceClient(host_list(three), 1, timeout=5).infer(FRAMES)


def test_tls_over_a_list_checks_each_certificate_against_the_first_name(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    fakes = [start_fake(port, CountingModel(), credentials) for port in free_ports(2)]
    try:
        # The certificate names localhost and 127.0.0.1.
        for first in ("localhost", "127.0.0.1"):
            spec = f"{first}:{fakes[0].port},127.0.0.1:{fakes[1].port}"
            with InferenceClient(spec, 1, timeout=5, tls_ca=cert) as client:
                for _ in range(10):
                    client.infer(FRAMES)
        assert all(fake.model.answered >= 5 for fake in fakes)
        with pytest.raises(TlsMismatch, match="--tls-ca"):
            InferenceClient(host_list(fakes), 1, timeout=5)
    finally:
        for fake in fakes:
            fake.server.stop(None)


def test_the_player_json_says_how_many_calls_each_server_answered(three: list[Fake], tmp_path: Path) -> None:
    out = tmp_path / "play.json"
    for flags in (["--sync", "--games", "3"], ["--games", "4", "--workers", "2"]):
        result = run_command(
            REMOTE, "--host", host_list(three), "--headless", "--max-steps", "20", "--fps", "0",
            "--game-over-seconds", "0", "--json", str(out), *flags, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        played = json.loads(out.read_text())
        assert sorted(played["servers"]) == sorted(fake.address for fake in three), played["servers"]
        assert sum(played["servers"].values()) >= played["requests"]
        assert "calls answered by 3 servers" in result.stdout


def test_servers_that_serve_different_games_end_the_player_with_one_line(three: list[Fake]) -> None:
    other = start_fake(free_ports(1)[0], CountingModel(env_id="PongNoFrameskip-v4"))
    try:
        result = run_command(REMOTE, "--host", f"{three[0].address},{other.address}", "--headless", timeout=120)
        one_error_line(result, other.address, "PongNoFrameskip-v4", "every server of --host", code=1)
    finally:
        other.server.stop(None)


# -- three real servers, one killed mid-game -------------------------------------------------


class ServeProcess:
    """``python -m atari_trtis_demo.serve`` on three given ports, its output lines collected as they come."""

    def __init__(self, repository: Path, http: int, grpc_port: int, metrics: int) -> None:
        self.grpc_port, self.metrics_port = grpc_port, metrics
        self.proc = start_command(
            SERVE, "--model-repository", str(repository), "--http-port", str(http), "--grpc-port", str(grpc_port),
            "--metrics-port", str(metrics), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def wait_ready(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not any(f"ready at {self.address}" in line for line in self.lines):
            assert self.proc.poll() is None, f"serve ended before it was ready: {self.lines}"
            assert time.monotonic() < deadline, f"serve not ready within {timeout} s: {self.lines}"
            time.sleep(0.1)
        # Triton opens its metrics endpoint a moment after the ports serve waits for.
        wait_for_metrics(metrics_url("127.0.0.1", self.metrics_port))

    def answered(self) -> float:
        """Inference requests this server's Triton answered (its metrics endpoint)."""
        url = metrics_url("127.0.0.1", self.metrics_port)
        return read_metrics(url, "pong")["nv_inference_request_success"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_until(condition, what: str, player: Player, timeout: float = 120) -> None:
    """Wait for ``condition()`` while the player still plays (a player that ended first fails the test)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert player.proc.poll() is None, f"the player ended before {what}: {player.lines[-12:]}"
        assert time.monotonic() < deadline, f"not {what} within {timeout} s"
        time.sleep(0.2)


@pytest.fixture()
def pong_only(repository: Path, tmp_path: Path) -> Path:
    """The session repository's 'pong' model alone (three servers of the three session models would be
    heavy). Pong, because an untrained agent loses Pong's 21 points in more than 450 steps, where it may
    lose Breakout's five lives in 120: every game then plays exactly its --max-steps."""
    import shutil

    repo = tmp_path / "trtismodel"
    shutil.copytree(repository / "pong", repo / "pong")
    return repo


def test_killing_one_of_three_servers_mid_game_costs_no_game_a_step(pong_only: Path, tmp_path: Path) -> None:
    ports = free_ports(9)
    serves = [ServeProcess(pong_only, *ports[3 * i : 3 * i + 3]) for i in range(3)]
    player = None
    try:
        for serve in serves:
            serve.wait_ready()
        out = tmp_path / "play.json"
        steps = 450  # 30 s at 15 steps a second: the kill, the restart and the return all fall inside
        player = Player(
            "--host", ",".join(s.address for s in serves), "--port", "1", "--model", "pong", "--games", "3", "--sync",
            "--headless",
            "--max-steps", str(steps), "--game-over-seconds", "0", "--json", str(out),
        )  # fmt: skip
        wait_until(lambda: all(s.answered() >= 5 for s in serves), "every server answered", player)
        victim = serves[1]
        os.kill(victim.proc.pid, signal.SIGKILL)  # its tritonserver dies with it (PR_SET_PDEATHSIG)
        victim.proc.wait(30)
        survivors = [serves[0], serves[2]]
        before = [s.answered() for s in survivors]
        wait_until(
            lambda: all(s.answered() >= b + 30 for s, b in zip(survivors, before, strict=True)), "play went on", player
        )
        # The killed server comes back on its ports: the player sends it calls again.
        serves[1] = ServeProcess(pong_only, *ports[3:6])
        serves[1].wait_ready()
        wait_until(lambda: serves[1].answered() >= 5, "the server that came back got calls", player, timeout=30)
        result = player.finish(timeout=180)
        assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
        played = json.loads(out.read_text())
        assert played["error"] is None
        # Every game played all its steps, each step on its first request: none failed, none waited.
        assert [g["steps"] for g in played["games"]] == [steps] * 3
        assert [g["requests"] for g in played["games"]] == [steps] * 3
        assert played["outage"] == {"outages": 0, "seconds_without_server": 0.0, "requests_failed": 0}
        assert sorted(played["servers"]) == sorted(s.address for s in serves)
        assert all(count > 0 for count in played["servers"].values()), played["servers"]
    finally:
        if player is not None and player.proc.poll() is None:
            player.proc.kill()
            player.proc.wait()
        for serve in serves:
            serve.stop()
