"""``train_src/train_dqn.py``, ``atari-train``: ChainerRL's DQN reproduction script, on ale-py.

Flags and defaults are those of ChainerRL's
``examples/atari/reproduction/dqn/train_dqn.py`` (declared on
:class:`~atari_trtis_demo.train.train_config.TrainOptions`). :func:`main` reads as the
steps of a run; Chainer is imported only once the flags, the GPU and the game are checked.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from atari_trtis_demo.core.cli_args import TRAIN_MODULES, ArgumentParser, needs_server_install
from atari_trtis_demo.core.contract import EVAL_EPSILON, EVALUATION_EPISODE_CAP
from atari_trtis_demo.core.envs import OldGymAPI, make_env
from atari_trtis_demo.core.errors import UserError
from atari_trtis_demo.core.game_id import recorded_env_id
from atari_trtis_demo.core.typed_flags import add_flags, from_args
from atari_trtis_demo.train.gpu import check_gpu
from atari_trtis_demo.train.train_config import TrainOptions

if TYPE_CHECKING:
    from atari_trtis_demo.train.resume import ResumePoint


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="Train a DQN (Nature network) on an Atari game with ChainerRL.")
    add_flags(p, TrainOptions)
    return p


def check_args(args: TrainOptions) -> None:
    """Combinations of flags; the range of each number is checked by its argparse type."""
    chosen = [
        f
        for f, v in (("--load", args.load), ("--load-pretrained", args.load_pretrained), ("--resume", args.resume))
        if v
    ]
    if len(chosen) > 1:
        raise UserError(f"{' and '.join(chosen)} cannot be used together")
    if args.resume and args.demo:
        raise UserError("--resume continues training; use --load with --demo")


@dataclass
class Start:
    """Where training starts: the step, the scores so far, the agent directory loaded (if any)."""

    step_offset: int = 0
    previous_rows: list[str] = field(default_factory=list)
    agent_dir: str | None = None


def main(argv: Sequence[str] | None = None) -> int:
    """Train; without Chainer (a client install) one ``error:`` line says what to install."""
    # Also for train_src/train_dqn.py, which runs this main directly (atari-train goes through console.train).
    command = os.path.basename(sys.argv[0]) or "train_dqn.py"
    return needs_server_install(command, lambda: _main(argv), TRAIN_MODULES)() or 0


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = from_args(TrainOptions, build_parser().parse_args(argv))
    check_args(args)
    check_gpu(args.gpu)
    train_env, eval_env = make_envs(args)  # checks the env id before anything is written to disk

    # Chainer and ChainerRL are slow to import: only after the cheap checks.
    from chainerrl import misc

    from atari_trtis_demo.train.resume import interrupted_run, where_saved

    misc.set_random_seed(args.seed, gpus=(args.gpu,))
    # The same command again after Ctrl-C takes its interrupted run up (an explicit --resume is obeyed as given).
    continuing = None if args.resume or args.demo else interrupted_run(vars(args))
    agent, start = initial_agent(args, train_env.action_space.n, continuing)
    if args.demo:
        evaluate_demo(agent, eval_env, args)
        return 0
    remove_killed_saves(args.outdir, start.agent_dir)
    outdir = start_run(args, argv)
    if args.resume:
        checkpoint_run = os.path.dirname(os.path.normpath(start.agent_dir or ""))
        print(
            f"Continuing in a new run directory {outdir}; the checkpoint's run {checkpoint_run} stays as it was",
            file=sys.stderr,
        )
    try:
        evaluator = train(agent, train_env, eval_env, args, outdir, start)
    except KeyboardInterrupt:
        print(f"\nInterrupted at step {agent.t:,}: {where_saved(outdir, again=not args.resume)}", file=sys.stderr)
        return 130
    final_evaluation(agent, eval_env, args, outdir, best=(evaluator.best_step, evaluator.best_score))
    return 0


def make_envs(args: TrainOptions) -> tuple[OldGymAPI, OldGymAPI]:
    """The training and the evaluation env, with different seeds as ChainerRL does."""
    train_env = OldGymAPI(make_env(args.env, train=True), seed=args.seed)
    eval_seed = 2**31 - 1 - args.seed
    return train_env, OldGymAPI(make_env(args.env, train=False, seed=eval_seed), seed=eval_seed)


def initial_agent(args: TrainOptions, n_actions: int, continuing: ResumePoint | None = None) -> tuple[Any, Start]:
    """A new DQN, loaded from ``--load``, ``--load-pretrained`` or ``--resume`` when given; from
    ``continuing`` (the interrupted run of the same command) before all of them."""
    from atari_trtis_demo.train.agent import load_agent, make_agent
    from atari_trtis_demo.train.resume import previous_score_rows, resolve_resume

    agent = make_agent(
        n_actions,
        gpu=args.gpu,
        replay_start_size=args.replay_start_size,
        replay_capacity=args.replay_capacity,
        final_exploration_steps=args.final_exploration_steps,
        env_id=args.env,  # recorded in every agent directory it saves
    )
    if args.load and not continuing:
        load_agent(agent, args.load, env_n_actions=n_actions)
        return agent, Start(agent_dir=args.load)
    if args.load_pretrained and not continuing:
        from atari_trtis_demo.train.model_zoo import download_pretrained

        load_agent(agent, download_pretrained(args.env, args.pretrained_type), env_n_actions=n_actions)
        return agent, Start()
    if continuing or args.resume:
        point = continuing or resolve_resume(args.resume or "", args.env)
        resume_dir, step_offset = point.agent_dir, point.step
        recorded = recorded_env_id(resume_dir)
        if recorded and recorded != args.env:
            raise UserError(
                f"--resume {resume_dir}: the checkpoint plays {recorded}, not {args.env}: add --env {recorded}"
            )
        if step_offset >= args.steps:
            raise UserError(f"--resume {resume_dir}: already at step {step_offset:,}, not below --steps {args.steps:,}")
        load_agent(agent, resume_dir, env_n_actions=n_actions)
        previous_rows = previous_score_rows(resume_dir, step_offset)
        refill = (
            f"the replay buffer starts empty, and refills for {args.replay_start_size:,} steps before updates continue"
        )
        if continuing:  # one line: which run, why, and what starts over
            print(f"{point.why}; {refill}", file=sys.stderr)
        else:
            if point.why:  # a folder of runs: which it took and why
                print(point.why, file=sys.stderr)
            print(f"Resuming from {resume_dir} at step {step_offset:,} ({refill})", file=sys.stderr)
        return agent, Start(step_offset, previous_rows, resume_dir)
    return agent, Start()


def evaluate_demo(agent: Any, eval_env: OldGymAPI, args: TrainOptions) -> None:
    """``--demo``: only score the agent, for ``--eval-n-steps`` steps."""
    from chainerrl.experiments.evaluator import eval_performance

    stats = eval_performance(env=eval_env, agent=agent, n_steps=args.eval_n_steps, n_episodes=None)
    print(f"n_episodes: {stats['episodes']} mean: {stats['mean']} median: {stats['median']} stdev {stats['stdev']}")


def remove_killed_saves(outdir: str, start_dir: str | None) -> None:
    """Remove the temporary copies (6-20 MB each) that runs killed during a save left.

    A run killed during a save (kill -9, out of memory) left its temporary copy beside
    its agent directories: in the run this one starts from, or in any earlier run
    under ``--outdir``.
    """
    from atari_trtis_demo.train.agent import remove_unfinished_saves

    run_dirs = {os.path.dirname(os.path.normpath(start_dir)) or "."} if start_dir else set()
    if os.path.isdir(outdir):
        run_dirs |= {e.path for e in os.scandir(outdir) if e.is_dir(follow_symlinks=False)}
    for run_dir in sorted(run_dirs):
        removed, freed = remove_unfinished_saves(run_dir)
        if removed:
            saves = "save" if len(removed) == 1 else "saves"
            print(
                f"removed {len(removed)} unfinished {saves} ({freed / 1e6:.0f} MB) left by a killed run in {run_dir}",
                file=sys.stderr,
            )


def start_run(args: TrainOptions, argv: list[str]) -> str:
    """The new run directory, with log.txt; SIGTERM (a scheduler or ``kill``) will end training like Ctrl-C."""
    from atari_trtis_demo.train.training import prepare_output_dir

    outdir = prepare_output_dir(vars(args), args.outdir, [sys.argv[0]] + argv)
    print(f"Output files are saved in {outdir}", file=sys.stderr)
    _log_to_file(outdir, args.logging_level)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)  # saved and resumable, as Ctrl-C
    return outdir


def train(agent: Any, train_env: OldGymAPI, eval_env: OldGymAPI, args: TrainOptions, outdir: str, start: Start) -> Any:
    """ChainerRL's training loop with evaluations, checkpoints and the progress line; its evaluator."""
    from atari_trtis_demo.train.training import train_with_evaluation

    return train_with_evaluation(
        agent,
        train_env,
        eval_env,
        steps=args.steps,
        outdir=outdir,
        eval_n_steps=args.eval_n_steps,
        eval_n_episodes=None,
        eval_interval=args.eval_interval,
        checkpoint_freq=args.checkpoint_freq,
        step_offset=start.step_offset,
        previous_rows=start.previous_rows,
        long_run_hint=cpu_hint(args.env) if args.gpu < 0 else None,
    )


def cpu_hint(env_id: str) -> str:
    """Said once after a CPU run's first ETA beyond a day (the reproduction's 5x10^7 steps take weeks)."""
    return (
        "That ETA is the CPU's: with an NVIDIA GPU, install CuPy and add --gpu 0 (README, stage 1); or play "
        f"ChainerRL's trained agent now: python onnx_converter_src/converter.py --pretrained {env_id}"
    )


def final_evaluation(
    agent: Any,
    eval_env: OldGymAPI,
    args: TrainOptions,
    outdir: str,
    best: tuple[int | None, float | None] = (None, None),
) -> None:
    """Score the best agent (or the final one, if no evaluation ran) into ``bestscores.json``.

    ``best``: the step and mean score of the evaluation that saved ``best/``. The summary
    names it and, when the new episodes score otherwise, says why: they are other games.
    """
    from chainerrl.experiments.evaluator import eval_performance

    from atari_trtis_demo.train.agent import load_agent

    best_dir = os.path.join(outdir, "best")
    if not os.path.isdir(best_dir):
        best_dir = os.path.join(outdir, f"{args.steps}_finish")
        print(
            f"No evaluation ran (--eval-interval {args.eval_interval:,} > steps); "
            f"scoring the final agent in {best_dir}",
            file=sys.stderr,
        )
    load_agent(agent, best_dir, env_n_actions=eval_env.action_space.n)
    # 30 evaluation episodes, each capped at 4,500 agent steps (5 minutes of play).
    stats = eval_performance(
        env=eval_env,
        agent=agent,
        n_steps=None,
        n_episodes=args.n_best_episodes,
        max_episode_len=EVALUATION_EPISODE_CAP,
        logger=None,
    )
    with open(os.path.join(outdir, "bestscores.json"), "w") as f:
        json.dump(stats, f)
    best_step, best_score = best
    episodes = f"{args.n_best_episodes} new episode{'s' if args.n_best_episodes != 1 else ''}"
    if best_step is None or best_score is None:
        print(f"The results of the best scoring network ({best_dir}, on {episodes}):")
    else:
        print(
            f"The results of the best scoring network (best/: the agent of the evaluation at step {best_step:,}, "
            f"mean score {best_score:.2f} there), scored again on {episodes}:"
        )
    for key, value in stats.items():
        print(f"{key}:{value}")
    if best_score is not None and f"{stats['mean']:.2f}" != f"{best_score:.2f}":
        # A barely trained agent's score varies from game to game; the two figures are two samples.
        print(
            f"(not the {best_score:.2f} of its evaluation at step {best_step:,}: these are other games, with other "
            f"no-op starts and {EVAL_EPSILON:.0%} random actions; --n-best-episodes (default 30) sets how many "
            "are averaged here)"
        )


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _log_to_file(outdir: str, level: int) -> None:
    """ChainerRL logs every episode at INFO: to log.txt, so the console keeps the progress line."""
    handler = logging.FileHandler(os.path.join(outdir, "log.txt"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)
    root.addHandler(console)
