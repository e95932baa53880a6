"""Hostile clients against ``serve``: admin protocols, keys, TLS, HTTP crash payloads, a dying Triton (issue 15).

Every test talks to a real tritonserver on loopback with raw gRPC stubs, the official
tritonclient or a raw socket: what an attacker on this machine (or with --address,
the network) would send.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.http as triton_http
from helpers import (
    REMOTE,
    SERVE,
    free_ports,
    one_error_line,
    run_command,
    start_command,
    start_serve,
    tritonserver_pid,
    wait_for_answers,
)
from tritonclient.utils import InferenceServerException

from atari_trtis_demo.client.channel import key_metadata
from atari_trtis_demo.core.addresses import is_loopback
from atari_trtis_demo.core.keys import ADMIN_HEADER, PLAYER_HEADER
from atari_trtis_demo.kserve import kserve_v2_pb2 as pb
from atari_trtis_demo.kserve.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from atari_trtis_demo.serving.serve import serving, start_server
from atari_trtis_demo.serving.serve_security import (
    Access,
    grpc_metadata,
    http_address,
    numeric_address,
    triton_address,
)
from atari_trtis_demo.serving.serve_supervisor import supervise
from atari_trtis_demo.serving.triton_workdir import SHM_DIR, LogPump, processes_using, shm_regions_of

PLAYER_KEY = "player-secret-1"
ADMIN_KEY = "owner-secret-1"


def frames(n: int = 1) -> np.ndarray:
    return np.random.default_rng(0).random((n, 4, 84, 84), dtype=np.float32)


def infer(url: str, headers: dict[str, str] | None = None, **client_kwargs: object) -> np.ndarray:
    """One inference of model 'atari' with the official gRPC client: its Q-values."""
    with triton.InferenceServerClient(url, **client_kwargs) as client:
        tensor = triton.InferInput("input", [1, 4, 84, 84], "FP32")
        tensor.set_data_from_numpy(frames())
        return client.infer("atari", [tensor], headers=headers, client_timeout=10).as_numpy("action")


def answers_again_within(url: str, seconds: float) -> float:
    """Seconds until ``url`` answers an inference again; fails after ``seconds``."""
    start = time.monotonic()
    while True:
        try:
            assert infer(url).shape == (1, 4)
            return time.monotonic() - start
        except InferenceServerException:
            assert time.monotonic() - start < seconds, f"no answer within {seconds} s"
            time.sleep(0.2)


# --- 1 and 7: the owner's protocols -------------------------------------------------------------------------


def test_admin_protocols_refuse_a_client_without_the_owners_key_over_grpc_and_http(server) -> None:
    """The issue's first attack: register the python backend's own /dev/shm region, then set log verbosity."""
    regions = sorted(server.shm_regions)
    assert regions, "the twin's stub runs with its region"
    target = regions[0]
    grpc_url, http_url = f"127.0.0.1:{server.grpc_port}", f"127.0.0.1:{server.http_port}"
    with triton.InferenceServerClient(grpc_url) as client:
        with pytest.raises(InferenceServerException, match="restricted"):
            client.register_system_shared_memory("stolen", "/" + target, 64)
        with pytest.raises(InferenceServerException, match="restricted"):
            client.update_log_settings({"log_verbose_level": 9})
        with pytest.raises(InferenceServerException, match="restricted"):
            client.get_system_shared_memory_status()
        assert client.is_server_ready() and infer(grpc_url).shape == (1, 4), "players are not affected"
    with triton_http.InferenceServerClient(http_url) as client:
        with pytest.raises(InferenceServerException, match="restricted"):
            client.register_system_shared_memory("stolen", "/" + target, 64)
        with pytest.raises(InferenceServerException, match="restricted"):
            client.update_log_settings({"log_verbose_level": 9})
    # The owner, with the key from the file only its user may read, still can.
    key = server.admin_key_file.read_text().strip()
    assert server.admin_key_file.stat().st_mode & 0o777 == 0o600 and key == server.access.admin_key
    with triton.InferenceServerClient(grpc_url) as client:
        owner = dict([grpc_metadata(ADMIN_HEADER, key)])
        assert "log_format" in client.get_log_settings(headers=owner, as_json=True)["settings"]
    with triton_http.InferenceServerClient(http_url) as client:
        assert client.get_system_shared_memory_status(headers={ADMIN_HEADER: key}) == []


# --- 2: the players' key, over TLS (3) ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(repository: Path, certificate: tuple[Path, Path]):
    """A Triton with the players' key and TLS on gRPC."""
    http, grpc_port, metrics = free_ports(3)
    access = Access(ADMIN_KEY, PLAYER_KEY, admin_key_generated=False)
    with serving(
        repository, http_port=http, grpc_port=grpc_port, metrics_port=metrics, access=access, tls=certificate
    ) as running:
        yield running


def secure_stub(port: int, cert: Path) -> tuple[grpc.Channel, GRPCInferenceServiceStub]:
    channel = grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(cert.read_bytes()))
    return channel, GRPCInferenceServiceStub(channel)


def test_with_a_player_key_only_health_is_open_and_a_wrong_key_is_refused(guarded, certificate) -> None:
    cert = certificate[0]
    channel, stub = secure_stub(guarded.grpc_port, cert)
    with channel:
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=5).ready, "health needs no key"
        assert stub.ModelReady(pb.ModelReadyRequest(name="atari"), timeout=5).ready
        for metadata in (None, [(PLAYER_HEADER, PLAYER_KEY)], [grpc_metadata(PLAYER_HEADER, "wrong-key")]):
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelMetadata(pb.ModelMetadataRequest(name="atari"), timeout=5, metadata=metadata)
            # What players see (the client maps it to one line naming ATARI_DEMO_KEY).
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert refused.value.details() == (
                "This protocol is restricted, expecting header 'triton-grpc-protocol-atari-demo-key'"
            )
        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="atari"), timeout=5, metadata=key_metadata(PLAYER_KEY))
        assert meta.name == "atari"
    url, tls = f"127.0.0.1:{guarded.grpc_port}", {"ssl": True, "root_certificates": str(cert)}
    with pytest.raises(InferenceServerException, match="restricted"):
        infer(url, **tls)
    with pytest.raises(InferenceServerException, match="restricted"):
        infer(url, dict([grpc_metadata(PLAYER_HEADER, "wrong-key")]), **tls)
    assert infer(url, dict([grpc_metadata(PLAYER_HEADER, PLAYER_KEY)]), **tls).shape == (1, 4)
    # HTTP: the header as named, 403 without it; health open.
    base = f"http://127.0.0.1:{guarded.http_port}"
    assert urllib.request.urlopen(f"{base}/v2/health/ready", timeout=5).status == 200
    with pytest.raises(urllib.error.HTTPError) as forbidden:
        urllib.request.urlopen(f"{base}/v2/models/atari", timeout=5)
    assert forbidden.value.code == 403 and PLAYER_HEADER in forbidden.value.read().decode()
    keyed = urllib.request.Request(f"{base}/v2/models/atari", headers={PLAYER_HEADER: PLAYER_KEY})
    assert json.loads(urllib.request.urlopen(keyed, timeout=5).read())["name"] == "atari"


def test_tls_server_refuses_plain_grpc_and_answers_over_tls(guarded, certificate) -> None:
    plain = grpc.insecure_channel(f"127.0.0.1:{guarded.grpc_port}")
    with plain:
        with pytest.raises(grpc.RpcError) as refused:
            GRPCInferenceServiceStub(plain).ServerReady(pb.ServerReadyRequest(), timeout=3)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    channel, stub = secure_stub(guarded.grpc_port, certificate[0])
    with channel:
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"], ["--tls-cert", "cannot read"]),
        (["--tls-cert", "CERT"], ["--tls-key", "missing"]),
        (["--tls-cert", "CERT", "--tls-key", "CERT"], ["--tls-key", "private key"]),
    ],
)
def test_bad_tls_files_are_one_line_naming_the_flag(repository: Path, certificate, flags, words) -> None:
    flags = [str(certificate[0]) if f == "CERT" else f for f in flags]
    result = run_command(SERVE, "--model-repository", str(repository), *flags, timeout=60)
    one_error_line(result, *words, alone=True)


def test_a_key_unusable_as_a_header_is_one_line_naming_its_variable(repository: Path) -> None:
    for variable in ("ATARI_DEMO_KEY", "ATARI_DEMO_ADMIN_KEY"):
        for bad in ("", "two words", "a:b=c"):
            result = run_command(SERVE, "--model-repository", str(repository), env={variable: bad}, timeout=60)
            one_error_line(result, variable, alone=True)


def test_the_owner_may_give_the_admin_key_then_no_file_is_written(tmp_path: Path) -> None:
    given = Access.from_environment({"ATARI_DEMO_ADMIN_KEY": ADMIN_KEY})
    assert given.admin_key == ADMIN_KEY and given.write_admin_key(tmp_path) is None and not list(tmp_path.iterdir())
    made, again = Access.from_environment({}), Access.from_environment({})
    assert made.admin_key != again.admin_key and len(made.admin_key) >= 40, "a fresh secret each start"
    assert made.player_key is None and "--grpc-restricted-protocol" in " ".join(made.triton_flags())


# --- 2 and 4: addresses other than loopback ------------------------------------------------------------------------

NOT_HERE = "198.51.100.7"  # TEST-NET-2: not loopback and not on this machine, so nothing can bind it by mistake


def test_a_non_loopback_address_needs_the_players_key() -> None:
    result = run_command(SERVE, "--model-repository", "unused", "--address", NOT_HERE, timeout=60)
    one_error_line(result, "ATARI_DEMO_KEY", f"--address {NOT_HERE}", "--no-key", alone=True)


def test_no_key_warns_then_goes_on(repository: Path) -> None:
    result = run_command(SERVE, "--model-repository", str(repository), "--address", NOT_HERE, "--no-key", timeout=60)
    assert "warning: --no-key: anyone who reaches" in result.stderr
    one_error_line(result, f"--address {NOT_HERE}", "cannot listen there")  # the address's own fault, named


def test_http_and_metrics_stay_on_loopback_unless_exposed() -> None:
    assert http_address("0.0.0.0", expose_http=False) == "127.0.0.1"
    assert http_address("192.0.2.2", expose_http=False) == "127.0.0.1"
    assert http_address("192.0.2.2", expose_http=True) == "192.0.2.2"
    assert http_address("::1", expose_http=False) == "::1"
    assert all(is_loopback(a) for a in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(a) for a in ("0.0.0.0", "::", "192.0.2.2", "fd00::2"))
    # Triton's HTTP server takes numbers only: a name made it listen on 255.255.255.255.
    assert numeric_address("localhost") in ("127.0.0.1", "::1") and numeric_address("[::1]") == "::1"
    help_text = run_command(SERVE, "--help", timeout=60).stdout
    assert "CVE-2025-23310" in help_text and "CVE-2025-23311" in help_text


# --- 6: IPv6 loopback --------------------------------------------------------------------------------------------


def test_ipv6_loopback_serves(repository: Path) -> None:
    """Triton was given '::1' unbracketed and said 'port in use' with nothing listening."""
    http, grpc_port, metrics = free_ports(3)
    with serving(repository, address="::1", http_port=http, grpc_port=grpc_port, metrics_port=metrics) as running:
        assert running.grpc_target == f"[::1]:{grpc_port}" == f"{triton_address('::1')}:{grpc_port}"
        assert infer(running.grpc_target).shape == (1, 4)
        with socket.create_connection(("::1", http)):
            pass


# --- 4: the log stays bounded, Triton gets the hard file limit ------------------------------------------------------


def test_triton_log_is_capped_whatever_is_written(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    log = tmp_path / "tritonserver.log"
    pump = LogPump(read_end, log, limit=100_000)
    line = b"E1129 http_server.cc] Error from accept(): Too many open files\n"
    with os.fdopen(write_end, "wb") as out:
        for _ in range(20_000):  # 1.2 MB, 12 times the limit
            out.write(line)
    pump.join(10)
    parts = [log, log.with_name(log.name + ".1")]
    assert all(p.stat().st_size <= 100_000 for p in parts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tritonserver.log", "tritonserver.log.1"]
    assert log.read_bytes().endswith(line), "the newest lines are kept"


def test_triton_runs_with_the_hard_open_file_limit(server) -> None:
    limits = Path(f"/proc/{server.process.pid}/limits").read_text()
    row = next(r for r in limits.splitlines() if r.startswith("Max open files")).split()
    assert row[3] == row[4], row  # soft == hard


# --- 5: a dying Triton is restarted; a wedged one is stopped -------------------------------------------------------


@pytest.fixture(scope="module")
def served(repository: Path, tmp_path_factory: pytest.TempPathFactory):
    """A ``serve`` command running for this module's restart tests, stderr in a file."""
    stderr = tmp_path_factory.mktemp("served") / "serve.err"
    started = start_serve(repository, stderr=stderr.open("w"))
    proc, workdir = started.proc, started.workdir
    yield proc, started.grpc_port, started.http_port, workdir, stderr
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr.read_text()[-2000:]
    assert processes_using(workdir) == [] and not Path(workdir).exists()


def test_kill_9_of_tritonserver_is_healed_on_the_same_port_and_its_shm_removed(served) -> None:
    proc, grpc_port, _, workdir, stderr = served
    url = f"127.0.0.1:{grpc_port}"
    assert infer(url).shape == (1, 4)
    regions = shm_regions_of(Path(workdir))
    assert regions and all((SHM_DIR / r).exists() for r in regions)
    os.kill(tritonserver_pid(workdir), signal.SIGKILL)
    back = answers_again_within(url, 15)
    assert proc.poll() is None, "serve lives on"
    assert not any((SHM_DIR / r).exists() for r in regions), "the dead server's shared memory is gone"
    text = stderr.read_text()
    assert "tritonserver was killed by SIGKILL; restarting it on the same ports" in text, text
    print(f"answers again {back:.1f} s after kill -9")


def test_a_sync_player_rides_through_a_crash_and_restart(repository: Path, tmp_path: Path) -> None:
    """Issue 15 item 6 end to end: Triton killed under a sync player; serve restarts it, the game goes on.

    A serve of its own: the module's ``served`` already dies four times in its other tests, and a
    fifth death within 5 minutes would (rightly) end it.
    """
    started = start_serve(repository, stderr=(tmp_path / "serve.err").open("w"))
    proc, grpc_port, workdir = started.proc, started.grpc_port, started.workdir
    stats = tmp_path / "stats.json"
    player = start_command(
        REMOTE, "--host", "127.0.0.1", "--port", str(grpc_port), "--sync", "--headless", "--max-steps", "150",
        "--json", str(stats), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for_answers(started, "atari", 40)  # a few seconds of play at 15 steps/s
        assert player.poll() is None, player.communicate()
        os.kill(tritonserver_pid(workdir), signal.SIGKILL)
        out, err = player.communicate(timeout=90)
    finally:
        for process in (player, proc):  # a failed check must not leave a player or a server running
            if process.poll() is None and (process is player or player.returncode != 0):
                process.kill()
    assert player.returncode == 0, (out[-2000:], err[-2000:])
    figures = json.loads(stats.read_text())
    assert figures["steps"] == 150 and figures["error"] is None, figures
    assert figures["outage"]["outages"] >= 1 and figures["outage"]["seconds_without_server"] > 0, figures["outage"]
    assert "the server answers again" in out, out[-2000:]
    assert proc.poll() is None, "serve lives on"
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 0 and not Path(workdir).exists()


def gzip_bomb(expanded: int = 2**31, piece: int = 2**20) -> bytes:
    """A gzip body of about 2 MB expanding to ``expanded`` zero bytes, built in well under a second.

    Each full-flushed 1 MiB of zeros compresses to the same bytes, so one piece is repeated.
    """
    zeros = bytes(piece)
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    head = packer.compress(zeros) + packer.flush(zlib.Z_FULL_FLUSH)
    body = packer.compress(zeros) + packer.flush(zlib.Z_FULL_FLUSH)
    tail = packer.flush()[:-8]  # the final empty block; the trailer below covers every piece
    crc = 0
    for _ in range(expanded // piece):
        crc = zlib.crc32(zeros, crc)
    return head + body * (expanded // piece - 1) + tail + struct.pack("<II", crc, expanded & 0xFFFFFFFF)


def http_payload(kind: str) -> bytes:
    """One of the published HTTP requests that crash this Triton (CVE-2025-23310/23311), as raw bytes."""
    path = b"POST /v2/models/atari/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    if kind == "nested":
        body = b'{"inputs":[{"name":"input","shape":[1],"datatype":"FP32","data":' + b"[" * 40_000 + b"]" * 40_000
        body += b"}]}"
        return path + b"Content-Length: %d\r\n\r\n" % len(body) + body
    if kind == "gzip":
        body = gzip_bomb()
        return path + b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    return path + b"Transfer-Encoding: chunked\r\n\r\n" + b"1\r\n[\r\n" * 600_000 + b"0\r\n\r\n"


@pytest.mark.parametrize("kind", ["nested", "gzip", "chunks"])
def test_published_http_crash_payloads_leave_inference_answering_within_15_s(served, kind: str) -> None:
    proc, grpc_port, http, workdir, _ = served
    url = f"127.0.0.1:{grpc_port}"
    answers_again_within(url, 30)  # a restart after the previous payload may still be under way
    before = tritonserver_pid(workdir)
    payload = http_payload(kind)
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", http), timeout=30) as attacker:
        try:
            attacker.sendall(payload)
            # The attack ends when Triton answers or drops the connection, dying: the gzip body
            # took about 22 s to expand (2 GiB) before Triton aborted.
            attacker.settimeout(60)
            attacker.recv(4096)
        except OSError:
            pass
    attack = time.monotonic() - start
    back = answers_again_within(url, 15)
    assert proc.poll() is None
    died = tritonserver_pid(workdir) != before
    print(f"{kind}: attack {attack:.1f} s, Triton {'died' if died else 'lived'}, answers again {back:.1f} s after")


def test_sigterm_stops_a_wedged_server_in_under_5_s_leaving_nothing(repository: Path, tmp_path: Path) -> None:
    started = start_serve(repository, stderr=(tmp_path / "serve.err").open("w"))
    proc, workdir = started.proc, started.workdir
    regions = shm_regions_of(Path(workdir))
    pids = processes_using(workdir)
    os.kill(tritonserver_pid(workdir), signal.SIGSTOP)  # wedged: answers nothing, ignores SIGTERM
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    took = time.monotonic() - start
    assert took < 5, f"took {took:.1f} s"
    assert proc.returncode == 0
    assert pids and processes_using(workdir) == [], "no tritonserver or stub left (a zombie has no command line)"
    assert not Path(workdir).exists()
    assert regions and not any((SHM_DIR / r).exists() for r in regions)


def test_five_deaths_in_five_minutes_end_serve_in_one_line(repository: Path, capsys: pytest.CaptureFixture) -> None:
    """With a limit of 2 to keep it short: the second death is not restarted, exit code 1.

    Checks only this server's regions (its workdir's prefix): other servers on the machine come and go.
    """
    http, grpc_port, metrics = free_ports(3)
    server = start_server(repository, http_port=http, grpc_port=grpc_port, metrics_port=metrics)
    assert server.shm_regions, "the twin's stub has its region"
    first_envs = set(server.python_envs)
    assert first_envs and all(p.is_dir() for p in first_envs), "the python backend's directory in /tmp"
    said: list[str] = []
    result: list[int] = []
    watcher = threading.Thread(
        target=lambda: result.append(supervise(server, stopping=lambda: False, max_crashes=2, say=said.append))
    )
    try:
        watcher.start()
        for _ in range(2):
            dying = server.process
            dying.kill()
            # A restart on a loaded machine can take a minute: wait for the new process, not a time.
            deadline = time.monotonic() + 180
            while server.process is dying and watcher.is_alive() and time.monotonic() < deadline:
                time.sleep(0.1)
        watcher.join(180)
        assert result == [1]
        assert any("tritonserver was killed by SIGKILL; restarting" in s for s in said), said
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "died 2 times within 5 minutes" in errors[0], errors
    finally:
        server.stop()
    assert not server.workdir.exists()
    assert not server.shm_regions, "every dead server's /dev/shm regions are removed"
    assert not [p for p in first_envs if p.exists()], "a killed Triton's python-backend directory is removed"
    Path(errors[0].rsplit("Triton's log: ", 1)[1].rstrip(")")).unlink()  # the copy kept for the owner
