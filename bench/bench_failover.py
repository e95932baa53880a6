"""What one server of three dying, stopping or wedging mid-game costs the games of a balanced player.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_failover.py [--games 8] [--steps 150] [--port 19370]

Three real Tritons (``serve``'s, on 127.0.0.1) serve one model; ``--games`` Breakout games play
sync at the Atari's pace (15 steps/s) for ``--steps`` steps, each game on its own client over
``--host A,B,C``: one client, as ``src/app.py --games`` has (each game's request times, noted by
its policy, are its step times). Three seconds into play the
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

from atari_trtis_demo.client.inference_client import InferenceClient
from atari_trtis_demo.convert.onnx_export import convert
from atari_trtis_demo.play.play_config import PlayConfig
from atari_trtis_demo.play.play_loop import play_games
from atari_trtis_demo.play.policies import RemotePolicy
from atari_trtis_demo.serving.serve import serving
from atari_trtis_demo.train.agent import make_agent

PERIOD_MS = 1000 / 15
EVENT_AFTER_SECONDS = 3.0


class TimedPolicy(RemotePolicy):
    """The games' remote policy noting when each of its waves leaves: in sync play, when each step starts."""

    def __init__(self, client: InferenceClient) -> None:
        super().__init__(client)
        self.sent: list[float] = []

    def q_values(self, frames: np.ndarray) -> np.ndarray:
        self.sent.append(time.perf_counter())
        return super().q_values(frames)

    def q_values_async(self, frames: np.ndarray):
        self.sent.append(time.perf_counter())
        return super().q_values_async(frames)

    def close(self) -> None:  # the client is the games' together: closed once, by the benchmark
        pass


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


def upset_in_play(policy: TimedPolicy, server, case: str, stop_seconds: float) -> None:
    """:func:`upset` EVENT_AFTER_SECONDS after play began (the first game's first request)."""
    while not policy.sent:
        time.sleep(0.01)
    time.sleep(EVENT_AFTER_SECONDS)
    upset(server, case, stop_seconds)


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
            client = InferenceClient(hosts, 1, "atari", timeout=5)
            policy = TimedPolicy(client)
            config = PlayConfig(sync=True, headless=True, max_steps=args.steps, fps=15, request_timeout=5)
            config.game_over_seconds = 0
            upsetter = threading.Thread(target=upset_in_play, args=(policy, servers[1], case, args.stop_seconds))
            upsetter.start()
            result = play_games(policy, args.games, config)
            upsetter.join()
            gaps = np.diff(policy.sent) * 1e3
            answered = client.answered_by_server()
            client.close()
            if result.error:
                print(f"  {case}: {result.error}", flush=True)
            asked = args.games * args.steps
            rows.append((case, result.outage.requests_failed, result.steps, asked, result.seconds, gaps, answered))
            print(f"  {case}: done", flush=True)
            if servers[1].process.poll() is not None:
                servers[1].restart()
    print(f"{args.games} games, sync at 15 steps/s, {args.steps} steps each, over 3 servers; the second upset at 3 s")
    print("| case | requests failed | agent steps played | play (s) | time between steps p99 / max (ms) "
          "| steps > 2 periods late | calls answered per server |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for case, failed, played, asked, seconds, gaps, answered in rows:
        late = int((gaps > 2 * PERIOD_MS).sum())
        print(
            f"| {case} | {failed} | {played} of {asked} | {seconds:.1f} | {np.percentile(gaps, 99):.0f} / "
            f"{gaps.max():.0f} | {late} | {', '.join(str(n) for n in answered.values())} |"
        )


if __name__ == "__main__":
    main()
