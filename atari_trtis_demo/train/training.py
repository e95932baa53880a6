"""Training glue around ChainerRL's own loop: output directory, progress, checkpoints.

The loop itself is ChainerRL's ``experiments.train_agent`` with its ``Evaluator``, as
``train_agent_with_evaluation`` wires them; this module adds what the reproduction
script lacks: a progress line, atomic periodic checkpoints that can be resumed, a
learning-curve PNG, and no dump of environment variables.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

from chainerrl.experiments import train_agent
from chainerrl.experiments.evaluator import Evaluator

from atari_trtis_demo.core.errors import UserError
from atari_trtis_demo.train.plots import plot_learning_curve
from atari_trtis_demo.train.resume import ARGS_FILE, CHECKPOINT_SUFFIX, SCORES_FILE, list_checkpoints

CURVE_FILE = "learning_curve.png"
# An ETA beyond this is a run to rethink: ProgressLine then prints its hint once.
LONG_RUN_SECONDS = 24 * 3600

logger = logging.getLogger(__name__)


def prepare_output_dir(args: dict[str, Any], parent: str, argv: Sequence[str]) -> str:
    """A new timestamped run directory under ``parent`` with ``args.txt`` and ``command.txt``.

    Same layout as ChainerRL's ``prepare_output_dir``, minus ``environ.txt`` (a dump
    of every environment variable leaks secrets) and the git files.
    """
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise UserError(f"--outdir {parent}: exists and is not a directory")
    outdir = os.path.join(parent, datetime.now().strftime("%Y%m%dT%H%M%S.%f"))
    try:
        os.makedirs(outdir)
    except OSError as e:
        raise UserError(f"--outdir {parent}: cannot create the run directory ({e.strerror})") from e
    with open(os.path.join(outdir, ARGS_FILE), "w") as f:
        json.dump(args, f)
    with open(os.path.join(outdir, "command.txt"), "w") as f:
        f.write(" ".join(argv))
    return outdir


class ScoreKeepingEvaluator(Evaluator):
    """ChainerRL's Evaluator that remembers its last score and redraws the curve.

    ``previous_rows`` (from the run being resumed) are written under the header so a
    resumed run's ``scores.txt`` holds the whole history.
    """

    def __init__(self, *args: Any, previous_rows: Sequence[str] = (), stream: TextIO | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.last_score: float | None = None
        # The evaluation that saved best/: the end-of-training summary names it.
        self.best_step: int | None = None
        self.best_score: float | None = None
        self.stream = stream
        if previous_rows:
            with open(os.path.join(self.outdir, SCORES_FILE), "a") as f:
                f.writelines(row if row.endswith("\n") else row + "\n" for row in previous_rows)

    def evaluate_and_update_max_score(self, t: int, episodes: int) -> float:
        before = (self.best_step, self.best_score)
        previous_best = self.max_score
        score = super().evaluate_and_update_max_score(t, episodes)
        self.last_score = score
        if score > previous_best:
            self.best_step, self.best_score = t, score
        if self.stream is not None:
            line = evaluation_line(t, score, *before)
            print(f"\r{line}\x1b[K" if self.stream.isatty() else line, file=self.stream, flush=True)
        try:
            plot_learning_curve(os.path.join(self.outdir, SCORES_FILE), os.path.join(self.outdir, CURVE_FILE))
        except Exception as e:  # a plot must never stop training
            logger.warning("could not draw the learning curve: %s", e)
        return score


def evaluation_line(step: int, score: float, best_step: int | None, best_score: float | None) -> str:
    """What one evaluation says: its mean score, and whether it beat the best so far (then saved to best/).

    ``best_step``/``best_score``: the best evaluation of this run before this one (None: this is the first).
    """
    head = f"evaluation at step {step:,}: mean score {score:.2f}"
    if best_step is None or best_score is None:
        return f"{head}, the run's first, saved to best/"
    if score > best_score:
        return f"{head}, better than the {best_score:.2f} at step {best_step:,}: saved to best/"
    return f"{head}; best/ keeps the {best_score:.2f} of step {best_step:,}"


class ProgressLine:
    """Step hook printing steps, steps/s, ETA, epsilon and scores on one updating line.

    On a terminal the line is rewritten in place every ``interval`` seconds; in a log
    file (no TTY) a new line is written every ``log_interval`` seconds instead. While the
    replay buffer fills (no updates: several times faster) it says when updates start
    instead of an ETA, and the fill's rate is dropped once they do. ``hint`` is printed once,
    on its own line, after the first ETA beyond :data:`LONG_RUN_SECONDS`.
    """

    def __init__(
        self,
        total_steps: int,
        step_offset: int,
        stream: TextIO,
        evaluator: ScoreKeepingEvaluator | None = None,
        interval: float = 0.5,
        log_interval: float = 30.0,
        hint: str | None = None,
    ) -> None:
        self.total_steps = total_steps
        self.step_offset = step_offset
        self.stream = stream
        self.evaluator = evaluator
        self.tty = stream.isatty()
        self.interval = interval if self.tty else log_interval
        self.start = self.last_print = time.monotonic()
        self.window: list[tuple[float, int]] = [(self.start, step_offset)]
        self.filling = False
        self.hint = hint

    def __call__(self, env: Any, agent: Any, t: int) -> None:
        now = time.monotonic()
        if now - self.last_print < self.interval and t < self.total_steps:
            return
        self.last_print = now
        filling = replay_filling(agent) > 0
        if self.filling and not filling:  # updates have started: forget the fill's fast rate
            self.window = []
        self.filling = filling
        self.window.append((now, t))
        # steps/s over the last ~30 s, so the figure follows the phase of training
        # (fast before replay_start_size, slow once updates begin)
        while len(self.window) > 2 and now - self.window[1][0] > 30:
            self.window.pop(0)
        (t0, s0), (t1, s1) = self.window[0], self.window[-1]
        rate = (s1 - s0) / (t1 - t0) if t1 > t0 else 0.0
        self.stream.write(
            ("\r" if self.tty else "") + self.line(t, rate, agent, env) + ("\x1b[K" if self.tty else "\n")
        )
        if self.hint and not filling and rate > 0 and (self.total_steps - t) / rate > LONG_RUN_SECONDS:
            self.stream.write(("\n" if self.tty else "") + self.hint + "\n")
            self.hint = None
        self.stream.flush()

    def line(self, t: int, rate: float, agent: Any, env: Any) -> str:
        parts = [f"step {t:,}/{self.total_steps:,} ({100 * t / self.total_steps:.1f}%)", f"{rate:,.1f} steps/s"]
        fill = replay_filling(agent)
        if fill:
            left = f" in {format_duration(fill / rate)}" if rate > 0 else ""
            parts.append(f"filling the replay buffer, updates start{left} (ETA after they do)")
        else:
            parts.append(f"ETA {format_duration((self.total_steps - t) / rate) if rate > 0 else '?'}")
        epsilon = getattr(getattr(agent, "explorer", None), "epsilon", None)
        if epsilon is not None:
            parts.append(f"eps {epsilon:.3f}")
        scores = getattr(env, "recent_scores", None)
        if scores:
            recent = list(scores)[-10:]
            parts.append(f"game score {sum(recent) / len(recent):.1f} (last {len(recent)})")
        if self.evaluator is not None and self.evaluator.last_score is not None:
            parts.append(f"eval {self.evaluator.last_score:.1f}")
        return " | ".join(parts)

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def replay_filling(agent: Any) -> int:
    """Transitions still missing before a ChainerRL DQN starts updating (0 once it does, or for other agents)."""
    updater = getattr(agent, "replay_updater", None)
    start_size = getattr(updater, "replay_start_size", None)
    buffer = getattr(agent, "replay_buffer", None)
    if not isinstance(start_size, int) or buffer is None:
        return 0
    return max(0, start_size - len(buffer))


def format_duration(seconds: float) -> str:
    """``3d 04h``, ``2h 05m``, ``4m 09s`` or ``12s``."""
    s = int(seconds)
    if s >= 86400:
        return f"{s // 86400}d {s % 86400 // 3600:02d}h"
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"


class CheckpointHook:
    """Step hook saving the agent to ``<t>_checkpoint`` every ``freq`` steps.

    The save is atomic (see ``AtomicSaveDQN.save``); only the newest ``keep``
    checkpoints are kept, since each one of a Nature DQN takes about 20 MB.
    """

    def __init__(self, outdir: str, freq: int, keep: int = 2) -> None:
        self.outdir = outdir
        self.freq = freq
        self.keep = keep

    def __call__(self, env: Any, agent: Any, t: int) -> None:
        if t % self.freq:
            return
        agent.save(os.path.join(self.outdir, f"{t}{CHECKPOINT_SUFFIX}"))
        logger.info("saved checkpoint at step %d", t)
        for old in list_checkpoints(self.outdir)[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)


def train_with_evaluation(
    agent: Any,
    env: Any,
    eval_env: Any,
    *,
    steps: int,
    outdir: str,
    eval_n_steps: int | None,
    eval_n_episodes: int | None,
    eval_interval: int,
    checkpoint_freq: int | None = None,
    step_offset: int = 0,
    previous_rows: Sequence[str] = (),
    train_max_episode_len: int | None = None,
    eval_max_episode_len: int | None = None,
    stream: TextIO | None = None,
    long_run_hint: str | None = None,
) -> ScoreKeepingEvaluator:
    """Train ``agent`` with ChainerRL's ``train_agent`` and periodic evaluation.

    Writes ``scores.txt``, ``best/``, checkpoints and ``<steps>_finish`` into
    ``outdir``. On an exception or Ctrl-C ChainerRL saves ``<t>_except`` (atomically,
    through ``AtomicSaveDQN.save``) and the exception propagates. ``long_run_hint``: what the
    progress line says once when the ETA is beyond a day.
    """
    stream = stream if stream is not None else sys.stderr
    evaluator = ScoreKeepingEvaluator(
        agent=agent,
        n_steps=eval_n_steps,
        n_episodes=eval_n_episodes,
        eval_interval=eval_interval,
        outdir=outdir,
        max_episode_len=eval_max_episode_len,
        env=eval_env,
        step_offset=step_offset,
        save_best_so_far_agent=True,
        previous_rows=previous_rows,
        stream=stream,
    )
    progress = ProgressLine(steps, step_offset, stream, evaluator, hint=long_run_hint)
    hooks: list[Any] = [progress]
    if checkpoint_freq:
        hooks.append(CheckpointHook(outdir, checkpoint_freq))
    try:
        train_agent(
            agent,
            env,
            steps,
            outdir,
            max_episode_len=train_max_episode_len,
            step_offset=step_offset,
            evaluator=evaluator,
            step_hooks=hooks,
            logger=logger,
        )
    finally:
        progress.finish()
    return evaluator
