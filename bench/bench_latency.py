"""Play against a server far away: sync steps/s and frame-time jitter, async staleness, at added round trips.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_latency.py [--rtt-ms 0,10,20,50,100] [--steps 150] [--port 19350]

This kernel has no netem, so the latency is added in user space: a TCP proxy on 127.0.0.1
(in this process, loopback only) between the player and a real ``serve`` Triton holds every
chunk of bytes for half the round trip in each direction, in order. A 0 ms row goes through
the same proxy: the proxy's own cost is in every row.

Each row plays one Breakout game (the player's real play loop, ``--fps 15``: the Atari's pace)
for ``--steps`` agent steps, three ways: sync paced (each step waits for its action: steps/s
and the time between steps, whose spread is the jitter a window shows), sync unpaced
(``--fps 0``: steps/s = 1 / (round trip + step)), and async paced (rendering never waits: how
many steps old the applied actions were). The rows run in turn, twice, the order reversed the
second time; figures are of both rounds together. ``--connection-age-ms`` serves with another
``--grpc-max-connection-age`` than serve's (1 s): every closed connection costs the next call
a new connection, a round trip more.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
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
from atari_trtis_demo.serving import serve
from atari_trtis_demo.train.agent import make_agent

PERIOD_MS = 1000 / 15


class DelayProxy:
    """A TCP proxy on 127.0.0.1:``listen`` to 127.0.0.1:``target`` that delays each direction by ``one_way`` s.

    Bytes keep their order; each chunk leaves ``one_way`` s after it arrived (a link with that
    latency and no bandwidth limit); a new ``one_way`` holds from the next chunk on. Written here
    because the benchmark needs exactly this and nothing more, in-process: netem is missing from
    this kernel, and a proxy package would be a dependency for some 60 lines.
    """

    def __init__(self, listen: int, target: int) -> None:
        self.listen, self.target, self.one_way = listen, target, 0.0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._connection, "127.0.0.1", self.listen))
        self.ready.set()
        self.loop.run_forever()

    async def _connection(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            client_writer.close()
            return
        # Ends normally when the proxy shuts down: asyncio would report a cancelled connection task as an error.
        with contextlib.suppress(asyncio.CancelledError):
            upstream, downstream = self._pipe(client_reader, server_writer), self._pipe(server_reader, client_writer)
            await asyncio.gather(upstream, downstream, return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def arrive() -> None:
            try:
                while data := await reader.read(1 << 16):
                    queue.put_nowait((time.monotonic() + self.one_way, data))
            finally:
                queue.put_nowait((time.monotonic() + self.one_way, b""))

        arrival = asyncio.ensure_future(arrive())
        try:
            while True:
                due, data = await queue.get()
                if due > time.monotonic():
                    await asyncio.sleep(due - time.monotonic())
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            arrival.cancel()
            writer.close()

    async def _shutdown(self) -> None:
        self.server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class TimedClient(InferenceClient):
    """The project's client, noting when each request leaves: in sync play of one game, when each step starts."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[float] = []

    def infer(self, frames, timeout=None):
        self.sent.append(time.perf_counter())
        return super().infer(frames, timeout)

    def infer_async(self, frames, timeout=None):
        self.sent.append(time.perf_counter())
        return super().infer_async(frames, timeout)


def play_once(
    client: TimedClient, sync: bool, fps: float, steps: int, seed: int
) -> tuple[float, list[float], list[int]]:
    """One game of ``steps`` agent steps: (steps/s, ms between steps, staleness of the applied actions)."""
    client.sent.clear()
    config = PlayConfig(sync=sync, headless=True, max_steps=steps, episodes=1, seed=seed, fps=fps, request_timeout=10)
    config.game_over_seconds = 0
    result = play_games(RemotePolicy(client), 1, config)
    if result.error:
        sys.exit(f"error: {result.error}")
    gaps = list(np.diff(client.sent) * 1e3)
    return result.steps / result.seconds, gaps, list(result.staleness)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rtt-ms", default="0,10,20,50,100", help="added round trips, ms")
    parser.add_argument("--steps", type=int, default=150, help="agent steps per game (150: 10 s at 15 steps/s)")
    parser.add_argument("--port", type=int, default=19350, help="gRPC port; HTTP, metrics and the proxy the next three")
    parser.add_argument("--connection-age-ms", type=int, default=serve.GRPC_CONNECTION_AGE_MS)
    args = parser.parse_args()
    rtts = [float(x) for x in args.rtt_ms.split(",")]
    serve.GRPC_CONNECTION_AGE_MS = args.connection_age_ms  # start_server reads it when it builds the command
    figures: dict[float, dict[str, list]] = {
        r: {"paced": [], "gaps": [], "unpaced": [], "async": [], "stale": []} for r in rtts
    }
    with tempfile.TemporaryDirectory() as tmp:
        make_agent(4).save(str(Path(tmp) / "agent"))
        convert(str(Path(tmp) / "agent"), repository=str(Path(tmp) / "trtismodel"), instance_kind="KIND_CPU")
        with serve.serving(
            Path(tmp) / "trtismodel", grpc_port=args.port, http_port=args.port + 1, metrics_port=args.port + 2
        ):
            proxy = DelayProxy(args.port + 3, args.port)
            client = TimedClient("127.0.0.1", args.port + 3, "atari", timeout=10)
            try:
                for round_ in range(2):
                    for rtt in rtts if round_ == 0 else list(reversed(rtts)):
                        proxy.one_way = rtt / 2000  # from the next chunk on, on every connection
                        f = figures[rtt]
                        rate, gaps, _ = play_once(client, True, 15, args.steps, round_)
                        f["paced"].append(rate)
                        f["gaps"] += gaps
                        f["unpaced"].append(play_once(client, True, 0, args.steps, round_)[0])
                        rate, _, stale = play_once(client, False, 15, args.steps, round_)
                        f["async"].append(rate)
                        f["stale"] += stale
                        print(f"  round {round_ + 1}, {rtt:g} ms: done", flush=True)
            finally:
                client.close()
                proxy.close()
    print(
        f"Breakout, {args.steps} agent steps per game and way, 2 rounds; connection age {args.connection_age_ms} ms\n"
        "| added round trip | sync at 15/s: steps/s | time between steps p50 / p99 / max (ms) | stdev (ms) "
        "| steps > 1.5 periods late | sync unpaced: steps/s | async at 15/s: steps/s "
        "| async staleness mean / p50 / p99 / max |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for rtt in rtts:
        f = figures[rtt]
        gaps, stale = np.array(f["gaps"]), np.array(f["stale"])
        late = float((gaps > 1.5 * PERIOD_MS).mean() * 100)
        print(
            f"| {rtt:g} ms | {statistics.mean(f['paced']):.1f} | {np.percentile(gaps, 50):.1f} / "
            f"{np.percentile(gaps, 99):.1f} / {gaps.max():.1f} | {gaps.std():.1f} | {late:.1f}% "
            f"| {statistics.mean(f['unpaced']):.1f} | {statistics.mean(f['async']):.1f} "
            f"| {stale.mean():.2f} / {np.percentile(stale, 50):g} / {np.percentile(stale, 99):g} / {stale.max()} |"
        )


if __name__ == "__main__":
    main()
