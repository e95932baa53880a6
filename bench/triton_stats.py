"""Triton's own account of where a request's time goes, read from its metrics endpoint.

The project's gRPC proto subset has no ModelStatistics call, so the figures come from
Prometheus text at ``http://<address>:<metrics_port>/metrics``. Every ``nv_inference_*``
figure used here is a cumulative counter: take one snapshot before and one after, and
:func:`delta` them.

Only the benchmarks and the tests read these figures, so this module sits in ``bench/``, not in
the package: a benchmark run as ``python bench/x.py`` has ``bench/`` on ``sys.path``, and pytest
adds it (``pythonpath`` in pyproject.toml); both import it as ``triton_stats``.
"""

from __future__ import annotations

import re
import time
import urllib.request
from dataclasses import dataclass

# Cumulative counters per model (label model="..."), Triton 2.x names.
COUNTERS = (
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",  # inferences: frame stacks, summed over batches
    "nv_inference_exec_count",  # model executions (batches)
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
)
_LINE = re.compile(r"^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\}\s+(?P<value>[-+0-9.eE]+|NaN)\s*$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def metrics_url(address: str, metrics_port: int) -> str:
    host = "127.0.0.1" if address in ("", "0.0.0.0") else address
    return f"http://{host}:{metrics_port}/metrics"


def parse_metrics(text: str, model: str | None = None) -> dict[str, float]:
    """The :data:`COUNTERS` in Prometheus ``text``, summed over versions (and models, unless ``model``)."""
    totals = dict.fromkeys(COUNTERS, 0.0)
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match or match["name"] not in totals:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        if model is not None and labels.get("model") != model:
            continue
        totals[match["name"]] += float(match["value"])
    return totals


def read_metrics(url: str, model: str | None = None, timeout: float = 5.0) -> dict[str, float]:
    """A snapshot of the counters of ``model`` (or of all models) from Triton's metrics endpoint."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return parse_metrics(response.read().decode(), model)


def wait_for_metrics(url: str, model: str | None = None, timeout: float = 30.0) -> dict[str, float]:
    """The first snapshot once the endpoint answers: Triton opens it a moment after its gRPC and HTTP ports."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return read_metrics(url, model)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before.get(name, 0.0) for name in after}


@dataclass
class ServerBreakdown:
    """Per request averages in ms over a :func:`delta`, and the mean batch Triton formed."""

    requests: int
    executions: int
    mean_batch: float
    request_ms: float  # from Triton receiving the request to sending the response
    queue_ms: float  # waiting in the scheduler (the dynamic batcher's delay, a busy instance)
    input_ms: float  # inputs into the backend (for the twin: into its stub process)
    infer_ms: float  # the model's execute (the twin: checks, concatenation, onnxruntime)
    output_ms: float  # outputs back out of the backend

    @classmethod
    def of(cls, counters: dict[str, float]) -> ServerBreakdown:
        n = counters["nv_inference_request_success"]
        per = 1e-3 / n if n else 0.0
        executions = counters["nv_inference_exec_count"]
        return cls(
            requests=int(n),
            executions=int(executions),
            mean_batch=counters["nv_inference_count"] / executions if executions else 0.0,
            request_ms=counters["nv_inference_request_duration_us"] * per,
            queue_ms=counters["nv_inference_queue_duration_us"] * per,
            input_ms=counters["nv_inference_compute_input_duration_us"] * per,
            infer_ms=counters["nv_inference_compute_infer_duration_us"] * per,
            output_ms=counters["nv_inference_compute_output_duration_us"] * per,
        )

    def line(self) -> str:
        return (
            f"server per request: {self.request_ms:.2f} ms = queue {self.queue_ms:.2f} + input {self.input_ms:.2f} "
            f"+ infer {self.infer_ms:.2f} + output {self.output_ms:.2f} (+ Triton's own); "
            f"{self.requests} requests in {self.executions} executions, mean batch {self.mean_batch:.1f}"
        )
