"""Where a run continues from: ``--resume DIR``, or the same command run again after Ctrl-C.

A run directory holds its agents as ``<step>_checkpoint/`` (periodic), ``<step>_except/``
(saved at Ctrl-C or SIGTERM) and ``<step>_finish/`` (the end), each with ``agent_state.json``,
and ``args.txt``, the flags it was started with.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from atari_trtis_demo.core.contract import AGENT_STATE_FILE, ENV_ID_KEY
from atari_trtis_demo.core.errors import UserError
from atari_trtis_demo.train.agent import read_agent_step

SCORES_FILE = "scores.txt"
ARGS_FILE = "args.txt"
CHECKPOINT_SUFFIX = "_checkpoint"
INTERRUPTED_SUFFIX = "_except"  # ChainerRL's name for the agent saved when training raised (Ctrl-C)
FINISHED_SUFFIX = "_finish"


def list_checkpoints(run_dir: str, suffixes: tuple[str, ...] = ("checkpoint", "except", "finish")) -> list[str]:
    """Agent directories of ``run_dir`` that can be resumed (those named ``<step>_<suffix>``), oldest step first."""
    found = []
    for name in os.listdir(run_dir):
        path = os.path.join(run_dir, name)
        step, _, suffix = name.partition("_")
        if step.isdigit() and suffix in suffixes and os.path.isfile(os.path.join(path, AGENT_STATE_FILE)):
            found.append((int(step), path))
    return [path for _, path in sorted(found)]


def run_dirs(outdir: str) -> list[str]:
    """The run directories under ``outdir``, oldest first (timestamped names sort by time)."""
    if not os.path.isdir(outdir):
        return []
    return sorted(e.path for e in os.scandir(outdir) if e.is_dir(follow_symlinks=False))


def _recorded_game(agent_dir: str) -> str | None:
    try:
        with open(os.path.join(agent_dir, AGENT_STATE_FILE)) as f:
            return json.load(f).get(ENV_ID_KEY)
    except (OSError, ValueError, AttributeError):
        return None


@dataclass
class ResumePoint:
    """The agent directory a run continues from, its step, and (for a folder of runs) why it was chosen."""

    agent_dir: str
    step: int
    why: str | None = None


def resolve_resume(path: str, env_id: str | None = None) -> ResumePoint:
    """``--resume DIR``: an agent directory; a run directory (its checkpoint with the most steps); or a
    folder of runs (``--outdir``): the checkpoint with the most steps of all its runs that play ``env_id``
    (ties: the newest run), saying which it took and why."""
    if not os.path.isdir(path):
        raise UserError(f"--resume {path}: directory does not exist")
    if os.path.isfile(os.path.join(path, AGENT_STATE_FILE)):
        return ResumePoint(path, read_agent_step(path))
    checkpoints = list_checkpoints(path)
    if checkpoints:
        return ResumePoint(checkpoints[-1], read_agent_step(checkpoints[-1]))
    runs = [(run, found[-1]) for run in run_dirs(path) if (found := list_checkpoints(run))]
    if not runs:
        raise UserError(
            f"--resume {path}: no checkpoint in it or its runs (expected <steps>_checkpoint/ with {AGENT_STATE_FILE})"
        )
    same_game = [(run, agent) for run, agent in runs if _recorded_game(agent) in (None, env_id)]
    candidates = same_game or runs  # none of this game: the load names the game it has
    steps = {agent: read_agent_step(agent) for _, agent in candidates}
    # max() keeps the first of equals: reversed, so that of equal steps the newest run wins.
    _, agent = max(reversed(candidates), key=lambda pair: steps[pair[1]])
    of_game = f" of {env_id}" if len(candidates) < len(runs) else ""
    if len(candidates) == 1:
        why = f"its only run{of_game} with a checkpoint"
    else:
        why = f"the most steps of its {len(candidates)} runs{of_game} with a checkpoint"
    return ResumePoint(agent, steps[agent], f"--resume {path}: continuing from {agent} (step {steps[agent]:,}, {why})")


def interrupted_run(args: dict[str, Any]) -> ResumePoint | None:
    """Where the same command, run again, continues: the newest run under ``args["outdir"]`` started
    with exactly these flags (``args.txt``), when it was interrupted (it has a ``<step>_except/``) and did
    not finish. A run of another game, other steps or any other flag is never taken up; a finished one
    neither (the command then starts a new run, as always)."""
    same_command = json.loads(json.dumps(args))  # as args.txt holds them: JSON types
    for run in reversed(run_dirs(args["outdir"])):
        try:
            with open(os.path.join(run, ARGS_FILE)) as f:
                recorded = json.load(f)
        except (OSError, ValueError):
            continue
        if recorded != same_command:
            continue
        if list_checkpoints(run, ("finish",)):
            return None
        saved = list_checkpoints(run, ("except",))
        if not saved:
            return None  # killed (no save at Ctrl-C), crashed, or still running: not ours to take up
        step = read_agent_step(saved[-1])
        return ResumePoint(
            saved[-1],
            step,
            f"Continuing the interrupted run {run} from {os.path.basename(saved[-1])}/ at step {step:,}, as this "
            "same command was stopped there (another --outdir starts afresh)",
        )
    return None


def where_saved(outdir: str, *, again: bool) -> str:
    """After Ctrl-C: where ChainerRL saved the agent and how to continue (``again``: by running the same
    command again, which a command with an explicit --resume does not do)."""
    saved = list_checkpoints(outdir, ("except",))
    if not saved:
        return "nothing saved"
    if again:
        return f"the agent is saved in {saved[-1]}; run the same command again to continue (or --resume {saved[-1]})"
    return f"the agent is saved in {saved[-1]}; continue with --resume {saved[-1]}"


def previous_score_rows(agent_dir: str, up_to_step: int) -> list[str]:
    """Rows of the ``scores.txt`` beside a resumed agent, up to its step."""
    path = os.path.join(os.path.dirname(os.path.normpath(agent_dir)), SCORES_FILE)
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        rows = f.readlines()[1:]
    return [row for row in rows if row.split("\t", 1)[0].isdigit() and int(row.split("\t", 1)[0]) <= up_to_step]
