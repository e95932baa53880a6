"""Client CPU per request: unary futures (today) against a reused request and one stream, under serve's 1 s age.

    .venv/bin/python bench/bench_requests.py [--games 32] [--seconds 6] [--rounds 2]

One real ``serve`` Triton on 127.0.0.1 (the converter's default config, serve's own flags:
every gRPC connection closed after 1 s). ``--games`` players each send one (4,84,84)
FP32 frame stack per step and wait for all answers (sync play at full speed: the
waves Triton batches), for ``--seconds`` per side, sides alternated ``--rounds`` times:

- ``unary``: ``InferenceClient.infer_async`` per request, as play does today (a new
  request message per request, the frames copied into it, the answer checked);
- ``reused``: one request message per player kept and only its frame bytes replaced,
  sent with the same stub's ``ModelInfer.future``, the answer checked the same way;
- ``stream``: one bidirectional ``ModelStreamInfer`` stream for all players (the
  stubs of ``tritonclient``, which this project's protos subset does not include),
  answers matched by request id; a stream the server's 1 s connection age cuts is
  reopened and its unanswered requests sent again (counted).

Figures: client CPU per request (process CPU: every gRPC thread included), requests
per second, and the server's CPU per request. A side's frames are made before it runs.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import queue
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from atari_trtis_demo.client.channel import CHANNEL_OPTIONS
from atari_trtis_demo.client.inference_client import InferenceClient
from atari_trtis_demo.convert.onnx_export import convert
from atari_trtis_demo.serving.serve import serving
from atari_trtis_demo.serving.triton_process import TritonServer
from atari_trtis_demo.train.agent import make_agent

try:  # the stream needs ModelStreamInfer, which only tritonclient's generated stubs carry here
    from tritonclient.grpc import service_pb2 as tc_pb
    from tritonclient.grpc import service_pb2_grpc as tc_grpc
except ImportError:  # pragma: no cover
    tc_pb = tc_grpc = None


def server_cpu_seconds(server: TritonServer) -> float:
    total = 0.0
    for entry in os.listdir("/proc"):
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == server.process.pid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def run_unary(client: InferenceClient, frames: list[np.ndarray], seconds: float) -> int:
    sent, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        futures = [client.infer_async(f) for f in frames]
        for f in futures:
            f.result()
        sent += len(frames)
    return sent


def run_reused(client: InferenceClient, frames: list[np.ndarray], seconds: float) -> int:
    requests = [client.build_request(f) for f in frames]  # one message per player, kept
    stub = client._stub
    sent, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        calls = []
        for request, f in zip(requests, frames, strict=True):
            request.raw_input_contents[0] = f.tobytes()  # only the frames change from step to step
            calls.append(stub.ModelInfer.future(request, timeout=5.0))
        for call in calls:
            client._q_values(call.result(), 1)
        sent += len(frames)
    return sent


class Stream:
    """One ModelStreamInfer stream; reopened when the server closes the connection under it."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.stub = tc_grpc.GRPCInferenceServiceStub(channel)
        self.pending: dict[str, tuple[bytes, concurrent.futures.Future]] = {}
        self.lock = threading.Lock()
        self.cuts = self.resent = 0
        self.closed = False
        self.open()

    def open(self) -> None:
        self.outbox: queue.Queue = queue.Queue()
        outbox = self.outbox

        def requests():
            while (item := outbox.get()) is not None:
                yield item

        self.call = self.stub.ModelStreamInfer(requests())
        self.reader = threading.Thread(target=self.read, args=(self.call, outbox), daemon=True)
        self.reader.start()

    def read(self, call, outbox: queue.Queue) -> None:
        try:
            for response in call:
                with self.lock:
                    _, future = self.pending.pop(response.infer_response.id)
                future.set_result(response)
        except grpc.RpcError:
            pass
        outbox.put(None)
        with self.lock:  # cut: every unanswered request goes again on a new stream
            if self.outbox is not outbox or self.closed:
                return
            self.cuts += 1
            self.open()
            for request_bytes, _ in self.pending.values():
                self.resent += 1
                self.outbox.put(tc_pb.ModelInferRequest.FromString(request_bytes))

    def send(self, request) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self.lock:
            self.pending[request.id] = (request.SerializeToString(), future)
            self.outbox.put(request)
        return future

    def close(self) -> None:
        with self.lock:
            self.closed = True
        self.outbox.put(None)
        self.call.cancel()


def run_stream(
    stream: Stream, client: InferenceClient, frames: list[np.ndarray], seconds: float, counter: list[int]
) -> int:
    templates = []
    for f in frames:
        r = tc_pb.ModelInferRequest()
        r.ParseFromString(client.build_request(f).SerializeToString())
        templates.append(r)
    sent, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        futures = []
        for request, f in zip(templates, frames, strict=True):
            counter[0] += 1
            request.id = str(counter[0])
            request.raw_input_contents[0] = f.tobytes()
            futures.append(stream.send(request))
        for future in futures:
            response = future.result(timeout=10)
            if response.error_message:
                raise SystemExit(f"stream answered an error: {response.error_message}")
            q = np.frombuffer(response.infer_response.raw_output_contents[0], "<f4")
            if q.size != client.n_actions or not np.isfinite(q).all():
                raise SystemExit("stream: a bad answer")
        sent += len(frames)
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--games", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--port", type=int, default=18651, help="gRPC port (HTTP and metrics use the next two)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    frames = [rng.random((4, 84, 84), dtype=np.float32) for _ in range(args.games)]
    with tempfile.TemporaryDirectory() as tmp:
        make_agent(4).save(f"{tmp}/agent")
        convert(f"{tmp}/agent", repository=f"{tmp}/trtismodel", name="atari", instance_kind="KIND_CPU")
        with serving(
            f"{tmp}/trtismodel", grpc_port=args.port, http_port=args.port + 1, metrics_port=args.port + 2
        ) as s:
            client = InferenceClient("127.0.0.1", s.grpc_port, "atari")
            channel = grpc.insecure_channel(client.address, options=CHANNEL_OPTIONS)
            stream = Stream(channel) if tc_grpc is not None else None
            counter = [0]
            sides = {
                "unary": lambda: run_unary(client, frames, args.seconds),
                "reused": lambda: run_reused(client, frames, args.seconds),
            }
            if stream is not None:
                sides["stream"] = lambda: run_stream(stream, client, frames, args.seconds, counter)
            run_unary(client, frames, 1.0)  # warm-up: connections, first batches
            totals = {name: [0.0, 0.0, 0, 0.0] for name in sides}  # client cpu, server cpu, requests, wall
            for _ in range(args.rounds):
                for name, run in sides.items():
                    cpu, scpu, t0 = time.process_time(), server_cpu_seconds(s), time.perf_counter()
                    n = run()
                    t = totals[name]
                    t[0] += time.process_time() - cpu
                    t[1] += server_cpu_seconds(s) - scpu
                    t[2] += n
                    t[3] += time.perf_counter() - t0
            if stream is not None:
                stream.close()
            client.close()
            channel.close()
    print(f"{args.games} players, one frame stack each per wave, {args.rounds} x {args.seconds:g} s per side:")
    base = totals["unary"][0] / totals["unary"][2]
    for name, (cpu, scpu, n, wall) in totals.items():
        print(
            f"  {name:7s} client CPU {1e3 * cpu / n:.3f} ms/request ({cpu / n / base:.2f}x unary), "
            f"{n / wall:6.0f} requests/s, server CPU {1e3 * scpu / n:.3f} ms/request"
        )
    if stream is not None:
        print(f"  stream: cut {stream.cuts} time(s) by the server's connection age, {stream.resent} request(s) resent")


if __name__ == "__main__":
    main()
