"""What ``--web`` costs the player: CPU on top of play, the frame rate each viewer gets, real-time games held.

    .venv/bin/python bench/bench_web.py [--steps 150] [--rounds 3] [--hold 16,24,32] [--port 19400]

Against one tritonserver on 127.0.0.1 started here (a fresh Breakout agent, the
converter's defaults), ``src/app.py --sync`` plays Breakout at the Atari's pace (15 agent
steps/s) for ``--steps`` steps, one game and then a grid of 16, each side alternately in
every round:

- ``headless``: no screen at all (the reference);
- ``web, 0 viewers``: ``--web``, nobody watching;
- ``web, 1 viewer`` and ``web, 4 viewers``: viewers in a process of their own, each
  reading the page's websocket and answering ``ack`` to every picture, as the page does
  (they do not decode: a page does that on its own machine).

The player's CPU is measured inside it, over its play loop only (imports, env set-up and
the games' first resets left out; with viewers, from the moment all are connected): its
own threads, the web server's included. The cost of ``--web`` is the extra CPU per agent
step times the agent steps of one real-time second, in % of one core. Each viewer's frame
rate is the pictures it got over the seconds between its first and its last.

``--hold`` then plays ``--games N`` headless and with ``--web`` and one viewer, alternately,
``--rounds`` times each: a side holds N when, in the median run, every game kept
``--min-rate`` steps/s (as ``bench_games.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from player_child import PLAY_LINE, measured_play

from atari_trtis_demo.convert.onnx_export import convert
from atari_trtis_demo.serving.serve import serving
from atari_trtis_demo.train.agent import make_agent

ROOT = Path(__file__).resolve().parents[1]
REAL_TIME = 15.0
# src/app.py, measuring the CPU of its play loop; with --web it first waits for argv[1] viewers.
PLAYER = """import os, sys, time
import atari_trtis_demo.play.play_loop as pl
from atari_trtis_demo.play.play_cli import remote_main
viewers = int(sys.argv[1])
def cpu():  # this process's CPU, every thread's (the web server's too), in ns steps (os.times: 10 ms)
    return time.process_time()
def measured(self, play=pl.PlayLoop.play):
    if not self.started:  # the seeded resets first (ale-py reloads the ROM): not play
        self.start_games()
    server = getattr(self.screen, "server", None)
    while server is not None and server.viewer_count < viewers:
        time.sleep(0.01)
""" + measured_play(first_flag=2)
# argv[2] viewers of the page at argv[1], each acknowledging every picture as the page does once drawn. They do
# not decode: a page decodes on its viewer's machine, and here it would take this machine's 2 cores from play.
VIEWERS = """import asyncio, json, sys, time
import aiohttp
async def viewer(session, url):
    for _ in range(1200):
        try:
            ws = await session.ws_connect(url + "/ws")
            break
        except aiohttp.ClientConnectorError:
            await asyncio.sleep(0.05)
    times, size = [], 0
    async for message in ws:
        if message.type == aiohttp.WSMsgType.BINARY:
            times.append(time.perf_counter())
            size += len(message.data)
            await ws.send_str("ack")
    seconds = times[-1] - times[0] if len(times) > 1 else 0.0
    return {"pictures": len(times), "fps": (len(times) - 1) / seconds if seconds else 0.0,
            "kb_per_picture": size / 1024 / max(len(times), 1)}
async def main():
    async with aiohttp.ClientSession() as session:
        print(json.dumps(await asyncio.gather(*(viewer(session, sys.argv[1]) for _ in range(int(sys.argv[2]))))))
asyncio.run(main())
"""
SIDES = {"headless": None, "web, 0 viewers": 0, "web, 1 viewer": 1, "web, 4 viewers": 4}


class Ports:
    """The page's ports, taken in turn from a range: a port just closed may linger in TIME_WAIT."""

    def __init__(self, first: int, count: int) -> None:
        self.first, self.count, self.next = first, count, 0

    def take(self) -> int:
        self.next += 1
        return self.first + (self.next - 1) % self.count


def play(grpc_port: int, games: int, steps: int, viewers: int | None, web_port: int, tmp: Path) -> dict:
    """One run: the player's CPU per agent step, its games' slowest rate, and each viewer's figures."""
    stats = tmp / "play.json"
    argv = ["--host", "127.0.0.1", "--port", str(grpc_port), "--games", str(games), "--sync", "--max-steps"]
    argv += [str(steps), "--fire-on-life-loss", "--json", str(stats), "--game-over-seconds", "0"]
    argv += ["--headless"] if viewers is None else ["--web", f"127.0.0.1:{web_port}"]
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy"}
    player = subprocess.Popen(
        [sys.executable, "-c", PLAYER, str(viewers or 0), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    watchers = None
    if viewers:
        watchers = subprocess.Popen(
            [sys.executable, "-c", VIEWERS, f"http://127.0.0.1:{web_port}", str(viewers)],
            stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
    out, err = player.communicate(timeout=600)
    if player.returncode != 0:
        raise SystemExit(f"player: exit {player.returncode}: {err[-2000:]}")
    seen = json.loads(watchers.communicate(timeout=120)[0]) if watchers else []
    result = json.loads(stats.read_text())
    return {
        "cpu_ms_per_step": 1e3 * float(PLAY_LINE.search(out).group(1)) / max(result["steps"], 1),
        "min_rate": min(g["steps_per_second"] for g in result["games"]),
        "viewers": seen,
    }


def cost(games: int, steps: int, rounds: int, grpc_port: int, ports: Ports, tmp: Path) -> None:
    runs: dict[str, list[dict]] = {name: [] for name in SIDES}
    for _ in range(rounds):
        for name, viewers in SIDES.items():
            runs[name].append(play(grpc_port, games, steps, viewers, ports.take(), tmp))
    base = statistics.median(r["cpu_ms_per_step"] for r in runs["headless"])
    print(f"\n--games {games}: player CPU per agent step (median of {rounds}), and on top of headless play")
    for name, rs in runs.items():
        ms = statistics.median(r["cpu_ms_per_step"] for r in rs)
        extra = (ms - base) * games * REAL_TIME / 10  # ms per step x steps per s / 1000 ms x 100 %
        line = f"  {name:15s} {ms:6.3f} ms  x{ms / base:5.2f}  {extra:+6.1f}% of a core at real time"
        seen = [v for r in rs for v in r["viewers"]]
        if seen:
            fps = ", ".join(f"{v['fps']:.1f}" for v in seen)
            line += f"   viewers' pictures/s: {fps}  ({seen[0]['kb_per_picture']:.1f} kB a picture)"
        print(line + f"   slowest game {min(r['min_rate'] for r in rs):.2f} steps/s")


def hold(ns: list[int], steps: int, rounds: int, min_rate: float, grpc_port: int, ports: Ports, tmp: Path) -> None:
    """Each N headless and with --web and one viewer, alternately for ``rounds`` rounds; holds by the median."""
    print(f"\nreal time held (every game >= {min_rate} steps/s; median of {rounds}), --sync, {steps} steps:")
    largest = {"headless": 0, "web, 1 viewer": 0}
    for n in ns:
        rates: dict[str, list[float]] = {name: [] for name in largest}
        fps: list[float] = []
        for _ in range(rounds):
            for name, viewers in (("headless", None), ("web, 1 viewer", 1)):
                r = play(grpc_port, n, steps, viewers, ports.take(), tmp)
                rates[name].append(r["min_rate"])
                fps += [v["fps"] for v in r["viewers"]]
        line = f"  N={n:3d}"
        for name, got in rates.items():
            held = statistics.median(got) >= min_rate
            if held:
                largest[name] = max(largest[name], n)
            line += f"   {name}: {'holds' if held else 'FAILS'} (slowest game {', '.join(f'{g:.2f}' for g in got)})"
        print(line + f"   viewer {', '.join(f'{f:.1f}' for f in fps)} pictures/s")
    print("  largest N held: " + ", ".join(f"{name} {n}" for name, n in largest.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150, help="agent steps per game and run (150: 10 s)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side, alternating")
    parser.add_argument("--games", default="1,16", help="game counts whose cost is measured ('' for none)")
    parser.add_argument("--hold", default="16,24,32", help="N to try for real time, ascending ('' for none)")
    parser.add_argument("--min-rate", type=float, default=14.7, help="steps/s every game must keep")
    parser.add_argument("--port", type=int, default=19400, help="gRPC port (+1 HTTP, +2 metrics, +10.. the page)")
    args = parser.parse_args()
    ports = Ports(args.port + 10, 80)
    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp_name:
        tmp = Path(tmp_name)
        make_agent(4).save(str(tmp / "agent"))
        convert(str(tmp / "agent"), repository=str(tmp / "trtismodel"), name="atari", instance_kind="KIND_CPU")
        with serving(tmp / "trtismodel", grpc_port=args.port, http_port=args.port + 1, metrics_port=args.port + 2):
            for games in (int(g) for g in args.games.split(",") if g):
                cost(games, args.steps, args.rounds, args.port, ports, tmp)
            if args.hold:
                ns = [int(n) for n in args.hold.split(",")]
                hold(ns, args.steps, args.rounds, args.min_rate, args.port, ports, tmp)


if __name__ == "__main__":
    started = time.time()
    main()
    print(f"\n({time.time() - started:.0f} s)")
