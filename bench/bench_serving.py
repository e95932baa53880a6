"""Serving latency and throughput against a real tritonserver on loopback.

    .venv/bin/python bench/bench_serving.py [--requests 1000] [--seconds 5]

1. Sync round trip at batch 1: the project's client and tritonclient alternate request
   by request against the same server; the in-process onnxruntime forward of the same
   model is the floor.
2. Throughput with 1, 4 and 16 concurrent clients (processes, each with its own
   connection), against two copies of the model in one repository: one with
   dynamic batching, one without.

Everything is bounded in count and time and talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as triton

from atari_trtis_demo.client.inference_client import InferenceClient
from atari_trtis_demo.core.model_config import render_config
from atari_trtis_demo.serving.serve import serving


def percentiles(ms: list[float]) -> str:
    return (
        f"p50 {np.percentile(ms, 50):6.3f} ms  p99 {np.percentile(ms, 99):6.3f} ms  mean {statistics.mean(ms):6.3f} ms"
    )


def make_repository(root: Path) -> Path:
    # Imported here: the client processes re-import this module and need no Chainer.
    from atari_trtis_demo.convert.onnx_export import convert
    from atari_trtis_demo.train.agent import make_agent

    agent_dir = root / "agent"
    make_agent(4).save(str(agent_dir))
    repo = root / "trtismodel"
    conversion = convert(str(agent_dir), repository=str(repo), name="batching", instance_kind="KIND_CPU")
    # The same model without dynamic batching: every request runs alone.
    shutil.copytree(repo / "batching", repo / "single")
    config = render_config("single", conversion.n_actions, instance_kind="KIND_CPU", dynamic_batching=False)
    (repo / "single" / "config.pbtxt").write_text(config)
    return repo


def latency(port: int, repo: Path, requests: int) -> None:
    rng = np.random.default_rng(0)
    ours = InferenceClient("127.0.0.1", port, "batching")
    official = triton.InferenceServerClient(f"127.0.0.1:{port}")
    session = ort.InferenceSession(str(repo / "batching" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])

    def official_infer(frames: np.ndarray) -> np.ndarray:
        # Built per request, as a player must: every step has new frames.
        tensor = triton.InferInput("input", [1, 4, 84, 84], "FP32")
        tensor.set_data_from_numpy(frames[None])
        return official.infer("batching", [tensor]).as_numpy("action")[0]

    times: dict[str, list[float]] = {"project client": [], "tritonclient": [], "onnxruntime in-process": []}
    for i in range(50 + requests):  # 50 warm-up rounds
        frames = rng.random((4, 84, 84), dtype=np.float32)
        first, second = (ours.infer, official_infer) if i % 2 == 0 else (official_infer, ours.infer)
        t0 = time.perf_counter()
        first(frames)
        t1 = time.perf_counter()
        second(frames)
        t2 = time.perf_counter()
        session.run(None, {"input": frames[None]})
        t3 = time.perf_counter()
        if i < 50:
            continue
        ours_s, official_s = (t1 - t0, t2 - t1) if i % 2 == 0 else (t2 - t1, t1 - t0)
        times["project client"].append(ours_s * 1e3)
        times["tritonclient"].append(official_s * 1e3)
        times["onnxruntime in-process"].append((t3 - t2) * 1e3)
    print(f"\nsync round trip, batch 1, {requests} requests each, alternating (which goes first alternates too):")
    for name, ms in times.items():
        print(f"  {name:24s} {percentiles(ms)}")
    ratio = np.median(times["project client"]) / np.median(times["tritonclient"])
    print(f"  project client / tritonclient at p50: {ratio:.3f}")
    ours.close()
    official.close()


def client_process(port: int, model: str, start_at: float, stop_at: float) -> list[float]:
    """One client in its own process (one Python process cannot drive 16 clients: the GIL)."""
    frames = np.random.default_rng(1).random((4, 84, 84), dtype=np.float32)
    client = InferenceClient("127.0.0.1", port, model, timeout=30)
    latencies = []
    time.sleep(max(0.0, start_at - time.time()))
    while time.time() < stop_at:
        t0 = time.perf_counter()
        client.infer(frames)
        latencies.append((time.perf_counter() - t0) * 1e3)
    client.close()
    return latencies


def throughput(port: int, model: str, clients: int, seconds: float) -> tuple[float, float]:
    context = multiprocessing.get_context("spawn")  # no fork after gRPC threads exist
    with context.Pool(clients) as pool:
        start_at = time.time() + 2.0 + 0.5 * clients  # every process started and connected
        results = pool.starmap(client_process, [(port, model, start_at, start_at + seconds)] * clients)
    everything = [x for per_client in results for x in per_client]
    return len(everything) / seconds, float(np.percentile(everything, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--port", type=int, default=18101, help="gRPC port (HTTP and metrics use the next two)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = make_repository(Path(tmp))
        with serving(repo, grpc_port=args.port, http_port=args.port + 1, metrics_port=args.port + 2):
            latency(args.port, repo, args.requests)
            print(f"\nthroughput, batch-1 requests from N concurrent clients, {args.seconds:g} s each:")
            print(f"  {'clients':>7s}  {'dynamic batching':>28s}  {'no batching':>28s}  batching/none")
            for clients in (1, 4, 16):
                on = throughput(args.port, "batching", clients, args.seconds)
                off = throughput(args.port, "single", clients, args.seconds)
                print(
                    f"  {clients:7d}  {on[0]:8.0f} inf/s p99 {on[1]:7.2f} ms  {off[0]:8.0f} inf/s p99 {off[1]:7.2f} ms"
                    f"  {on[0] / off[0]:6.2f}x"
                )


if __name__ == "__main__":
    main()
