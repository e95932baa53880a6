"""Headless play speed: random actions (the ceiling), in-process onnxruntime, standalone, remote sync and async.

    .venv/bin/python bench/bench_play.py [--model DIR] [--steps 1000] [--rounds 3]

All play the same game (Breakout, seeded) for ``--steps`` agent steps per round,
alternating within each round; remote play goes through a real tritonserver on
127.0.0.1 started here with the model converted from ``--model`` (default: a fresh
Nature DQN; speed does not depend on the weights). Play is unpaced (``--fps 0``).
"In-process onnxruntime" runs the very ``model.onnx`` the server serves, in this
process: the reference for what the round trip to Triton costs.

Then the pace: one remote game, sync and async alternating, at the default 15 agent
steps/s for ``--paced-steps`` (45: 3 s), ``--rounds`` times: how close to the Atari's own
pace play keeps on this machine now (the tests check only that it is never faster).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np

from atari_trtis_demo.client.inference_client import InferenceClient
from atari_trtis_demo.client.latency import LatencyStats
from atari_trtis_demo.convert.onnx_export import convert
from atari_trtis_demo.play.play_config import REAL_TIME_FPS, PlayConfig
from atari_trtis_demo.play.play_loop import play_games
from atari_trtis_demo.play.policies import LocalChainerPolicy, Policy, RemotePolicy
from atari_trtis_demo.serving.serve import serving
from atari_trtis_demo.train.agent import make_agent


class RandomPolicy(Policy):
    """No model at all: what the env and the loop alone can do."""

    name = "random actions"

    def __init__(self, n_actions: int) -> None:
        self.n_actions = n_actions
        self.latency = LatencyStats()
        self.rng = np.random.default_rng(0)

    def q_values(self, frames: np.ndarray) -> np.ndarray:
        return self.rng.random((len(frames), self.n_actions))


class OnnxRuntimePolicy(Policy):
    """The served model.onnx, run by onnxruntime in this process: no server, no network."""

    name = "in-process onnxruntime"

    def __init__(self, model_path: Path) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        self.n_actions, self.latency = 4, LatencyStats()

    def q_values(self, frames: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input": frames})[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="ChainerRL agent directory (default: a fresh Breakout DQN)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=18301, help="gRPC port (HTTP and metrics use the next two)")
    parser.add_argument("--max-queue-delay-us", type=int, default=100, help="the served config's batching delay")
    parser.add_argument("--paced-steps", type=int, default=45, help="agent steps of each paced game (0: none)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or str(Path(tmp) / "agent")
        if not args.model:
            make_agent(4).save(model_dir)
        convert(
            model_dir,
            repository=str(Path(tmp) / "trtismodel"),
            instance_kind="KIND_CPU",
            max_queue_delay_us=args.max_queue_delay_us,
        )
        with serving(
            Path(tmp) / "trtismodel", grpc_port=args.port, http_port=args.port + 1, metrics_port=args.port + 2
        ):
            client = InferenceClient("127.0.0.1", args.port, "atari")
            sides = {
                "random actions (ceiling)": (RandomPolicy(4), True),
                "in-process onnxruntime, sync": (
                    OnnxRuntimePolicy(Path(tmp) / "trtismodel" / "atari" / "1" / "model.onnx"),
                    True,
                ),
                "standalone (Chainer), sync": (LocalChainerPolicy(model_dir), True),
                "remote sync (Triton)": (RemotePolicy(client), True),
                "remote async (Triton)": (RemotePolicy(client), False),
            }
            rates: dict[str, list[float]] = {name: [] for name in sides}
            staleness: list[int] = []
            for r in range(args.rounds):
                order = list(sides) if r % 2 == 0 else list(reversed(sides))
                for name in order:
                    policy, sync = sides[name]
                    config = PlayConfig(sync=sync, headless=True, max_steps=args.steps, episodes=1, seed=r, fps=0)
                    # A game may end early: play games until --steps are done.
                    done, seconds = 0, 0.0
                    while done < args.steps:
                        config.max_steps = args.steps - done
                        result = play_games(policy, 1, config)
                        done += result.steps
                        seconds += result.seconds
                        if not sync:
                            staleness.extend(result.staleness)
                    rates[name].append(done / seconds)
            paced = paced_rates(client, args.paced_steps, args.rounds) if args.paced_steps else {}
            client.close()
    print(f"{args.steps} agent steps per side and round, {args.rounds} rounds, sides alternating; medians:")
    standalone = statistics.median(rates["standalone (Chainer), sync"])
    in_process = statistics.median(rates["in-process onnxruntime, sync"])
    for name, values in rates.items():
        median = statistics.median(values)
        print(
            f"  {name:30s} {median:8.1f} steps/s  ({median / standalone:5.2f}x standalone, "
            f"{median / in_process:5.2f}x in-process onnxruntime)"
        )
    s = np.array(staleness)
    print(
        f"  async staleness (agent steps): mean {s.mean():.2f}, p50 {np.percentile(s, 50):g}, "
        f"p99 {np.percentile(s, 99):g}, max {s.max()}"
    )
    if paced:
        print(f"paced at {REAL_TIME_FPS:g} steps/s, {args.paced_steps} steps per game, {args.rounds} rounds; medians:")
        for name, values in paced.items():
            median = statistics.median(values)
            print(
                f"  {name:30s} {median:8.2f} steps/s  ({median / REAL_TIME_FPS:5.3f}x the pace; min {min(values):.2f})"
            )


def paced_rates(client: InferenceClient, steps: int, rounds: int) -> dict[str, list[float]]:
    """Steps/s of one remote game at the default pace, sync and async alternating, per round."""
    rates: dict[str, list[float]] = {"remote sync, paced": [], "remote async, paced": []}
    for r in range(rounds):
        for sync in (True, False) if r % 2 == 0 else (False, True):
            result = play_games(RemotePolicy(client), 1, PlayConfig(sync=sync, headless=True, max_steps=steps, seed=r))
            rates[f"remote {'sync' if sync else 'async'}, paced"].append(result.steps_per_second)
    return rates


if __name__ == "__main__":
    main()
