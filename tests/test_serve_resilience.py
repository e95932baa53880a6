"""``serve`` keeps serving through what an operator meets (issue 23, items 3, 4, 5): a wedged Triton,
a full disk under the workdir, and HTTP left out altogether.

Real tritonserver processes started by the ``serve`` command; the wedge is a SIGSTOP, the full
disk is ``/dev/full`` under the log pump and a small tmpfs in a mount namespace of the test's own.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from helpers import (
    REMOTE,
    ROOT,
    SERVE,
    Player,
    command,
    command_env,
    free_ports,
    run_command,
    start_serve,
    tritonserver_pid,
)

from atari_trtis_demo.client.inference_client import InferenceClient
from atari_trtis_demo.serving.triton_workdir import LogPump

LOG_WARNING = "warning: cannot write Triton's log"


def wait_for_text(path: Path, text: str, timeout: float) -> str:
    """The file's text once it holds ``text``; fails after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while text not in (content := path.read_text()):
        assert time.monotonic() < deadline, f"no '{text}' within {timeout} s: {content[-2000:]}"
        time.sleep(0.2)
    return content


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)


# --- 3: a wedged Triton is noticed, killed and restarted; a sync player rides it out -----------------------------


def inferences(grpc_port: int) -> int:
    with triton.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
        stats = client.get_inference_statistics("atari", as_json=True)["model_stats"]
    return sum(int(s["inference_stats"].get("success", {}).get("count", 0)) for s in stats)


def test_a_wedged_tritonserver_is_restarted_and_a_sync_player_rides_it_out(repository: Path, tmp_path: Path) -> None:
    stderr = tmp_path / "serve.err"
    started = start_serve(repository, stderr=stderr.open("w"))
    proc, grpc_port, workdir = started.proc, started.grpc_port, started.workdir
    stats = tmp_path / "stats.json"
    player = Player(
        "--host", "127.0.0.1", "--port", str(grpc_port), "--sync", "--headless", "--fps", "15",
        "--max-steps", "100", "--timeout", "2", "--reconnect", "120", "--json", str(stats),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while inferences(grpc_port) == 0:  # the player is playing through this Triton
            assert player.proc.poll() is None and time.monotonic() < deadline, player.finish()
            time.sleep(0.2)
        wedged = tritonserver_pid(workdir)
        os.kill(wedged, signal.SIGSTOP)  # alive, answers nothing
        text = wait_for_text(stderr, "tritonserver restarted", 180)
        result = player.finish(timeout=180)
    finally:
        if player.proc.poll() is None:
            player.proc.kill()
        stop(proc)
    assert "answered no health check for 10 s (wedged); restarting it on the same ports" in text, text
    assert not Path(f"/proc/{wedged}").exists(), "the wedged process was killed"
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(stats.read_text())
    assert figures["steps"] == 100 and figures["error"] is None, figures
    assert figures["outage"]["outages"] >= 1, figures["outage"]
    assert proc.returncode == 0 and not Path(workdir).exists()


# --- 4: a full disk never stops serving --------------------------------------------------------------------------


def test_the_log_pump_drains_the_pipe_when_the_disk_is_full(tmp_path: Path) -> None:
    """/dev/full fails every write with ENOSPC: the pump's own failure used to end it, the pipe filled
    and Triton blocked on its next log line."""
    log = tmp_path / "tritonserver.log"
    log.symlink_to("/dev/full")
    read_end, write_end = os.pipe()
    said: list[str] = []
    pump = LogPump(read_end, log, warn=said.append)
    line = b"I1203 model_lifecycle.cc] a line Triton logs for every request at --log-verbose 1\n"
    writer = threading.Thread(target=lambda: os.write(write_end, line * 40_000))  # 3.2 MB, 50 pipes' worth
    writer.start()
    writer.join(60)
    assert not writer.is_alive(), "the pipe kept draining"
    os.close(write_end)
    pump.join(10)
    assert not pump._thread.is_alive(), "the pump ends with the pipe"
    assert len(said) == 1 and LOG_WARNING in said[0] and "No space left" in said[0], said
    assert pump.dropped == len(line) * 40_000 and pump.text().startswith(line.decode())


def namespaces_work() -> bool:
    try:
        done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


# serve run with $TMPDIR on a tmpfs of its own (a mount namespace, no privileges needed), filled
# before serve starts up to the last 256 KiB: Triton's start takes about 30 KB there, then the
# log of its requests fills the rest.
FULL_TMPFS = (
    'mount -t tmpfs -o size=8m none "$TMPDIR" && head -c $((8 * 1024 * 1024 - 256 * 1024)) /dev/zero '
    '> "$TMPDIR/filler" && exec "$@"'
)


@pytest.mark.skipif(not namespaces_work(), reason="no user and mount namespaces here (the /dev/full test stands)")
def test_serve_goes_on_answering_when_its_temp_folder_fills_up(repository: Path, tmp_path: Path) -> None:
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    http, grpc_port, metrics = free_ports(3)
    serve = command(
        SERVE, "--model-repository", str(repository), "--log-verbose", "1",
        "--http-port", str(http), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics),
    )  # fmt: skip
    stderr = tmp_path / "serve.err"
    proc = subprocess.Popen(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", FULL_TMPFS, "sh", *serve],
        stdout=subprocess.PIPE, stderr=stderr.open("w"), text=True, cwd=ROOT,
        env=command_env({"TMPDIR": str(mount)}),
    )  # fmt: skip
    try:
        assert any(line.startswith("Triton log:") for line in proc.stdout), stderr.read_text()[-2000:]
        frames = np.zeros((4, 84, 84), np.float32)
        with InferenceClient("127.0.0.1", grpc_port, "atari", timeout=30) as client:
            # About 2.4 KB of log each at --log-verbose 1: 300 are 720 KB, past the room left and
            # past the 64 KiB pipe that blocked Triton once nothing drained it.
            answered = sum(client.infer(frames).shape == (4,) for _ in range(300))
        assert answered == 300 and proc.poll() is None
        warnings = [line for line in stderr.read_text().splitlines() if LOG_WARNING in line]
        assert len(warnings) == 1 and "No space left" in warnings[0], stderr.read_text()[-2000:]
    finally:
        stop(proc)
    assert proc.returncode == 0, stderr.read_text()[-2000:]


def test_a_copy_of_the_log_is_kept_only_where_there_is_room(tmp_path: Path) -> None:
    """A file size limit (RLIMIT_FSIZE) fails the copy's writes as a full disk does: no partial copy is left."""
    code = f"""
import resource, signal, sys
from pathlib import Path
from atari_trtis_demo.serving.triton_process import TritonServer
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
workdir = Path({str(tmp_path)!r}) / "atari-triton-abcdefgh"
workdir.mkdir()
(workdir / "tritonserver.log").write_text("E1203 failed to load\\n" * 1000)
server = TritonServer(None, "127.0.0.1", 1, 2, 3, [], workdir, workdir / "tritonserver.log")
print(server.keep_log())
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
print(server.keep_log())
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    kept, refused = done.stdout.splitlines()
    assert kept.startswith("Triton's log: ") and refused.startswith("no copy of Triton's log kept: "), done.stdout
    copies = list(tmp_path.glob("tritonserver-failed-*.log"))
    assert copies == [Path(kept.split(": ", 1)[1])] and copies[0].stat().st_size == 21_000
    assert copies[0].stat().st_mode & 0o777 == 0o600


# --- 5: --no-http: gRPC only ---------------------------------------------------------------------------------------


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (its socket inodes among the LISTEN rows of /proc/net)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_no_http_leaves_only_the_grpc_listener_and_players_play(repository: Path, tmp_path: Path) -> None:
    started = start_serve(repository, "--no-http", stderr=(tmp_path / "serve.err").open("w"))
    proc, grpc_port, http, workdir = started.proc, started.grpc_port, started.http_port, started.workdir
    try:
        assert listening_ports(tritonserver_pid(workdir)) == {grpc_port}, "no HTTP, no metrics"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", http), timeout=5)
        played = run_command(
            REMOTE, "--port", str(grpc_port), "--sync", "--headless", "--fps", "0", "--max-steps", "20", timeout=120
        )
        assert played.returncode == 0, played.stderr[-2000:]
    finally:
        stop(proc)
    assert proc.returncode == 0
