"""``train_src/train_dqn.py``: ChainerRL's DQN reproduction script, on ale-py.

Flags and defaults are those of ChainerRL's
``examples/atari/reproduction/dqn/train_dqn.py``; the flags after ``--n-best-episodes``
are this project's additions (see docs/deviations.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence

from atari_trtis_demo.cli_args import ArgumentParser, int_in
from atari_trtis_demo.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="Train a DQN (Nature network) on an Atari game with ChainerRL.")
    p.add_argument("--env", type=str, default="BreakoutNoFrameskip-v4", help="Atari env id (or ALE/<Game>-v5)")
    p.add_argument("--outdir", type=str, default="results", help="parent of the timestamped run directory")
    p.add_argument("--seed", type=int_in(0, 2**31 - 1), default=0, help="random seed [0, 2 ** 31)")
    p.add_argument("--gpu", type=int_in(-1), default=0, help="GPU to use, -1 for the CPU")
    p.add_argument("--demo", action="store_true", default=False, help="only evaluate the (loaded) agent")
    p.add_argument("--load-pretrained", action="store_true", default=False, help="start from ChainerRL's model zoo")
    p.add_argument("--pretrained-type", type=str, default="best", choices=["best", "final"])
    p.add_argument("--load", type=str, default=None, help="agent directory to start from")
    p.add_argument("--logging-level", type=int_in(0, 50), default=20, help="level of log.txt: 10 DEBUG, 20 INFO, ...")
    p.add_argument("--steps", type=int_in(1), default=5 * 10**7, help="total agent steps (4 frames each)")
    # ChainerRL asserts that the replay start size covers one minibatch (32).
    p.add_argument(
        "--replay-start-size", type=int_in(32), default=5 * 10**4, help="transitions before updates start (>= 32)"
    )
    p.add_argument("--eval-n-steps", type=int_in(1), default=125000)
    p.add_argument("--eval-interval", type=int_in(1), default=250000)
    p.add_argument("--n-best-episodes", type=int_in(1), default=30)
    # This project's additions.
    p.add_argument(
        "--checkpoint-freq", type=int_in(0), default=250000, help="save a resumable checkpoint every N steps (0: none)"
    )
    p.add_argument("--resume", type=str, default=None, help="checkpoint (or run directory) to continue from")
    p.add_argument("--final-exploration-steps", type=int_in(1), default=10**6, help="steps over which epsilon decays")
    p.add_argument("--replay-capacity", type=int_in(1), default=10**6, help="replay buffer size in transitions")
    return p


def check_args(args: argparse.Namespace) -> None:
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


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    check_args(args)

    from atari_trtis_demo.agent import check_gpu

    check_gpu(args.gpu)
    from atari_trtis_demo.envs import OldGymAPI, make_env

    # Validate the env id before anything is written to disk.
    train_env = OldGymAPI(make_env(args.env, train=True), seed=args.seed)

    # Chainer and ChainerRL are slow to import: only after the cheap checks.
    from chainerrl import misc
    from chainerrl.experiments.evaluator import eval_performance

    from atari_trtis_demo.agent import download_pretrained, load_agent, make_agent, remove_unfinished_saves
    from atari_trtis_demo.training import (
        list_checkpoints,
        prepare_output_dir,
        previous_score_rows,
        resolve_resume,
        train_with_evaluation,
    )

    misc.set_random_seed(args.seed, gpus=(args.gpu,))
    # Different seeds for the training and the evaluation env, as ChainerRL does.
    eval_env = OldGymAPI(make_env(args.env, train=False), seed=2**31 - 1 - args.seed)
    n_actions = train_env.action_space.n
    agent = make_agent(
        n_actions,
        gpu=args.gpu,
        replay_start_size=args.replay_start_size,
        replay_capacity=args.replay_capacity,
        final_exploration_steps=args.final_exploration_steps,
    )

    step_offset, previous_rows, start_dir = 0, [], None
    if args.load:
        load_agent(agent, args.load, env_n_actions=n_actions)
        start_dir = args.load
    elif args.load_pretrained:
        load_agent(agent, download_pretrained(args.env, args.pretrained_type), env_n_actions=n_actions)
    elif args.resume:
        resume_dir, step_offset = resolve_resume(args.resume)
        if step_offset >= args.steps:
            raise UserError(f"--resume {resume_dir}: already at step {step_offset:,}, not below --steps {args.steps:,}")
        load_agent(agent, resume_dir, env_n_actions=n_actions)
        previous_rows = previous_score_rows(resume_dir, step_offset)
        print(f"Resuming from {resume_dir} at step {step_offset:,} (the replay buffer starts empty)", file=sys.stderr)
        start_dir = resume_dir
    if not args.demo:
        # A run killed during a save (kill -9, out of memory) left its temporary copy,
        # 6-20 MB, beside its agent directories: in the run this one starts from, or
        # in any earlier run under --outdir.
        run_dirs = {os.path.dirname(os.path.normpath(start_dir)) or "."} if start_dir else set()
        if os.path.isdir(args.outdir):
            run_dirs |= {e.path for e in os.scandir(args.outdir) if e.is_dir(follow_symlinks=False)}
        for run_dir in sorted(run_dirs):
            removed, freed = remove_unfinished_saves(run_dir)
            if removed:
                saves = "save" if len(removed) == 1 else "saves"
                print(
                    f"removed {len(removed)} unfinished {saves} ({freed / 1e6:.0f} MB) "
                    f"left by a killed run in {run_dir}",
                    file=sys.stderr,
                )

    if args.demo:
        stats = eval_performance(env=eval_env, agent=agent, n_steps=args.eval_n_steps, n_episodes=None)
        print(f"n_episodes: {stats['episodes']} mean: {stats['mean']} median: {stats['median']} stdev {stats['stdev']}")
        return 0

    outdir = prepare_output_dir(vars(args), args.outdir, [sys.argv[0]] + argv)
    print(f"Output files are saved in {outdir}", file=sys.stderr)
    _log_to_file(outdir, args.logging_level)
    # SIGTERM (a scheduler or `kill`) ends training like Ctrl-C: saved, resumable.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        train_with_evaluation(
            agent,
            train_env,
            eval_env,
            steps=args.steps,
            outdir=outdir,
            eval_n_steps=args.eval_n_steps,
            eval_n_episodes=None,
            eval_interval=args.eval_interval,
            checkpoint_freq=args.checkpoint_freq,
            step_offset=step_offset,
            previous_rows=previous_rows,
        )
    except KeyboardInterrupt:
        saved = [p for p in list_checkpoints(outdir) if p.endswith("_except")]
        where = f"the agent is saved in {saved[-1]}; continue with --resume {saved[-1]}" if saved else "nothing saved"
        print(f"\nInterrupted at step {agent.t:,}: {where}", file=sys.stderr)
        return 130

    best_dir = os.path.join(outdir, "best")
    if not os.path.isdir(best_dir):
        best_dir = os.path.join(outdir, f"{args.steps}_finish")
        print(
            f"No evaluation ran (--eval-interval {args.eval_interval:,} > steps); "
            f"scoring the final agent in {best_dir}",
            file=sys.stderr,
        )
    load_agent(agent, best_dir, env_n_actions=n_actions)
    # 30 evaluation episodes, each capped at 4,500 agent steps (5 minutes of play).
    stats = eval_performance(
        env=eval_env, agent=agent, n_steps=None, n_episodes=args.n_best_episodes, max_episode_len=4500, logger=None
    )
    with open(os.path.join(outdir, "bestscores.json"), "w") as f:
        json.dump(stats, f)
    print("The results of the best scoring network:")
    for key, value in stats.items():
        print(f"{key}:{value}")
    return 0


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
