"""Many games over several cores: ``src/app.py --games N --workers K --headless``.

One Python process steps every env and sends every request of ``--games N`` under one
GIL: past about 64 games that one core is the limit (issue 17: 0.6-0.8 ms of ALE and
wrappers and 0.2-0.3 ms of gRPC per game step). Here the games are shared out over
``K`` worker processes, game ``i`` to worker ``i * K // N``, each with its own gRPC
channel, running the one play loop (:mod:`atari_trtis_demo.play.play_loop`) on its share
with the same seeds the games would have in one process. Each game still sends one
request per agent step: Triton, not the client, forms the batches.

The parent waits until every worker has connected and built its envs, then starts
them at one moment; it gathers each game's figures (episodes, round trips, staleness)
and prints one report, one JSON and the evaluation summary, as one process would.

Workers draw nothing: a window would need every screen sent to the parent (about
100 kB per game and step, 1.4 MB/s per game at 15 steps/s), which is the work the
workers exist to take off the parent. ``--workers`` therefore needs ``--headless``.

A worker dies with its parent (``PR_SET_PDEATHSIG``); Ctrl-C or SIGTERM stops the
workers, reports what was played and leaves no process behind.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from atari_trtis_demo.core.errors import ServiceError, UserError
from atari_trtis_demo.core.parent_death import die_with_parent
from atari_trtis_demo.play.play_config import PlayConfig
from atari_trtis_demo.play.play_result import PlayResult, cpu_seconds
from atari_trtis_demo.play.worker_reports import WorkerReport, merge, worker_report

# How long the workers may take to import, connect and build their envs (loaded machine: N x 50 ms of resets).
READY_SECONDS = 120.0
# After Ctrl-C or SIGTERM, how long the workers get to report what they played before they are killed.
STOP_GRACE_SECONDS = 5.0


@dataclass
class ServerSpec:
    """What a worker needs to open its own channel to the server (the key comes from the environment)."""

    host: str  # as --host gave it: one server, a list or a dns: name (server_list.parse_servers)
    port: int
    model: str
    timeout: float
    tls_ca: str | None = None


def shares(games: int, workers: int) -> list[range]:
    """Game indices per worker: contiguous, sizes differing by at most one."""
    return [range(w * games // workers, (w + 1) * games // workers) for w in range(workers)]


def check_worker_flags(workers: int, games: int, headless: bool, record: str | None, fallback: str | None) -> None:
    """``--workers`` with a flag it cannot serve is one line naming both (exit 2)."""
    if workers <= 1:
        return
    if workers > games:
        raise UserError(f"--workers {workers}: more workers than --games {games}; give each worker a game at least")
    if not headless:
        raise UserError(
            f"--workers {workers} plays without a window: add --headless (the workers would have to send every "
            "screen to one window, the work they exist to spread)"
        )
    if record:
        raise UserError(f"--workers {workers} cannot --record: no process holds every screen; drop one of them")
    if fallback:
        raise UserError(f"--workers {workers} cannot play with --fallback-modelpath: use one process for a fallback")


# -- the worker ----------------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    """Ask Linux to kill this process when its parent dies (a killed parent must not leave players behind)."""
    die_with_parent()  # not Linux: the parent's own cleanup still ends the workers
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _interrupt_once(signum: int, frame: Any) -> None:
    # Ctrl-C reaches a worker twice (the terminal's group signal, then the parent's): the first stops
    # play, later ones must not break the report on its way to the parent.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def worker_main(
    spec: ServerSpec, config: PlayConfig, games: range, conn: multiprocessing.connection.Connection, start: Any
) -> None:
    """Play ``games`` (global indices) against ``spec``'s server and send a :class:`WorkerReport` on ``conn``.

    Messages: ``("ready",)`` once connected with envs built, then after ``start`` is set one of
    ``("report", WorkerReport)``, ``("error", "user" | "service" | "other", message)``, ``("stopped",)``.
    """
    _die_with_parent(int(os.environ.get("ATARI_WORKERS_PARENT", "0")) or os.getppid())
    signal.signal(signal.SIGINT, _interrupt_once)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    loop = None
    try:
        from atari_trtis_demo.client.inference_client import InferenceClient
        from atari_trtis_demo.play.play_loop import PlayLoop
        from atari_trtis_demo.play.policies import RemotePolicy

        client = InferenceClient(spec.host, spec.port, spec.model, timeout=spec.timeout, tls_ca=spec.tls_ca)
        try:
            mine = dataclasses.replace(config, first_game=games.start, headless=True, screenshot=None, record=None)
            loop = PlayLoop(RemotePolicy(client), len(games), mine)
            loop.start_games()  # the seeded resets (ale-py reloads the ROM: ~0.1 s each) before the start
            conn.send(("ready",))
            start.wait()
            loop.play()
            # Play is over: a stop asked from now on (the parent's, when another worker failed) must not
            # break the report or the cleanup.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            result = loop.summarise()
            conn.send(("report", worker_report(result, client.answered_by_server())))
        finally:
            if loop is not None:
                loop.screen.finish()
                loop.close()
            client.close()
    except KeyboardInterrupt:
        conn.send(("stopped",))
    except UserError as e:
        conn.send(("error", "user", str(e)))
    except ServiceError as e:
        conn.send(("error", "service", str(e)))
    except Exception as e:  # noqa: BLE001 (a bug must still reach the parent as one line, not a hang)
        conn.send(("error", "other", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


# -- the parent ----------------------------------------------------------------------------


class _Stop(Exception):
    """SIGTERM in the parent: stop the workers as Ctrl-C does."""


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop


def play_in_workers(
    spec: ServerSpec,
    config: PlayConfig,
    games: int,
    workers: int,
    announce: Callable[[PlayResult], None] | None = None,
) -> PlayResult:
    """Play ``games`` games (``config.episodes`` each) spread over ``workers`` processes; see the module's text.

    A worker that cannot connect or fails outside play ends the command as that error
    (``UserError``: exit 2, else ``ServiceError``: exit 1); a failure during play is
    ``result.error``, with the statistics up to then, as in one process.
    """
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no gRPC state forked from this one
    start = ctx.Event()
    procs: list[Any] = []
    conns: dict[Any, int] = {}
    previous_term = signal.signal(signal.SIGTERM, _raise_stop)
    os.environ["ATARI_WORKERS_PARENT"] = str(os.getpid())
    reports: list[WorkerReport] = []
    stopped = False
    parent_cpu = 0.0
    try:
        # Started with SIGINT ignored: a worker still importing ignores Ctrl-C (the parent stops it),
        # and sets its own handler once it runs (worker_main).
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for w, share in enumerate(shares(games, workers)):
                receive, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(
                    target=worker_main, args=(spec, config, share, send, start), name=f"player-{w}", daemon=True
                )
                proc.start()
                send.close()  # the worker holds the only sending end: its exit closes the pipe
                procs.append(proc)
                conns[receive] = w
        finally:
            signal.signal(signal.SIGINT, previous_int)
        try:
            _gather(conns, procs, "ready", time.monotonic() + READY_SECONDS)
            start.set()
            # Starting K interpreters takes seconds: say when play begins.
            print(f"{games} games in {workers} worker processes: playing", flush=True)
            parent_cpu = -cpu_seconds()
            reports = _gather(conns, procs, "report", None, on_failure=lambda: _interrupt(procs))
            parent_cpu += cpu_seconds()
        except (KeyboardInterrupt, _Stop):
            stopped = True
            # The grace below is bounded: a second Ctrl-C or SIGTERM must not cut the cleanup short.
            previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            _interrupt(procs)
            start.set()  # a worker waiting to start leaves its wait and reports nothing played
            reports = _gather(conns, procs, "report", time.monotonic() + STOP_GRACE_SECONDS, quiet=True)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(2.0)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in conns:
            conn.close()
        os.environ.pop("ATARI_WORKERS_PARENT", None)
        signal.signal(signal.SIGTERM, previous_term)
        if stopped:
            signal.signal(signal.SIGINT, previous_int)
    if not reports:
        result = PlayResult(mode="sync" if config.sync else "async", policy=f"remote {spec.host}:{spec.port}")
    else:
        result = merge(reports)
    # A failure in one worker stopped the others (as it ends every game in one process): not the user's doing.
    result.stopped_by_user = stopped or (result.stopped_by_user and not result.error)
    # Where the client's CPU went while playing (imports and env set-up before the start left out).
    worker_cpu = sum(r.cpu_seconds for r in reports)
    result.cpu_seconds = worker_cpu + parent_cpu
    if announce is not None:
        announce(result)
    if reports:
        print(
            f"  {len(procs)} worker processes: client CPU in play {worker_cpu + parent_cpu:.2f} s "
            f"(workers {worker_cpu:.2f} s, this process {parent_cpu:.2f} s)",
            flush=True,
        )
    return result


def _interrupt(procs: list[Any]) -> None:
    """Ask every worker still running to stop playing and report (its play loop takes SIGINT as Ctrl-C)."""
    for proc in procs:
        if proc.is_alive():
            try:
                os.kill(proc.pid, signal.SIGINT)
            except ProcessLookupError:
                pass


def _gather(
    conns: dict[Any, int],
    procs: list[Any],
    kind: str,
    deadline: float | None,
    quiet: bool = False,
    on_failure: Callable[[], None] | None = None,
) -> list[Any]:
    """One ``kind`` message from every worker (their payloads); a worker's error is raised as the same kind.

    ``quiet``: stopping; errors, early exits and the deadline just end the gathering.
    ``on_failure``: called once when a report says play failed (the other workers should stop too).
    """
    waiting = dict(conns)
    got: list[Any] = []
    while waiting:
        timeout = None if deadline is None else deadline - time.monotonic()
        if timeout is not None and timeout <= 0:
            if quiet:
                return got
            raise ServiceError(f"{len(waiting)} worker(s) not ready within {READY_SECONDS:g} s")
        for conn in multiprocessing.connection.wait(list(waiting), timeout):
            w = waiting.pop(conn)  # type: ignore[call-overload]
            try:
                message = conn.recv()  # type: ignore[union-attr]
            except EOFError:
                if quiet:
                    continue
                code = procs[w].exitcode
                raise ServiceError(f"worker {w} ended (exit code {code}) before it reported its games") from None
            if message[0] == kind:
                got.append(message[1] if len(message) > 1 else None)
                if on_failure is not None and getattr(got[-1], "error", None):
                    on_failure()
                    on_failure = None
            elif message[0] == "stopped" or quiet:
                continue
            elif message[0] == "error":
                _, family, text = message
                raise (UserError if family == "user" else ServiceError)(
                    text if family != "other" else f"worker {w}: {text}"
                )
    return got
