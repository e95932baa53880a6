"""Many real-time games through one tritonserver: CPU per game step against the floor, and the largest N that holds.

    .venv/bin/python bench/bench_games.py [--steps 150] [--games 64,96,112,128,144] [--baseline REF]
        [--baseline-games 16,24,32,48] [--separate 16,24,32] [--workers 2] [--game pong] [--port 18601]

First the floor of one game step, measured in this run: ale-py's ``AtariVectorEnv``
(``--floor-games`` games, one thread, its own C++ preprocessing: frame skip, max-pool,
grayscale, resize, stack) plus onnxruntime's forward of the served model.onnx per
stack at the wave's batch (one thread, no spinning, as serve's twin runs it). The
floor's real-time N is cores / (15 steps/s x floor).

Then sides, all in this run, against one server on 127.0.0.1 started here (the
converter's config), each at the ``--games`` N in turn until one fails real time
(every game >= ``--min-rate`` steps/s and its round-trip p99 < one agent step):

- ``new``: this tree's ``src/app.py --games N --headless --sync`` (waves, vector banks);
- ``old``: ``--baseline``'s (a git ref of this repository, checked out into a
  temporary worktree): one request per game and step, the wrappers' envs;
- ``K workers``: this tree with ``--workers K``;
- ``separate``: N separate ``src/app.py --headless --sync`` players of this tree.

Each run gives the client's and the server's CPU per game step in play, their sum's
ratio to the floor, and Triton's account of its time (per request and per stack).
The client's CPU is the play loop's (seeded resets and imports left out), from a
line each player prints around its ``PlayLoop.play``; the server's is Triton's
process group's (Triton and the twin's stub) between the first player's start of
play and the last one's end. An unpaced run (``--fps 0``) of old and new at
``--unpaced-games`` gives the CPU per game step without the pace's idle time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from player_child import PLAY_LINE, measured_play
from triton_stats import ServerBreakdown, delta, metrics_url, read_metrics, wait_for_metrics

from atari_trtis_demo.convert.convert_config import ConvertOptions
from atari_trtis_demo.convert.onnx_export import convert
from atari_trtis_demo.serving.serve import serving
from atari_trtis_demo.serving.triton_process import TritonServer
from atari_trtis_demo.train.agent import make_agent

ROOT = Path(__file__).resolve().parents[1]
STEP_MS = 1000 / 15
# Runs src/app.py of the tree in argv[1] (its package first on the path), printing the CPU its play loop
# spent between markers; the games start (seeded resets) before the first marker, and a player waits for
# the common start time argv[2] (separate players begin together).
PLAYER = """import os, sys, time
sys.path.insert(0, sys.argv[1])
import atari_trtis_demo.play.play_loop as pl
from atari_trtis_demo.play.play_cli import remote_main
def cpu():
    t = os.times()
    return t.user + t.system
def measured(self, play=pl.PlayLoop.play):
    if hasattr(self, "start_games"):
        if not self.started:
            self.start_games()
    else:  # the one-request-per-game loop
        for g in self.games:
            if g.obs is None:
                g.start_episode()
    time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
    print("bench: play begins", flush=True)
""" + measured_play(first_flag=3)
WORKERS_LINE = re.compile(r"worker processes: client CPU in play ([0-9.]+) s")


def floor_ms(game: str, onnx_file: Path, games: int, batch: int, steps: int = 150) -> tuple[float, float]:
    """(vector env ms, forward ms) of CPU per game step: the floor's two parts."""
    import onnxruntime as ort
    from ale_py.vector_env import AtariVectorEnv

    env = AtariVectorEnv(game, games, num_threads=1)
    env.reset(seed=0)
    actions = np.random.default_rng(0).integers(0, env.single_action_space.n, (steps, games))
    start = time.process_time()
    for row in actions:
        observations, *_ = env.step(row)
    env_ms = 1e3 * (time.process_time() - start) / (steps * games)
    env.close()
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    stacks = (observations[:batch].astype(np.float32) / 255).repeat(-(-batch // len(observations)), axis=0)[:batch]
    for _ in range(5):
        session.run(None, {"input": stacks})
    start, runs = time.process_time(), 60
    for _ in range(runs):
        session.run(None, {"input": stacks})
    forward_ms = 1e3 * (time.process_time() - start) / (runs * batch)
    return env_ms, forward_ms


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu_seconds(server: TritonServer) -> float:
    """CPU seconds of every process in Triton's process group (Triton and the backend stubs)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        try:
            pgrp = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[2])
        except (OSError, ValueError, IndexError):
            continue
        if pgrp == server.process.pid:
            total += cpu_seconds(int(entry))
    return total


@dataclass
class Window:
    """The server's CPU and counters between the first player's start of play and the last one's end."""

    server: TritonServer
    url: str
    players: int
    began: int = 0
    ended: int = 0
    cpu: float = 0.0
    counters: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def begins(self) -> None:
        with self.lock:
            self.began += 1
            if self.began == 1:
                self.cpu, self.counters = -server_cpu_seconds(self.server), read_metrics(self.url)

    def ends(self) -> None:
        with self.lock:
            self.ended += 1
            if self.ended == self.players:
                self.cpu += server_cpu_seconds(self.server)
                self.counters = delta(self.counters, read_metrics(self.url))


def run_players(commands: list[list[str]], window: Window, tmp: Path) -> str:
    """Run the players to their end, feeding ``window`` their start and end of play; their outputs."""
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy"}
    outputs: list[str] = [""] * len(commands)

    def follow(i: int, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            outputs[i] += line
            # Workers print no markers: their parent's lines around their play stand for them.
            if line.startswith("bench: play begins") or line.endswith("worker processes: playing\n"):
                window.begins()
            elif line.startswith("bench: client CPU in play") or WORKERS_LINE.search(line):
                window.ends()

    procs = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp)
        for c in commands
    ]
    threads = [threading.Thread(target=follow, args=(i, p)) for i, p in enumerate(procs)]
    for t in threads:
        t.start()
    for proc, t in zip(procs, threads, strict=True):
        t.join()
        if proc.wait() != 0:
            raise SystemExit(f"{commands[0][-8:]}: exit {proc.returncode}: {proc.stderr.read()[-2000:]}")
    return "".join(outputs)


def side(
    server: TritonServer, tree: Path, n: int, steps: int, tmp: Path, *, separate: bool, workers: int, fps: float
) -> dict:
    start_at = time.time() + (3.0 + 0.4 * n if separate else 0.0)
    base = [sys.executable, "-c", PLAYER, str(tree), str(start_at), "--host", "127.0.0.1"]
    base += ["--port", str(server.grpc_port), "--headless", "--sync", "--max-steps", str(steps), "--fps", str(fps)]
    if separate:
        commands = [[*base, "--seed", str(i), "--json", str(tmp / f"p{i}.json")] for i in range(n)]
    else:
        commands = [[*base, "--games", str(n), "--json", str(tmp / "games.json")]]
        commands[0] += ["--workers", str(workers)] if workers > 1 else []
    window = Window(server, metrics_url(server.address, server.metrics_port), len(commands))
    stdout = run_players(commands, window, tmp)
    if separate:
        games = [json.loads((tmp / f"p{i}.json").read_text()) for i in range(n)]
    else:
        games = json.loads((tmp / "games.json").read_text())["games"]
    total_steps = sum(g["steps"] for g in games)
    found = WORKERS_LINE.search(stdout)
    client_cpu = float(found.group(1)) if workers > 1 and found else sum(map(float, PLAY_LINE.findall(stdout)))
    return {
        "n": n,
        "min_rate": min(g["steps_per_second"] for g in games),
        "max_p99": max(g["latency_ms"]["p99_ms"] for g in games),
        "client_ms": 1e3 * client_cpu / max(total_steps, 1),
        "server_ms": 1e3 * window.cpu / max(total_steps, 1),
        "breakdown": ServerBreakdown.of(window.counters),
    }


def show(name: str, r: dict, floor: float, held: bool | None) -> None:
    total = r["client_ms"] + r["server_ms"]
    verdict = "" if held is None else "holds  " if held else "FAILS  "
    b: ServerBreakdown = r["breakdown"]
    print(
        f"  {name:10s} N={r['n']:3d}  {verdict}slowest game {r['min_rate']:5.2f} steps/s, worst p99 "
        f"{r['max_p99']:6.1f} ms; CPU per game step: client {r['client_ms']:.3f} + server {r['server_ms']:.3f} "
        f"= {total:.3f} ms = {total / floor:.2f}x the floor\n              {b.line()}",
        flush=True,
    )


def baseline_tree(ref: str, into: Path) -> Path:
    tree = into / "baseline"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), ref], check=True, capture_output=True
    )
    return tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150, help="agent steps per game (150: 10 s at 15/s)")
    parser.add_argument("--games", default="64,96,112,128,144", help="N to try for this tree, ascending")
    parser.add_argument("--baseline", default="41fab34", help="git ref of the old path ('' for none)")
    parser.add_argument("--baseline-games", default="16,24,32,48", help="N to try for the old path")
    parser.add_argument("--separate", default="16,24,32", help="N to try with separate players ('' for none)")
    parser.add_argument("--workers", default="", help="K worker processes to try, comma-separated ('' for none)")
    parser.add_argument("--unpaced-games", type=int, default=64, help="N of the unpaced (--fps 0) run; 0: none")
    parser.add_argument("--game", default="pong", help="ROM name (the model plays <Game>NoFrameskip-v4)")
    parser.add_argument("--floor-games", type=int, default=32)
    parser.add_argument("--min-rate", type=float, default=14.7, help="steps/s every game must keep")
    parser.add_argument("--port", type=int, default=18601, help="gRPC port (HTTP and metrics use the next two)")
    args = parser.parse_args()
    env_id = "".join(part.title() for part in args.game.split("_")) + "NoFrameskip-v4"
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        from ale_py.vector_env import AtariVectorEnv

        probe = AtariVectorEnv(args.game, 1, num_threads=1)
        n_actions = int(probe.single_action_space.n)
        probe.close()
        agent = make_agent(n_actions)
        agent.env_id = env_id
        agent.save(str(tmp / "agent"))
        convert(str(tmp / "agent"), repository=str(tmp / "trtismodel"), instance_kind="KIND_CPU")
        batch = ConvertOptions.max_batch_size  # the converter's: the largest wave request
        env_ms, forward_ms = floor_ms(
            args.game, tmp / "trtismodel" / "atari" / "1" / "model.onnx", args.floor_games, batch
        )
        floor = env_ms + forward_ms
        floor_n = cores * 1000 / (15 * floor)
        print(
            f"floor of a game step ({env_id}, {cores} cores): AtariVectorEnv {env_ms:.3f} ms + onnxruntime forward "
            f"per stack at batch {batch} {forward_ms:.3f} ms = {floor:.3f} ms; real-time N the floor allows: "
            f"{cores} x 1000 / (15 x {floor:.3f}) = {floor_n:.0f}",
            flush=True,
        )
        trees = {"new": ROOT}
        if args.baseline:
            trees["old"] = baseline_tree(args.baseline, tmp)
        try:
            with serving(
                tmp / "trtismodel", grpc_port=args.port, http_port=args.port + 1, metrics_port=args.port + 2
            ) as server:
                wait_for_metrics(metrics_url(server.address, server.metrics_port))
                if args.unpaced_games:
                    print(f"\nunpaced (--fps 0), N={args.unpaced_games}, {args.steps} steps per game:")
                    for name, tree in trees.items():
                        r = side(server, tree, args.unpaced_games, args.steps, tmp, separate=False, workers=1, fps=0)
                        show(name, r, floor, None)
                print(f"\nreal time: every game >= {args.min_rate} steps/s and its p99 < {STEP_MS:.1f} ms")
                sides = [("new", ROOT, args.games, False, 1)]
                sides += [("old", trees["old"], args.baseline_games, False, 1)] if args.baseline else []
                sides += [(f"{k} workers", ROOT, args.games, False, int(k)) for k in args.workers.split(",") if k]
                sides += [("separate", ROOT, args.separate, True, 1)] if args.separate else []
                largest: dict[str, int] = {}
                for name, tree, ns, separate, workers in sides:
                    largest[name] = 0
                    for n in map(int, ns.split(",")):
                        r = side(server, tree, n, args.steps, tmp, separate=separate, workers=workers, fps=15)
                        held = r["min_rate"] >= args.min_rate and r["max_p99"] < STEP_MS
                        show(name, r, floor, held)
                        if not held:
                            break
                        largest[name] = n
        finally:
            if args.baseline:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(trees["old"])], check=False
                )
    print(f"\nlargest N that holds real time (the floor allows {floor_n:.0f}):")
    for name, n in largest.items():
        print(f"  {name:10s} {n:4d}  ({n / floor_n:.2f}x the floor's N)")


if __name__ == "__main__":
    main()
