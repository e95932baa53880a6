"""What one server of three dying, stopping or wedging mid-game costs the games of a balanced player.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_failover.py [--games 8] [--steps 150] [--port 19370]

Three real Tritons (``serve``'s, on 127.0.0.1) serve one model; ``--games`` Breakout games play
sync at the Atari's pace (15 steps/s) for ``--steps`` steps, each game on its own client over
``--host A,B,C`` (so each game's request times are its step times). Three seconds into play the
second server is

- ``kill``: sent SIGKILL (a crash, a lost machine);
- ``term``: sent SIGTERM (a stop: Triton unloads its model, answers NOT_FOUND and cancels
  what it cannot finish within its 2 s);
- ``stop``: sent SIGSTOP for ``--stop-seconds`` and then SIGCONT (a wedged server: it holds its
  connections and answers nothing);

and ``none`` is the same play with nothing done. Per case: requests that failed (what the
player's outage logic sees), agent steps played of those asked, and the time between two steps
of a game (the pause a window would show): its p99 and maximum, and how many steps came more
than two periods (133 ms) after the one before. Between cases the second server is restarted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from bench_latency import TimedClient

from atari_trtis_demo.convert.onnx_export import convert
from atari_trtis_demo.play.play_loop import play_games
from atari_trtis_demo.play.play_result import PlayConfig
from atari_trtis_demo.play.policies import RemotePolicy
from atari_trtis_demo.serving.serve import serving
from atari_trtis_demo.train.agent import make_agent

PERIOD_MS = 1000 / 15
EVENT_AFTER_SECONDS = 3.0


def upset(server, case: str, stop_seconds: float) -> None:
    """Do ``case`` to ``server``'s tritonserver (its process group: the backend stubs too)."""
    group = os.getpgid(server.process.pid)
    if case == "kill":
        os.killpg(group, signal.SIGKILL)
    elif case == "term":
        os.kill(server.process.pid, signal.SIGTERM)
    elif case == "stop":
        os.killpg(group, signal.SIGSTOP)
        time.sleep(stop_seconds)
        os.killpg(group, signal.SIGCONT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--games", type=int, default=8)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--cases", default="none,kill,term,stop")
    parser.add_argument("--stop-seconds", type=float, default=4.0)
    parser.add_argument("--port", type=int, default=19370, help="first of 9 ports (3 per server)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        make_agent(4).save(str(Path(tmp) / "agent"))
        convert(str(Path(tmp) / "agent"), repository=str(Path(tmp) / "trtismodel"), instance_kind="KIND_CPU")
        servers = [
            stack.enter_context(serving(Path(tmp) / "trtismodel", grpc_port=p, http_port=p + 1, metrics_port=p + 2))
            for p in (args.port, args.port + 3, args.port + 6)
        ]
        hosts = ",".join(f"127.0.0.1:{s.grpc_port}" for s in servers)
        for case in args.cases.split(","):
            clients = [TimedClient(hosts, 1, "atari", timeout=5) for _ in range(args.games)]
            config = PlayConfig(sync=True, headless=True, max_steps=args.steps, fps=15, request_timeout=5)
            config.game_over_seconds = 0
            timer = threading.Timer(EVENT_AFTER_SECONDS, upset, (servers[1], case, args.stop_seconds))
            timer.start()
            result = play_games([RemotePolicy(c) for c in clients], config)
            timer.join()
            gaps = np.concatenate([np.diff(c.sent) * 1e3 for c in clients])
            answered: dict[str, int] = {}
            for c in clients:
                for address, count in c.answered_by_server().items():
                    answered[address] = answered.get(address, 0) + count
                c.close()
            rows.append(
                (
                    case,
                    result.outage.requests_failed,
                    result.steps,
                    args.games * args.steps,
                    gaps,
                    answered,
                    result.error,
                )
            )
            print(f"  {case}: done", flush=True)
            if servers[1].process.poll() is not None:
                servers[1].restart()
    print(f"{args.games} games, sync at 15 steps/s, {args.steps} steps each, over 3 servers; the second upset at 3 s")
    print("| case | requests failed | agent steps played | time between steps p99 / max (ms) | steps > 2 periods late "
          "| calls answered per server | error |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for case, failed, played, asked, gaps, answered, error in rows:
        late = int((gaps > 2 * PERIOD_MS).sum())
        print(
            f"| {case} | {failed} | {played} of {asked} | {np.percentile(gaps, 99):.0f} / {gaps.max():.0f} | {late} "
            f"| {', '.join(str(n) for n in answered.values())} | {error or '-'} |"
        )


if __name__ == "__main__":
    main()
