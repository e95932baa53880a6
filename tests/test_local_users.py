"""A hostile user of the same machine against ``serve`` and the player (issue 23, items 1, 2, 6, 7, 8).

A squatter on [::1] at serve's port, planted temp directories and shared-memory names, keys
too long for gRPC's headers, other users reading /dev/shm, and repositories with FIFOs,
device links or a truncated model: each against the real commands and a real tritonserver.
"""

from __future__ import annotations

import concurrent.futures
import json
import mmap
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers import (
    REMOTE,
    SERVE,
    Squatter,
    free_ports,
    one_error_line,
    run_command,
    serving_on_free_ports,
    start_serve,
)
from triton_stats import metrics_url, read_metrics

from atari_trtis_demo.client.channel import grpc_target, loopback_host, player_key
from atari_trtis_demo.client.inference_client import InferenceClient
from atari_trtis_demo.core.errors import UserError
from atari_trtis_demo.core.keys import MAX_KEY_LENGTH, check_key
from atari_trtis_demo.kserve.grpc_service_pb2_grpc import add_GRPCInferenceServiceServicer_to_server
from atari_trtis_demo.serving.serve_security import Access, check_repository_files
from atari_trtis_demo.serving.triton_workdir import (
    OWNER_FILE,
    SHM_DIR,
    clean_stale_workdirs,
    shm_prefix,
    shm_regions_of,
)

KEY_ENV = "ATARI_DEMO_KEY"


# --- 1: the player talks to no address serve does not own ------------------------------------------------------


def test_a_squatter_on_ipv6_loopback_gets_no_call_from_a_default_or_localhost_player(server, tmp_path: Path) -> None:
    squatter = Squatter()
    fake = grpc.server(concurrent.futures.ThreadPoolExecutor(4))
    add_GRPCInferenceServiceServicer_to_server(squatter, fake)
    assert fake.add_insecure_port(f"[::1]:{server.grpc_port}") == server.grpc_port, "the squatter holds [::1]"
    fake.start()
    metrics = metrics_url(server.address, server.metrics_port)
    try:
        for host in ([], ["--host", "localhost"]):
            before = read_metrics(metrics, "atari")["nv_inference_request_success"]
            stats = tmp_path / f"stats{len(host)}.json"
            played = run_command(
                REMOTE, *host, "--port", str(server.grpc_port), "--sync", "--headless", "--fps", "0",
                "--max-steps", "20", "--json", str(stats), env={KEY_ENV: "squatted-k3y"}, timeout=120,
            )  # fmt: skip
            assert played.returncode == 0, played.stderr[-2000:]
            requests = json.loads(stats.read_text())["requests"]
            answered = read_metrics(metrics, "atari")["nv_inference_request_success"] - before
            assert requests == 20 and answered == requests, (host, requests, answered)
        assert squatter.calls == 0 and squatter.keys == [], (squatter.calls, squatter.keys)
    finally:
        fake.stop(0).wait(5)
    assert loopback_host("LOCALHOST") == "127.0.0.1" and grpc_target("localhost", 8001) == "127.0.0.1:8001"
    assert grpc_target("::1", 8001) == "[::1]:8001", "an explicit IPv6 loopback stays as asked"


# --- 2: stale workdirs: only serve's own, processes by whole path, regions by the server's own prefix ---------------


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped): a killed serve's."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def bystander(*args: str) -> subprocess.Popen:
    """A process of this user whose command line names ``args``: what a wrong clean-up would kill."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", *args])


def region(name: str) -> Path:
    path = SHM_DIR / name
    path.write_bytes(bytes(4096))
    return path


def test_a_planted_workdir_kills_nothing_and_unlinks_nothing(tmp_path: Path) -> None:
    """The issue's attack: $TMPDIR/atari-triton-/owner.json with a dead pid matched every workdir by substring,
    and its shm-regions file named other servers' live regions."""
    running = tmp_path / "atari-triton-runnings"  # another server's workdir, as its tritonserver names it
    victims = [bystander(f"--model-repository={running}/repository")]
    live = region(f"triton_python_backend_shm_region_harden_live_{os.getpid()}")
    planted = []
    for name, mode in (("atari-triton-", 0o700), ("atari-triton-aaaaaaaa", 0o755), ("atari-triton-bbbbbbbb", 0o700)):
        folder = tmp_path / name
        folder.mkdir(mode=mode)
        folder.chmod(mode)
        (folder / OWNER_FILE).write_text(json.dumps({"pid": dead_pid()}))
        (folder / "shm-regions").write_text(live.name + "\n")
        victims.append(bystander(f"{folder}/repository/atari/1/model.py"))
        planted.append(folder)
    if os.getuid() == 0:  # another user's directory, named and moded like serve's
        os.chown(planted[2], 65534, 65534)
    else:
        planted[2].chmod(0o701)
    (tmp_path / "atari-triton-cccccccc").symlink_to(planted[2])
    try:
        assert clean_stale_workdirs(str(tmp_path)) == []
        assert all(v.poll() is None for v in victims), [v.args[-1] for v in victims if v.poll() is not None]
        assert live.exists() and all(p.is_dir() for p in planted)
    finally:
        for v in victims:
            v.kill()
            v.wait()
        live.unlink(missing_ok=True)


def test_a_stale_workdir_takes_only_its_own_processes_and_unmapped_regions(tmp_path: Path) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="atari-triton-", dir=tmp_path))
    (workdir / OWNER_FILE).write_text(json.dumps({"pid": dead_pid()}))
    ours = [bystander(f"{workdir}/repository/atari/1/model.py"), bystander(f"--model-repository={workdir}/repository")]
    neighbour = bystander(f"{workdir}-backup/repository")  # the same characters, another directory
    gone, mapped = region(shm_prefix(workdir) + "gone"), region(shm_prefix(workdir) + "mapped")
    with open(mapped, "r+b") as f, mmap.mmap(f.fileno(), 4096) as held:  # a live process maps it
        try:
            assert clean_stale_workdirs(str(tmp_path)) == [workdir]
            for process in ours:
                assert process.wait(10) == -signal.SIGKILL
            assert neighbour.poll() is None, "whole path components only"
            assert not gone.exists() and mapped.exists(), "only regions no process maps"
            assert not workdir.exists()
        finally:
            held.close()
            for process in (*ours, neighbour):
                process.kill()
                process.wait()
            mapped.unlink(missing_ok=True)


def test_each_server_names_its_regions_with_its_own_prefix(server, batching_server) -> None:
    mine, theirs = server.shm_regions, batching_server.shm_regions
    assert mine and theirs and not mine & theirs
    assert all(name.startswith(shm_prefix(server.workdir)) for name in mine)
    assert all((SHM_DIR / name).exists() for name in mine | theirs)


# --- 6: one key syntax and one maximum length for serve and player -----------------------------------------------

KEYS = ["k" * MAX_KEY_LENGTH, "k" * (MAX_KEY_LENGTH + 1), "k" * 6000, "two words", " lead", "trail ", "a:b", "x,y",
        "a=b", "caf\u00e9", "tab\tkey", "k"]  # fmt: skip


@pytest.mark.parametrize("key", KEYS, ids=lambda k: f"{k[:8]!r}x{len(k)}")
def test_serve_and_player_accept_and_refuse_the_same_keys(key: str) -> None:
    def accepts(check) -> bool:
        try:
            check()
        except UserError as e:
            assert KEY_ENV in str(e) and (len(key) < 4 or key not in str(e)), str(e)
            return False
        return True

    by_serve = accepts(lambda: Access.from_environment({KEY_ENV: key}))
    by_player = accepts(lambda: player_key(key))
    assert by_serve == by_player == accepts(lambda: check_key(KEY_ENV, key))
    assert by_serve == (key in ("k" * MAX_KEY_LENGTH, "k"))


def test_a_key_too_long_for_grpc_is_one_line_exit_2_from_both(repository: Path) -> None:
    long_key = "k" * 6000  # started on main, then every player failed with RESOURCE_EXHAUSTED
    served = run_command(SERVE, "--model-repository", str(repository), env={KEY_ENV: long_key}, timeout=60)
    one_error_line(served, KEY_ENV, str(MAX_KEY_LENGTH), alone=True)
    (port,) = free_ports(1)
    for key in (long_key, "two words"):
        played = run_command(REMOTE, "--port", str(port), "--headless", env={KEY_ENV: key}, timeout=60)
        line = one_error_line(played, KEY_ENV, alone=True)
        assert key not in played.stdout + played.stderr and "cannot connect" not in line, line


def test_keys_of_the_maximum_length_work_for_players_and_the_owner(repository: Path) -> None:
    player, admin = "p" * MAX_KEY_LENGTH, "a" * MAX_KEY_LENGTH
    with serving_on_free_ports(repository, access=Access(admin, player, admin_key_generated=False)) as server:
        with InferenceClient("127.0.0.1", server.grpc_port, "atari", key=player) as client:
            frames = np.zeros((4, 84, 84), np.float32)
            assert all(client.infer(frames).shape == (4,) for _ in range(40)), "gRPC refuses large headers at random"
        import tritonclient.grpc as triton

        with triton.InferenceServerClient(f"127.0.0.1:{server.grpc_port}") as owner:
            headers = {"triton-grpc-protocol-atari-admin-key": admin}
            assert "log_format" in owner.get_log_settings(headers=headers, as_json=True)["settings"]


# --- 7: what serve and its Triton create is the owner's alone ----------------------------------------------------


def test_regions_and_workdir_files_are_readable_by_the_owner_only(repository: Path, tmp_path: Path) -> None:
    started = start_serve(repository, stderr=(tmp_path / "serve.err").open("w"))
    proc, workdir = started.proc, started.workdir
    try:
        regions = shm_regions_of(Path(workdir))
        assert regions and all((SHM_DIR / r).stat().st_mode & 0o777 == 0o600 for r in regions), [
            oct((SHM_DIR / r).stat().st_mode) for r in regions
        ]
        files = [p for p in Path(workdir).rglob("*") if not p.is_symlink()]
        assert files and all(p.stat().st_mode & 0o077 == 0 for p in files), [
            (str(p), oct(p.stat().st_mode)) for p in files if p.stat().st_mode & 0o077
        ]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0


# --- 8: a repository is code: special files, links that leave it, a model Triton cannot load ----------------------


def python_model_repository(repository: Path, into: Path) -> Path:
    """A copy of the session repository's python-backend model 'slow' alone: a repository whose models are code."""
    repo = into / "repo"
    shutil.copytree(repository / "slow", repo / "slow")
    return repo


def fifo(path: Path) -> str:
    os.mkfifo(path)
    return "FIFO"


def zero_link(path: Path) -> str:
    path.symlink_to("/dev/zero")
    return "symbolic link leaving"


def version_outside(path: Path) -> str:
    outside = path.parents[3] / "elsewhere"
    shutil.copytree(path.parent, outside)
    (path.parents[1] / "2").symlink_to(outside)
    return "symbolic link leaving"


def unix_socket(path: Path) -> str:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.close()
    return "socket"


@pytest.mark.parametrize("plant", [fifo, zero_link, version_outside, unix_socket], ids=lambda f: f.__name__)
def test_special_files_and_links_leaving_the_repository_are_one_line_exit_2(
    repository: Path, tmp_path: Path, plant
) -> None:
    repo = python_model_repository(repository, tmp_path)
    target = repo / "slow" / "1" / "extra"
    words = plant(target)
    result = run_command(SERVE, "--model-repository", str(repo), *ports_flags(), timeout=60)
    one_error_line(result, words, "slow", alone=True)


def test_links_inside_the_repository_are_fine(repository: Path, tmp_path: Path) -> None:
    repo = python_model_repository(repository, tmp_path)
    (repo / "slow" / "1" / "again.py").symlink_to(repo / "slow" / "1" / "model.py")
    check_repository_files(repo)


def ports_flags() -> list[str]:
    http, grpc_port, metrics = free_ports(3)
    return ["--http-port", str(http), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics)]


def test_a_model_triton_cannot_load_is_one_line_naming_it_and_the_log_is_the_owners(
    repository: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(repository / "atari", repo / "atari")
    onnx = repo / "atari" / "1" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:5000])  # a truncated copy
    result = run_command(SERVE, "--model-repository", str(repo), *ports_flags(), timeout=180)
    line = one_error_line(result, "model 'atari'", "did not load", "Protobuf parsing failed", alone=True)
    assert "At:" not in line and ".py" not in line and len(line) < 700, line
    assert str(onnx) in line, "the user's file, not the workdir's copy"
    kept = Path(line.rsplit("Triton's log: ", 1)[1].rstrip(")"))
    assert kept.parent == Path(tempfile.gettempdir()) and kept.stat().st_mode & 0o777 == 0o600
    kept.unlink()
