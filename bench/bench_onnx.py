"""Forward time of the exported model under onnxruntime next to Chainer's, same inputs.

    .venv/bin/python bench/bench_onnx.py [--model DIR] [--repeats 200]

Without --model a freshly initialised Nature DQN is exported (speed does not depend on
the weights). Batch 1 (one player) and 32 (a full dynamic batch); the two runtimes
alternate call by call so machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import onnxruntime as ort

from atari_trtis_demo.convert.onnx_export import export_onnx, observation_samples
from atari_trtis_demo.core.contract import DEFAULT_ENV_ID
from atari_trtis_demo.train.agent import batch_q_values, load_q_function, make_agent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="ChainerRL agent directory (default: a fresh Breakout DQN)")
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or tmp
        if not args.model:
            make_agent(4).save(tmp)
        q_function, n_actions = load_q_function(model_dir)
    session = ort.InferenceSession(export_onnx(q_function).SerializeToString(), providers=["CPUExecutionProvider"])
    frames = observation_samples(DEFAULT_ENV_ID, n=32)
    print(f"Nature DQN, {n_actions} actions, onnxruntime {ort.__version__}, {args.repeats} calls per batch size")
    for batch in (1, 32):
        x = frames[:batch]
        times: dict[str, list[float]] = {"chainer": [], "onnxruntime": []}
        for _ in range(5):  # warm-up
            batch_q_values(q_function, x)
            session.run(None, {"input": x})
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            batch_q_values(q_function, x)
            t1 = time.perf_counter()
            session.run(None, {"input": x})
            t2 = time.perf_counter()
            times["chainer"].append(t1 - t0)
            times["onnxruntime"].append(t2 - t1)
        chainer_ms = statistics.median(times["chainer"]) * 1e3
        ort_ms = statistics.median(times["onnxruntime"]) * 1e3
        print(
            f"batch {batch:2d}: chainer {chainer_ms:7.3f} ms  onnxruntime {ort_ms:7.3f} ms (medians)  "
            f"chainer/onnxruntime {chainer_ms / ort_ms:5.1f}x"
        )


if __name__ == "__main__":
    main()
