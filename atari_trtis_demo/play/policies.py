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

from atari_trtis_demo.client.errors import InferenceError
from atari_trtis_demo.client.inference_client import InferenceClient
from atari_trtis_demo.client.latency import LatencyStats
from atari_trtis_demo.core.cli_args import LOCAL_PLAY_MODULES, missing_modules, server_install_message
from atari_trtis_demo.core.errors import UserError

logger = logging.getLogger(__name__)
FALLBACK_PROBE_SECONDS = 2.0  # while on the fallback, the server is tried again this often
# A probe's own deadline (its client's timeout): a server that accepts but never answers costs
# no more than this per probe; and play waits at most PROBE_WAIT_SECONDS for the probe's answer
# before answering locally (the probe's answer, when it comes, is looked at on a later call).
PROBE_TIMEOUT_SECONDS = 1.0
PROBE_WAIT_SECONDS = 0.05


class Policy:
    """Q-values for a wave of scaled frame stacks, (n, 4, 84, 84) float32 -> (n, n_actions), waiting or not.

    A wave is every game of a bank that needs an action: one game is a wave of one.
    ``latency`` records one time per wave.
    """

    name: str = "policy"
    remote: bool = False  # whether latency is a round trip to a server (else local inference time)
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
        """Q-values (n, n_actions) of ``frames`` (n, 4, 84, 84); waits. Raises InferenceError when the source fails."""
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
    """Q-values from a KServe v2 server (Triton) through :class:`InferenceClient`.

    A wave goes out as one request, or as few as the model's batch limit allows, all at
    once (:meth:`InferenceClient.infer_wave`); the client checks every answer.
    """

    remote = True

    def __init__(self, client: InferenceClient) -> None:
        self.client = client
        self.name = f"remote {client.address} model '{client.model}'"
        self.latency = LatencyStats()

    @property
    def n_actions(self) -> int:  # type: ignore[override]  (known once the client has checked the model)
        return self.client.n_actions

    def q_values(self, frames: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        q = self.client.infer_wave(frames)
        self.latency.record(time.perf_counter() - start)
        return q

    def q_values_async(self, frames: np.ndarray) -> concurrent.futures.Future:
        # gRPC's own futures: no thread of ours waits on the network.
        start = time.perf_counter()
        future = self.client.infer_wave_async(frames)

        def answered(done: concurrent.futures.Future) -> None:
            if not done.cancelled() and done.exception() is None:
                self.latency.record(time.perf_counter() - start)

        future.add_done_callback(answered)
        return future

    def close(self) -> None:
        self.client.close()


class LocalChainerPolicy(Policy):
    """Q-values from an agent directory's Nature DQN, run by Chainer in this process."""

    def __init__(self, model_dir: str, *, flag: str = "--modelpath") -> None:
        try:
            from atari_trtis_demo.train.agent import batch_q_values, load_q_function
        except ImportError as e:  # a client-only install (./setup.sh --client) has no Chainer
            missing = missing_modules(LOCAL_PLAY_MODULES) or [e.name or str(e)]
            raise UserError(server_install_message(f"{flag} {model_dir}: local inference", missing)) from None
        self._forward = batch_q_values
        self.q_function, self.n_actions = load_q_function(model_dir)
        self.name = f"local Chainer {model_dir}"
        self.latency = LatencyStats()

    def q_values(self, frames: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        q = self._forward(self.q_function, frames)
        self.latency.record(time.perf_counter() - start)
        return q


class FallbackPolicy(Policy):
    """The primary (remote) policy, or the local one while the primary fails.

    After a failure (a bad answer included: the client checks each) every call
    goes to the fallback; once every ``probe_seconds`` a call also sends a probe (through
    ``probe``, a policy on a client with a short deadline of its own) and waits at most
    PROBE_WAIT_SECONDS for it, so a server that accepts but never answers does not slow
    the game; play returns to the primary when a probe is answered. Started with
    ``primary_down`` (the server did not answer at start), play begins on the fallback.
    A refused key is raised, not played around. Asynchronous calls run this same logic
    on the policy's worker thread. It says on the console when play falls back and when
    it comes back.
    """

    remote = True

    def __init__(
        self,
        primary: Policy,
        fallback: Policy,
        probe_seconds: float = FALLBACK_PROBE_SECONDS,
        *,
        primary_down: InferenceError | None = None,
        probe: Policy | None = None,
    ) -> None:
        self.primary, self.fallback, self.probe = primary, fallback, probe or primary
        self.name = primary.name
        self.n_actions = fallback.n_actions
        self.latency = primary.latency
        self.probe_seconds = probe_seconds
        self._on_fallback = False
        self._switches = 0
        self._next_probe = 0.0
        self._probe: concurrent.futures.Future | None = None
        self._probe_sent = 0.0
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
            logger.info("%s; playing on with local inference (%s)", error, self.fallback.name)
            print(f"warning: {error}; playing on with local inference", flush=True)
        self._next_probe = time.monotonic() + self.probe_seconds

    def _probed(self, frames: np.ndarray) -> np.ndarray | None:
        """While on the fallback: the server's answer when a probe brings one (play is then back on it)."""
        wait = 0.0
        try:
            if self._probe is None:
                if time.monotonic() < self._next_probe:
                    return None
                # May fail at once: a client not yet connected checks the server first, here.
                self._probe, wait = self.probe.q_values_async(frames), PROBE_WAIT_SECONDS
                self._probe_sent = time.monotonic()
            q = self._probe.result(timeout=wait)
        except TimeoutError:  # still out: looked at on a later call, unless lost (a future that never resolves)
            if time.monotonic() - self._probe_sent > self.probe_seconds + PROBE_TIMEOUT_SECONDS:
                self._probe, self._next_probe = None, time.monotonic()
            return None
        except InferenceError as e:
            self._probe = None
            self._fail(e)
            return None
        self._probe = None
        self._on_fallback = False
        print("the server answers again: back to remote inference", flush=True)
        return q

    def q_values(self, frames: np.ndarray) -> np.ndarray:
        if self._on_fallback:
            q = self._probed(frames)
            return self.fallback.q_values(frames) if q is None else q
        try:
            return self.primary.q_values(frames)
        except InferenceError as e:
            self._fail(e)
            return self.fallback.q_values(frames)

    def close(self) -> None:
        self._closing = True
        super().close()
        for policy in {id(p): p for p in (self.primary, self.fallback, self.probe)}.values():
            policy.close()
