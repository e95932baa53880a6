"""Many games over worker processes (``src/app.py --games N --workers K --headless``): a real Triton, real ALE."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers import (
    REMOTE,
    FakeAtariModel,
    answers,
    free_ports,
    one_error_line,
    run_command,
    start_command,
    wait_for_answers,
)
from triton_stats import delta, metrics_url, read_metrics

from atari_trtis_demo.kserve import kserve_v2_pb2 as pb
from atari_trtis_demo.kserve.grpc_service_pb2_grpc import add_GRPCInferenceServiceServicer_to_server
from atari_trtis_demo.play.play_workers import shares

PLAY_KEYS = {"mode", "policy", "episodes", "steps", "seconds", "steps_per_second", "requests", "latency_ms",
             "staleness_steps", "fallback_switches", "error", "stopped_by_user", "outage", "games",
             "client_cpu_seconds", "evaluation", "servers"}  # fmt: skip


def play(server, *flags: str) -> subprocess.CompletedProcess:
    return run_command(REMOTE, "--host", "127.0.0.1", "--port", str(server.grpc_port), *flags, timeout=300)


def children_of(pid: int) -> dict[int, str]:
    """The processes whose parent is ``pid`` (zombies count: they too are left behind), with their command lines."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found[int(entry)] = cmdline
    return found


def workers_of(pid: int) -> list[int]:
    """``pid``'s worker processes: multiprocessing's spawned children, not its resource tracker."""
    return [child for child, cmdline in children_of(pid).items() if "resource_tracker" not in cmdline]


def wait_for_play(player: subprocess.Popen) -> str:
    """The player's output up to its line saying the workers play (they are in play from then on)."""
    assert player.stdout is not None
    head = ""
    while not head.endswith("4 games in 2 worker processes: playing\n"):
        line = player.stdout.readline()
        assert line, (head, player.communicate())
        head += line
    return head


def test_shares_cover_every_game_once() -> None:
    assert shares(5, 2) == [range(0, 2), range(2, 5)]
    assert [g for s in shares(96, 7) for g in s] == list(range(96))
    assert {len(s) for s in shares(96, 7)} <= {13, 14}


def test_two_workers_play_the_same_games_as_one_process(batching_server, tmp_path: Path) -> None:
    """Same games, seeds and model: the same per-game scores and steps, the same report and JSON shape."""
    flags = ["--games", "5", "--headless", "--sync", "--fps", "0", "--max-steps", "60", "--seed", "7"]
    url = metrics_url(batching_server.address, batching_server.metrics_port)
    outcomes = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}.json"
        before = read_metrics(url, "atari")
        result = play(batching_server, *flags, "--workers", str(workers), "--json", str(out))
        assert result.returncode == 0, result.stderr[-3000:]
        figures = json.loads(out.read_text())
        # Triton counts a request a moment after its answer is sent: wait for the players' count, then compare.
        wait_for_answers(
            batching_server, "atari", before["nv_inference_request_success"] + figures["latency_ms"]["count"]
        )
        served = delta(before, read_metrics(url, "atari"))
        # One wave (request) per step for each process's games, every game's stack in it once.
        assert served["nv_inference_request_success"] == figures["latency_ms"]["count"] == 60 * workers
        assert served["nv_inference_count"] == figures["requests"] == figures["steps"]
        outcomes[workers] = (figures, result.stdout)
    (one, one_text), (two, two_text) = outcomes[1], outcomes[2]
    assert set(one) == set(two) == PLAY_KEYS
    assert [set(g) for g in one["games"]] == [set(g) for g in two["games"]]
    assert [g["game"] for g in two["games"]] == list(range(5))
    assert [g["seed"] for g in two["games"]] == [g["seed"] for g in one["games"]]
    assert [g["episodes"] for g in two["games"]] == [g["episodes"] for g in one["games"]], "same scores and steps"
    assert two["evaluation"] == one["evaluation"] and two["episodes"] == one["episodes"]
    assert two["requests"] == sum(g["requests"] for g in two["games"]) == one["requests"]
    assert not two["error"] and not two["stopped_by_user"] and two["mode"] == one["mode"] == "sync"
    # The calls the server answered, as each worker's client counted them (their connection checks too).
    for figures in (one, two):
        assert list(figures["servers"]) == [f"127.0.0.1:{batching_server.grpc_port}"]
        assert figures["servers"][f"127.0.0.1:{batching_server.grpc_port}"] >= figures["latency_ms"]["count"]
    # The report: the same lines, with only the measured figures differing, and where the client's CPU went.
    assert len(two_text.splitlines()) == len(one_text.splitlines()) + 2
    assert "5 games in 2 worker processes: playing" in two_text.splitlines()[:2]
    assert "2 worker processes: client CPU in play" in two_text.splitlines()[-1]
    for line in ("sync play of 5 games", "game 5: scores", "n_episodes: 5 mean:"):
        assert line in one_text and line in two_text
    ev = one["evaluation"]
    assert f"n_episodes: 5 mean: {ev['mean']:g} median: {ev['median']:g}" in two_text


def test_workers_against_a_down_server_is_one_line() -> None:
    (port,) = free_ports(1)
    result = run_command(
        REMOTE, "--host", "127.0.0.1", "--port", str(port), "--games", "4", "--workers", "2", "--headless", timeout=60
    )
    one_error_line(result, "cannot connect to 127.0.0.1", code=1)


def test_workers_whose_server_dies_mid_play_end_in_one_line(repository: Path, tmp_path: Path) -> None:
    """The parent connects, the workers play, the server goes: the error reaches the parent as one line, exit 1."""
    with serving_here(repository) as server:
        player = start_command(
            REMOTE, "--host", "127.0.0.1", "--port", str(server.grpc_port), "--model", "atari", "--games", "4",
            "--workers", "2", "--headless", "--sync", "--reconnect", "0", "--json", str(tmp_path / "s.json"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        wait_for_play(player)
        wait_for_answers(server, "atari", answers(server, "atari") + 10, player=player)  # a few steps of each worker
    out, err = player.communicate(timeout=60)
    result = subprocess.CompletedProcess(player.args, player.returncode, out, err)
    one_error_line(result, "127.0.0.1", code=1)
    figures = json.loads((tmp_path / "s.json").read_text())
    assert figures["error"] and figures["steps"] > 0 and len(figures["games"]) == 4, "statistics up to then"


def serving_here(repository: Path):
    from helpers import serving_on_free_ports

    return serving_on_free_ports(repository)


@pytest.mark.parametrize(
    "flags, words",
    [
        pytest.param(["--games", "4", "--workers", "2"], ["--workers 2", "--headless"], id="window"),
        pytest.param(["--games", "2", "--workers", "3", "--headless"], ["--workers 3", "--games 2"], id="too-many"),
        pytest.param(["--games", "4", "--workers", "0", "--headless"], ["--workers", "between 1 and 64"], id="zero"),
        pytest.param(
            ["--games", "4", "--workers", "2", "--headless", "--record", "x.gif"], ["--workers 2", "--record"], id="rec"
        ),
    ],
)
def test_bad_workers_flags_are_one_line(flags: list[str], words: list[str]) -> None:
    (port,) = free_ports(1)
    result = run_command(REMOTE, "--host", "127.0.0.1", "--port", str(port), *flags, timeout=60)
    one_error_line(result, *words, alone=True)


@pytest.mark.parametrize(
    "stop, group",
    [(signal.SIGINT, False), (signal.SIGINT, True), (signal.SIGTERM, False), (signal.SIGKILL, False)],
    ids=["sigint", "ctrl-c", "sigterm", "kill"],
)
def test_stopping_the_parent_leaves_no_worker_behind(batching_server, stop: int, group: bool, tmp_path: Path) -> None:
    """SIGINT or SIGTERM to the parent alone, or Ctrl-C (SIGINT to the terminal's whole process group)."""
    stats = tmp_path / "stopped.json"
    player = start_command(
        REMOTE, "--host", "127.0.0.1", "--port", str(batching_server.grpc_port), "--games", "4", "--workers", "2",
        "--headless", "--sync", "--json", str(stats), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    head = wait_for_play(player)
    workers = workers_of(player.pid)
    assert len(workers) == 2, children_of(player.pid)
    helpers = list(children_of(player.pid))
    # Into play: a few steps of each worker answered, so that the statistics have something to say.
    wait_for_answers(batching_server, "atari", answers(batching_server, "atari") + 10, player=player)
    if group:  # as a terminal's Ctrl-C: every worker gets it too, and then the parent's own
        os.killpg(player.pid, stop)
    else:  # to the parent alone: it must stop its workers itself
        player.send_signal(stop)
    rest, err = player.communicate(timeout=30)
    out = head + rest
    if stop != signal.SIGKILL:  # a killed parent reports nothing, but its workers die with it (PR_SET_PDEATHSIG)
        assert player.returncode == 0, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        figures = json.loads(stats.read_text())
        assert figures["stopped_by_user"] and figures["steps"] > 0 and len(figures["games"]) == 4
        assert "sync play of 4 games" in out
    if stop == signal.SIGKILL:  # the kernel's SIGKILL to the orphans, and their reaping, take a moment
        deadline = time.monotonic() + 5
        while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} left behind"
    # multiprocessing's resource tracker ends by itself once the parent's pipe closes.
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{pid}").exists() for pid in helpers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in helpers if Path(f"/proc/{pid}").exists()], "a helper process left behind"


class OnePeerLies(FakeAtariModel):
    """A 4-action model that answers every connection well, except the first to ask: NaN after 40 requests."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.liar: str | None = None
        self.asked = 0

    def ModelInfer(self, request, context):
        with self.lock:  # each worker has its own channel: its own peer address
            self.liar = self.liar or context.peer()
            if context.peer() == self.liar:
                self.asked += 1
            lie = context.peer() == self.liar and self.asked > 40
        q = np.full((1, 4), np.nan, "<f4") if lie else np.array([[0.1, 0.4, 0.3, 0.2]], "<f4")
        response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
        response.outputs.add(name="action", datatype="FP32", shape=[1, 4])
        response.raw_output_contents.append(q.tobytes())
        return response


def test_a_failure_in_one_worker_ends_every_game(tmp_path: Path) -> None:
    """As in one process, a bad answer ends play for all games, not only for the worker that got it."""
    server = grpc.server(futures.ThreadPoolExecutor(8))
    add_GRPCInferenceServiceServicer_to_server(OnePeerLies(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        stats = tmp_path / "lie.json"
        result = run_command(
            REMOTE, "--host", "127.0.0.1", "--port", str(port), "--env", "BreakoutNoFrameskip-v4", "--games", "4",
            "--workers", "2", "--headless", "--sync", "--fps", "30", "--episodes", "3", "--json", str(stats),
            timeout=120,
        )  # fmt: skip
    finally:
        server.stop(0)
    one_error_line(result, "not finite", code=1)
    figures = json.loads(stats.read_text())
    assert figures["error"] and not figures["stopped_by_user"]
    for game in figures["games"]:  # the healthy worker's games were stopped too: nobody played on to 3 episodes
        assert [e["end"] for e in game["episodes"]] == ["cut short"], game


def test_async_workers_report_staleness_and_one_request_in_flight_per_game(batching_server, tmp_path: Path) -> None:
    stats = tmp_path / "async.json"
    result = play(
        batching_server, "--games", "4", "--workers", "2", "--headless", "--fps", "0", "--max-steps", "60",
        "--json", str(stats),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(stats.read_text())
    assert figures["mode"] == "async" and figures["staleness_steps"]["max"] >= 1
    assert sum(len(g["episodes"]) for g in figures["games"]) == 4
    for game in figures["games"]:
        answered = game["latency_ms"]["count"]
        assert 1 <= game["requests"] <= game["steps"] and game["requests"] - 1 <= answered <= game["requests"]
    assert "staleness of applied actions" in result.stdout
