"""Where the Q-values come from: a server, the agent directory run locally, or the server with a local fallback.

Every policy answers the same questions (its name, its action count, its latency,
whether it is on a fallback and how often it switched), so the game loop never asks
which kind it has. This module imports no Chainer; the local policy imports it when
it is built.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time

import numpy as np

from atari_trtis_demo.errors import UserError
from atari_trtis_demo.inference_client import InferenceClient, InferenceError
from atari_trtis_demo.play_stats import LatencyStats

logger = logging.getLogger(__name__)
FALLBACK_PROBE_SECONDS = 2.0


class Policy:
    """Q-values for a scaled (4, 84, 84) float32 frame stack, waiting (:meth:`q_values`) or not."""

    name: str = "policy"
    n_actions: int
    latency: LatencyStats
    _worker: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def on_fallback(self) -> bool:
        """Whether the answers come from a stand-in (see :class:`FallbackPolicy`)."""
        return False

    @property
    def fallback_switches(self) -> int:
        return 0

    def q_values(self, frames: np.ndarray) -> np.ndarray:
        """Q-values (n_actions,); waits. Raises InferenceError when the source fails."""
        raise NotImplementedError

    def q_values_async(self, frames: np.ndarray) -> concurrent.futures.Future:
        """The same without waiting: by default :meth:`q_values` on this policy's one worker thread."""
        if self._worker is None:
            self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=type(self).__name__)
        return self._worker.submit(self.q_values, frames)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=False, cancel_futures=True)


class RemotePolicy(Policy):
    """Q-values from a KServe v2 server (Triton) through :class:`InferenceClient`."""

    def __init__(self, client: InferenceClient) -> None:
        self.client = client
        self.name = f"remote {client.address} model '{client.model}'"
        self.latency = client.stats

    @property
    def n_actions(self) -> int:  # type: ignore[override]  (known once the client has checked the model)
        return self.client.n_actions

    def q_values(self, frames: np.ndarray) -> np.ndarray:
        return self.client.infer(frames)

    def q_values_async(self, frames: np.ndarray) -> concurrent.futures.Future:
        # gRPC's own future: no thread of ours waits on the network.
        return self.client.infer_async(frames)

    def close(self) -> None:
        self.client.close()


class LocalChainerPolicy(Policy):
    """Q-values from an agent directory's Nature DQN, run by Chainer in this process."""

    def __init__(self, model_dir: str, *, flag: str = "--modelpath") -> None:
        try:
            from atari_trtis_demo.agent import batch_q_values, load_q_function
        except ImportError as e:  # a client-only install (./setup.sh --client) has no Chainer
            raise UserError(
                f"{flag} {model_dir}: local inference needs Chainer and ChainerRL, which this environment lacks "
                f"({e.name or e}): install everything with ./setup.sh (not --client)"
            ) from None
        self._forward = batch_q_values
        self.q_function, self.n_actions = load_q_function(model_dir)
        self.name = f"local Chainer {model_dir}"
        self.latency = LatencyStats()

    def q_values(self, frames: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        q = self._forward(self.q_function, frames[None])[0]
        self.latency.record(time.perf_counter() - start)
        return q


class FallbackPolicy(Policy):
    """The primary (remote) policy, or the local one while the primary fails.

    After a failure every call goes to the fallback; once every ``probe_seconds`` a
    call tries the primary again, and play returns to it when it answers. Started with
    ``primary_down`` (the server did not answer at start), play begins on the fallback.
    Asynchronous calls run this same logic on the policy's worker thread.
    """

    def __init__(
        self,
        primary: Policy,
        fallback: Policy,
        probe_seconds: float = FALLBACK_PROBE_SECONDS,
        *,
        primary_down: InferenceError | None = None,
    ) -> None:
        self.primary, self.fallback = primary, fallback
        self.name = primary.name
        self.n_actions = fallback.n_actions
        self.latency = primary.latency
        self.probe_seconds = probe_seconds
        self._on_fallback = False
        self._switches = 0
        self._next_probe = 0.0
        self._closing = False
        if primary_down is not None:
            self._fail(primary_down)

    @property
    def on_fallback(self) -> bool:
        return self._on_fallback

    @property
    def fallback_switches(self) -> int:
        return self._switches

    def _fail(self, error: InferenceError) -> None:
        if not self._on_fallback and not self._closing:  # closing cancels a call in flight: no server fault
            self._on_fallback, self._switches = True, self._switches + 1
            logger.warning("%s; playing on with local inference (%s)", error, self.fallback.name)
            print(f"warning: {error}; playing on with local inference", flush=True)
        self._next_probe = time.monotonic() + self.probe_seconds

    def q_values(self, frames: np.ndarray) -> np.ndarray:
        if self._on_fallback and time.monotonic() < self._next_probe:
            return self.fallback.q_values(frames)
        try:
            q = self.primary.q_values(frames)
        except InferenceError as e:
            self._fail(e)
            return self.fallback.q_values(frames)
        if self._on_fallback:
            self._on_fallback = False
            logger.warning("the server answers again: back to remote inference")
            print("the server answers again: back to remote inference", flush=True)
        return q

    def close(self) -> None:
        self._closing = True
        super().close()
        self.primary.close()
        self.fallback.close()
