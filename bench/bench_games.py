"""Many real-time games through one tritonserver: the largest N that holds 15 agent steps/s.

    .venv/bin/python bench/bench_games.py [--steps 150] [--games 16,32,48,64,80,96,128]

Every side plays Breakout headless at the real-time pace (15 agent steps/s, --sync)
for ``--steps`` agent steps per game against one server on 127.0.0.1 started here, and
*holds* when every game kept at least ``--min-rate`` steps/s with a per-game round-trip
p99 under one agent step (66.7 ms). Sides, all in this one run:

- ``src/app.py --games N`` (one process, N games) against each config variant of the
  same model: dynamic batching with several queue delays, and no dynamic batching;
- ``src/app.py --games N --workers K`` (the N games spread over K worker processes,
  ``--workers``), against the first variant;
- N separate ``src/app.py --headless --sync`` processes (``--separate``).

Client and server CPU are also given per game step (ms). The client's is its CPU in
play, imports and env set-up left out: what each process spent in its play loop (the
start line prints it), or, with workers, their report line (workers and parent).

Every client process imports everything first and starts playing at one common
moment (``BARRIER``), so start-up costs count for neither side.

For each run the server's own figures come from its metrics endpoint (per request:
queue, input, infer, output; executions and the mean batch), with the CPU seconds the
client process(es) and the server's processes (Triton and the twin's stub) used.
The batch-1 round trip is broken down the same way first.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from atari_trtis_demo.convert.onnx_export import convert
from atari_trtis_demo.core.model_repository import render_config
from atari_trtis_demo.play.inference_client import InferenceClient
from atari_trtis_demo.serving.serve import TritonServer, serving
from atari_trtis_demo.serving.triton_stats import ServerBreakdown, delta, metrics_url, read_metrics, wait_for_metrics
from atari_trtis_demo.train.agent import make_agent

ROOT = Path(__file__).resolve().parents[1]
STEP_MS = 1000 / 15
# src/app.py behind a start line: every client process has imported everything (1-2 s of CPU
# each) before any plays, so that N processes starting do not count against the real time.
# It also prints the CPU the process spent inside the play loop (PlayLoop.play) after the games' first
# resets: the client's cost of play, without imports and env set-up. Worker processes (--workers) print
# their own in their report line.
BARRIER = """import os, sys, time
import ale_py, gymnasium, grpc, pygame
import atari_trtis_demo.play.game, atari_trtis_demo.play.many_games, atari_trtis_demo.play.policies
import atari_trtis_demo.play.play_loop as pl
from atari_trtis_demo.play.play_cli import remote_main
def cpu():
    t = os.times()
    return t.user + t.system
def measured(self, play=pl.PlayLoop.play):
    for g in self.games:  # the seeded resets first (ale-py reloads the ROM), as a worker does: not play
        g.start_episode()
    start = cpu()
    try:
        play(self)
    finally:
        print(f"bench: client CPU in play {cpu() - start:.3f} s", flush=True)
pl.PlayLoop.play = measured
time.sleep(max(0.0, float(sys.argv[1]) - time.time()))
sys.exit(remote_main(sys.argv[2:]))
"""
# Model name -> render_config options: the converter's defaults first.
VARIANTS = {
    "delay100": {"max_queue_delay_us": 100},
    "delay0": {"max_queue_delay_us": 0},
    "delay1000": {"max_queue_delay_us": 1000},
    "delay3000": {"max_queue_delay_us": 3000},
    "delay3000x2": {"max_queue_delay_us": 3000, "instance_count": 2},
    "nobatching": {"dynamic_batching": False},
}


def make_repository(root: Path, variants: list[str], max_batch_size: int) -> Path:
    make_agent(4).save(str(root / "agent"))
    repo = root / "trtismodel"
    first = convert(str(root / "agent"), repository=str(repo), name=variants[0], instance_kind="KIND_CPU")
    for name in variants:
        if name != variants[0]:
            shutil.copytree(repo / variants[0], repo / name)
        options = VARIANTS[name]
        text = render_config(name, first.n_actions, instance_kind="KIND_CPU", max_batch_size=max_batch_size, **options)
        (repo / name / "config.pbtxt").write_text(text)
    return repo


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


def run_clients(commands: list[list[str]], start_at: float, tmp: Path) -> tuple[float, str]:
    """Run the commands at once to their end; the CPU seconds they (and their workers) used from ``start_at``
    on, and their outputs, one after the other."""
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy"}
    outs = [(tmp / f"out{i}.txt").open("w+") for i in range(len(commands))]
    procs = [
        subprocess.Popen(c, stdout=out, stderr=subprocess.PIPE, env=env, cwd=ROOT)
        for c, out in zip(commands, outs, strict=True)
    ]
    time.sleep(max(0.0, start_at - time.time() - 0.05))
    cpu = -sum(cpu_seconds(proc.pid) for proc in procs)  # the imports before the start line do not count
    for proc in procs:
        # wait4's usage includes the children the command waited for (its worker processes).
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        cpu += usage.ru_utime + usage.ru_stime
        if proc.returncode != 0:
            raise SystemExit(f"{commands[0]}: exit {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
    stdout = ""
    for out in outs:
        out.seek(0)
        stdout += out.read()
        out.close()
    return cpu, stdout


WORKERS_LINE = re.compile(r"worker processes: client CPU in play ([0-9.]+) s")
PLAY_LINE = re.compile(r"^bench: client CPU in play ([0-9.]+) s", re.MULTILINE)


def side(server: TritonServer, model: str, n: int, steps: int, separate: bool, tmp: Path, workers: int = 1) -> dict:
    start_at = time.time() + 2.0 + 0.3 * (n if separate else 1)
    base = [sys.executable, "-c", BARRIER, str(start_at), "--host", "127.0.0.1", "--port", str(server.grpc_port)]
    base += ["--model", model, "--headless", "--sync", "--max-steps", str(steps)]
    if separate:
        commands = [[*base, "--seed", str(i), "--json", str(tmp / f"p{i}.json")] for i in range(n)]
    else:
        commands = [[*base, "--games", str(n), "--workers", str(workers), "--json", str(tmp / "games.json")]]
    url = metrics_url(server.address, server.metrics_port)
    before, server_cpu = read_metrics(url, model), server_cpu_seconds(server)  # idle until start_at
    client_cpu, stdout = run_clients(commands, start_at, tmp)
    wall = time.time() - start_at
    server_cpu = server_cpu_seconds(server) - server_cpu
    breakdown = ServerBreakdown.of(delta(before, read_metrics(url, model)))
    if separate:
        games = [json.loads((tmp / f"p{i}.json").read_text()) for i in range(n)]
    else:
        games = json.loads((tmp / "games.json").read_text())["games"]
    rates = [g["steps_per_second"] for g in games]
    total_steps = sum(g["steps"] for g in games)
    found = WORKERS_LINE.search(stdout)
    play_cpu = float(found.group(1)) if workers > 1 and found else sum(map(float, PLAY_LINE.findall(stdout)))
    p99s = [g["latency_ms"]["p99_ms"] for g in games]
    means = [g["latency_ms"]["mean_ms"] for g in games]
    return {
        "n": n,
        "min_rate": min(rates),
        "max_p99": max(p99s),
        "client_mean_ms": float(np.mean(means)),
        "client_cpu": client_cpu,
        "server_cpu": server_cpu,
        "client_ms_per_step": 1e3 * play_cpu / max(total_steps, 1),
        "server_ms_per_step": 1e3 * server_cpu / max(total_steps, 1),
        "wall": wall,
        "breakdown": breakdown,
    }


def show(name: str, r: dict, held: bool) -> None:
    b: ServerBreakdown = r["breakdown"]
    print(
        f"  {name:11s} N={r['n']:3d}  {'holds' if held else 'FAILS'}  slowest game {r['min_rate']:5.2f} steps/s  "
        f"worst p99 {r['max_p99']:6.1f} ms  client rtt mean {r['client_mean_ms']:5.2f} ms  "
        f"cpu s: client {r['client_cpu']:5.1f} server {r['server_cpu']:5.1f} in {r['wall']:5.1f} s wall\n"
        f"              cpu per game step: client {r['client_ms_per_step']:.2f} ms (in play), "
        f"server {r['server_ms_per_step']:.2f} ms\n"
        f"              {b.line()}",
        flush=True,
    )


def compare(results: dict[str, dict[int, dict]], today: str) -> None:
    """Each side against today's path (one process, the first variant) at the same N: ratios, side by side."""
    base = results.get(today, {})
    lines = []
    for name, by_n in results.items():
        if name == today:
            continue
        for n, r in by_n.items():
            if n in base:
                b = base[n]
                lines.append(
                    f"  N={n:3d} {name:11s}/ one process: slowest game {r['min_rate'] / b['min_rate']:.2f}x, "
                    f"client cpu per step {r['client_ms_per_step'] / b['client_ms_per_step']:.2f}x, "
                    f"server cpu per step {r['server_ms_per_step'] / max(b['server_ms_per_step'], 1e-9):.2f}x"
                )
    if lines:
        print(f"\nside by side at the same N, against one process ({today}):", *lines, sep="\n")


def batch_one(server: TritonServer, model: str, requests: int) -> None:
    url = metrics_url(server.address, server.metrics_port)
    frames = np.random.default_rng(0).random((4, 84, 84), dtype=np.float32)
    with InferenceClient("127.0.0.1", server.grpc_port, model) as client:
        for _ in range(50):
            client.infer(frames)
        before, times = read_metrics(url, model), []
        for _ in range(requests):
            t0 = time.perf_counter()
            client.infer(frames)
            times.append((time.perf_counter() - t0) * 1e3)
        b = ServerBreakdown.of(delta(before, read_metrics(url, model)))
    mean = float(np.mean(times))
    print(
        f"batch 1, {model}, {requests} sync requests: client round trip mean {mean:.3f} ms, "
        f"p50 {np.median(times):.3f} ms\n  {b.line()}\n  client + gRPC + Triton frontend: {mean - b.request_ms:.3f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150, help="agent steps per game (150: 10 s at 15/s)")
    parser.add_argument("--games", default="16,32,48,64,80,96,128", help="N to try, ascending, per side")
    parser.add_argument("--separate", default="16,24,32", help="N to try with separate processes ('' for none)")
    parser.add_argument("--workers", default="2", help="K worker processes to try, comma-separated ('' for none)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--min-rate", type=float, default=14.7, help="steps/s every game must keep")
    parser.add_argument("--port", type=int, default=18601, help="gRPC port (HTTP and metrics use the next two)")
    args = parser.parse_args()
    variants = args.variants.split(",")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        repo = make_repository(tmp, variants, args.max_batch_size)
        with serving(repo, grpc_port=args.port, http_port=args.port + 1, metrics_port=args.port + 2) as server:
            wait_for_metrics(metrics_url(server.address, server.metrics_port))
            for model in variants:
                batch_one(server, model, 500)
            print(f"\nreal time: every game >= {args.min_rate} steps/s and its p99 < {STEP_MS:.1f} ms; "
                  f"{args.steps} steps per game, --sync, max_batch_size {args.max_batch_size}")  # fmt: skip
            largest: dict[str, int] = {}
            results: dict[str, dict[int, dict]] = {}
            ks = [int(k) for k in args.workers.split(",") if k]
            sides = [(v, False, 1) for v in variants] + [(variants[0], False, k) for k in ks]
            sides += [(variants[0], True, 1)] * bool(args.separate)
            for model, separate, k in sides:
                name = "separate" if separate else model if k == 1 else f"{k} workers"
                largest[name], results[name] = 0, {}
                for n in map(int, (args.separate if separate else args.games).split(",")):
                    if n < k:
                        continue
                    r = side(server, model, n, args.steps, separate, tmp, workers=k)
                    held = r["min_rate"] >= args.min_rate and r["max_p99"] < STEP_MS
                    show(name, r, held)
                    results[name][n] = r
                    if not held:
                        break
                    largest[name] = n
            compare(results, variants[0])
    print("\nlargest N that holds real time:")
    for name, n in largest.items():
        print(f"  {name:11s} {n}")


if __name__ == "__main__":
    main()
