"""The twin's onnxruntime threads: server CPU per request with onnxruntime's defaults and with the twin's settings.

    .venv/bin/python bench/bench_twin_threads.py [--games 32] [--steps 150] [--rounds 2]

One tritonserver serves the same model under three names whose twins differ only in
their onnxruntime session (triton_twin.ORT_SETTINGS, written into each twin's config):

- ``ort_default``: onnxruntime's defaults (one intra-op thread per core, spinning after each run);
- ``ort_1thread``: one intra-op thread, no spinning (the twin's settings);
- ``ort_2threads``: two intra-op threads, no spinning.

``src/app.py --games N --headless --sync`` plays against each in turn, ``--rounds`` times
(side by side in one run: the machine may be shared), and the server's CPU seconds (Triton
and the twins' stubs) are divided by the requests it answered.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_games  # noqa: E402  (this folder's sibling)

from atari_trtis_demo import triton_twin  # noqa: E402
from atari_trtis_demo.serving.serve import serving  # noqa: E402
from atari_trtis_demo.serving.triton_stats import metrics_url, wait_for_metrics  # noqa: E402

SETTINGS = {
    "ort_default": {"ort_intra_op_threads": "0", "ort_allow_spinning": "1"},
    "ort_1thread": dict(triton_twin.ORT_SETTINGS),
    "ort_2threads": {"ort_intra_op_threads": "2", "ort_allow_spinning": "0"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--games", type=int, default=32, help="games in one src/app.py --games process")
    parser.add_argument("--steps", type=int, default=150, help="agent steps per game (150: 10 s at 15/s)")
    parser.add_argument("--rounds", type=int, default=2, help="times each variant plays, interleaved")
    parser.add_argument("--port", type=int, default=18701, help="gRPC port (HTTP and metrics use the next two)")
    args = parser.parse_args()
    names = list(SETTINGS)
    for name in names:
        bench_games.VARIANTS[name] = {"max_queue_delay_us": 100}  # the converter's default config
    plain_twin_config = triton_twin.twin_config

    def twin_config(model):  # each name gets its own session settings, nothing else differs
        saved = dict(triton_twin.ORT_SETTINGS)
        triton_twin.ORT_SETTINGS.update(SETTINGS[model.name])
        try:
            return plain_twin_config(model)
        finally:
            triton_twin.ORT_SETTINGS.clear()
            triton_twin.ORT_SETTINGS.update(saved)

    triton_twin.twin_config = twin_config
    totals = {name: [0.0, 0] for name in names}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        repo = bench_games.make_repository(tmp, names, 32)
        with serving(repo, grpc_port=args.port, http_port=args.port + 1, metrics_port=args.port + 2) as server:
            wait_for_metrics(metrics_url(server.address, server.metrics_port))
            print(f"src/app.py --games {args.games} --headless --sync, {args.steps} steps per game")
            for _ in range(args.rounds):
                for name in names:
                    r = bench_games.side(server, name, args.games, args.steps, False, tmp)
                    bench_games.show(name, r, r["min_rate"] >= 14.7 and r["max_p99"] < bench_games.STEP_MS)
                    totals[name][0] += r["server_cpu"]
                    totals[name][1] += r["breakdown"].requests
    print("\nserver CPU per request (Triton + the twin's stub), all rounds:")
    for name, (cpu, requests) in totals.items():
        per = 1e3 * cpu / max(1, requests)
        print(f"  {name:12s} {SETTINGS[name]}: {cpu:6.1f} s for {requests} requests = {per:.3f} ms")


if __name__ == "__main__":
    main()
