"""The ChainerRL DQN agent of the reproduction script, with atomic saves and clear loads.

Hyperparameters are those of ChainerRL's ``examples/atari/reproduction/dqn`` (the
Nature DQN paper's). The Q-network is ``NatureDQNHead`` + ``Linear(512, n_actions)``;
its weights live in ``model.npz`` under the keys ``0/0..3/{W,b}`` and ``1/{W,b}``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import time
import warnings
import zipfile
from collections.abc import Callable
from typing import Any

# gym 0.22 is only ChainerRL's base-class library here (the envs are gymnasium's);
# its import prints an "unmaintained" notice that would confuse users: swallow it.
with contextlib.redirect_stderr(io.StringIO()):
    import gym  # noqa: F401

import chainer  # noqa: E402
import chainer.links as L  # noqa: E402
import numpy as np  # noqa: E402
from chainer import optimizers  # noqa: E402
from chainerrl import agents, explorers, links, replay_buffer  # noqa: E402
from chainerrl.action_value import DiscreteActionValue  # noqa: E402
from chainerrl.agent import load_npz_no_strict  # noqa: E402

from atari_trtis_demo.core.atomic import UNFINISHED_DIR, DirectorySwap, recover_interrupted_swap
from atari_trtis_demo.core.contract import AGENT_STATE_FILE, ENV_ID_KEY, STACK_SIZE
from atari_trtis_demo.core.envs import scale_observation
from atari_trtis_demo.core.errors import UserError

MODEL_FILE = "model.npz"
# Shapes of a Nature DQN's weights in model.npz; the last layer's rows are n_actions.
NATURE_DQN_SHAPES = {
    "0/0/W": (32, STACK_SIZE, 8, 8),
    "0/0/b": (32,),
    "0/1/W": (64, 32, 4, 4),
    "0/1/b": (64,),
    "0/2/W": (64, 64, 3, 3),
    "0/2/b": (64,),
    "0/3/W": (512, 3136),
    "0/3/b": (512,),
    "1/W": (None, 512),
    "1/b": (None,),
}


def make_q_function(n_actions: int) -> links.Sequence:
    """Nature DQN: three conv layers, a 512-unit layer, one Q-value per action."""
    return links.Sequence(links.NatureDQNHead(), L.Linear(512, n_actions), DiscreteActionValue)


class AtomicSaveDQN(agents.DQN):
    """ChainerRL's DQN whose ``save`` never leaves a half-written agent directory.

    Every save in ChainerRL (``best/``, checkpoints, ``<t>_finish``, ``<t>_except``)
    goes through ``agent.save``, so making this one method atomic protects them all:
    the files are written to a sibling temporary directory, flushed to disk, and
    swapped in with renames (:class:`~atari_trtis_demo.core.atomic.DirectorySwap`). A crash
    or kill at any moment leaves either the old directory or the new one (or, between
    the two renames, the old one under a ``.old-*`` name that :func:`load_agent` recovers).

    ``env_id``, the game the agent plays, is recorded in ``agent_state.json`` beside
    the step and the action count, so the converter and the players know it.
    """

    env_id: str | None = None

    def save(self, dirname: str) -> None:
        state: dict[str, Any] = {"t": int(self.t), "n_actions": int(self.n_actions)}
        if self.env_id:
            state[ENV_ID_KEY] = self.env_id
        with DirectorySwap(dirname) as swap:
            super().save(swap.staging)
            with open(os.path.join(swap.staging, AGENT_STATE_FILE), "w") as f:
                json.dump(state, f)
            swap.commit()

    @property
    def n_actions(self) -> int:
        return int(_last_linear(self.model).W.shape[0])


# A save that wrote nothing for this long is not in progress in another process.
UNFINISHED_SAVE_MIN_AGE = 60.0


def remove_unfinished_saves(parent: str, *, min_age: float = UNFINISHED_SAVE_MIN_AGE) -> tuple[list[str], int]:
    """Delete the ``<name>.tmp-<tag>`` directories killed saves left in ``parent``.

    ``<name>.tmp-<tag>`` is where :meth:`AtomicSaveDQN.save` writes before its renames
    (:data:`atari_trtis_demo.core.atomic.UNFINISHED_DIR`); one left behind is a save killed
    (kill -9, power loss) before it was swapped in.

    Only directories holding nothing but an agent save's files (``model.npz``, ...,
    ``agent_state.json``), none written in the last ``min_age`` seconds (a save still
    running in another process is left alone). ``.old-*`` directories are never
    touched: one may be the only copy of an agent, which :func:`load_agent` recovers.
    Returns the removed paths and the bytes freed.
    """
    save_files = {f"{attr}.npz" for attr in agents.DQN.saved_attributes} | {AGENT_STATE_FILE}
    removed, freed = [], 0
    try:
        names = sorted(os.listdir(parent))
    except OSError:
        return removed, freed
    for name in names:
        path = os.path.join(parent, name)
        if not UNFINISHED_DIR.fullmatch(name) or os.path.islink(path) or not os.path.isdir(path):
            continue
        try:
            files = [os.path.join(path, f) for f in os.listdir(path)]
            if not {os.path.basename(f) for f in files} <= save_files or not all(map(os.path.isfile, files)):
                continue
            stats = [os.stat(f) for f in [path, *files]]
        except OSError:
            continue
        if time.time() - max(st.st_mtime for st in stats) < min_age:
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path):
            removed.append(path)
            freed += sum(st.st_size for st in stats[1:])
    return removed, freed


def _last_linear(model: chainer.Link) -> L.Linear:
    # links() walks depth-first in definition order, so the last Linear is the output.
    return [link for link in model.links() if isinstance(link, L.Linear)][-1]


def make_agent(
    n_actions: int,
    *,
    gpu: int = -1,
    replay_start_size: int = 5 * 10**4,
    replay_capacity: int = 10**6,
    final_exploration_steps: int = 10**6,
    start_epsilon: float = 1.0,
    end_epsilon: float = 0.1,
    target_update_interval: int = 10**4,
    update_interval: int = 4,
    gamma: float = 0.99,
    lr: float = 2.5e-4,
    minibatch_size: int = 32,
    q_function: chainer.Link | None = None,
    phi: Callable[[Any], np.ndarray] = scale_observation,
    env_id: str | None = None,
) -> AtomicSaveDQN:
    """The reproduction script's DQN. ``q_function`` replaces the Nature network (tests).

    ``env_id`` is the game it plays, recorded in every directory it saves.
    """
    q_func = q_function if q_function is not None else make_q_function(n_actions)
    # RMSprop as in the Nature paper (Graves' variant, centered, no momentum).
    opt = optimizers.RMSpropGraves(lr=lr, alpha=0.95, momentum=0.0, eps=1e-2)
    opt.setup(q_func)
    explorer = explorers.LinearDecayEpsilonGreedy(
        start_epsilon=start_epsilon,
        end_epsilon=end_epsilon,
        decay_steps=final_exploration_steps,
        random_action_func=lambda: np.random.randint(n_actions),
    )
    agent = AtomicSaveDQN(
        q_func,
        opt,
        replay_buffer.ReplayBuffer(replay_capacity),
        gpu=gpu if gpu >= 0 else None,
        gamma=gamma,
        explorer=explorer,
        replay_start_size=replay_start_size,
        minibatch_size=minibatch_size,
        target_update_interval=target_update_interval,
        clip_delta=True,  # Huber loss
        update_interval=update_interval,
        batch_accumulator="sum",
        phi=phi,
    )
    agent.env_id = env_id
    return agent


def read_n_actions(model_dir: str) -> int:
    """The action count of the Nature DQN saved in ``model_dir/model.npz``.

    Raises :class:`UserError` naming the file when it is missing, unreadable, or
    not a Nature DQN.
    """
    path = os.path.join(model_dir, MODEL_FILE)
    shapes = read_weight_shapes(path)
    for key, want in NATURE_DQN_SHAPES.items():
        got = shapes.get(key)
        if (
            got is None
            or len(got) != len(want)
            or any(w is not None and w != g for w, g in zip(want, got, strict=True))
        ):
            shown = "missing" if got is None else list(got)
            raise UserError(
                f"{path}: not a Nature DQN: weight '{key}' is {shown}, expected "
                f"{[w if w is not None else 'n_actions' for w in want]}"
            )
    return int(shapes["1/W"][0])


def read_weight_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Array shapes in an ``.npz`` file, with a one-line error for a missing or corrupt file."""
    if not os.path.isfile(path):
        parent = os.path.dirname(path) or "."
        where = "directory does not exist" if not os.path.isdir(parent) else "file not found"
        raise UserError(f"{path}: {where} (expected a ChainerRL agent directory with {MODEL_FILE})")
    try:
        with np.load(path) as data:
            return {k: tuple(data[k].shape) for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"{path}: corrupt or not an .npz file ({e})") from e


def load_agent(agent: agents.DQN, dirname: str, *, env_n_actions: int | None = None) -> None:
    """Load a ChainerRL agent directory into ``agent`` with one-line errors.

    Checks the directory, the file, the network shape and the action count before
    handing over to ChainerRL, so a bad ``--load`` never ends in a deep traceback.
    Only ``model.npz`` is required; ``target_model.npz`` and ``optimizer.npz`` are
    loaded when present (ChainerRL's model zoo and ``best/`` have all three).
    """
    recover_interrupted_swap(dirname)  # a save killed between its two renames
    if not os.path.isdir(dirname):
        raise UserError(f"{dirname}: agent directory does not exist")
    n_actions = read_n_actions(dirname)
    expected = env_n_actions if env_n_actions is not None else _last_linear(agent.model).W.shape[0]
    if n_actions != expected:
        raise UserError(
            f"{os.path.join(dirname, MODEL_FILE)}: the model has {n_actions} actions but the game has {expected}"
        )
    for attr in agent.saved_attributes:
        path = os.path.join(dirname, f"{attr}.npz")
        if attr != "model" and not os.path.exists(path):
            continue
        read_weight_shapes(path)  # a corrupt file is reported by name
        try:
            if attr == "optimizer":
                # An optimizer saved before the first update has no state arrays yet;
                # ChainerRL loads it leniently for that reason (Chainer issue #2772).
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    load_npz_no_strict(path, agent.optimizer)
            else:
                chainer.serializers.load_npz(path, getattr(agent, attr))
        except (KeyError, ValueError) as e:
            raise UserError(f"{path}: does not fit this agent ({e})") from e
    state_path = os.path.join(dirname, AGENT_STATE_FILE)
    if os.path.exists(state_path):
        agent.t = read_agent_step(dirname)


def read_agent_step(dirname: str) -> int:
    """The training step at which ``dirname`` was saved, from its ``agent_state.json``."""
    path = os.path.join(dirname, AGENT_STATE_FILE)
    try:
        with open(path) as f:
            return int(json.load(f)["t"])
    except FileNotFoundError as e:
        raise UserError(f"{path}: not found (only checkpoints written by this project can be resumed)") from e
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: corrupt ({e})") from e


def load_q_function(model_dir: str) -> tuple[chainer.Link, int]:
    """Only the Nature DQN of ``model_dir/model.npz`` (for export and play), and its action count."""
    n_actions = read_n_actions(model_dir)  # one-line errors for missing/corrupt/non-DQN files
    q_function = make_q_function(n_actions)
    path = os.path.join(model_dir, MODEL_FILE)
    try:
        chainer.serializers.load_npz(path, q_function)
    except (KeyError, ValueError) as e:
        raise UserError(f"{path}: does not fit a Nature DQN ({e})") from e
    return q_function, n_actions


def batch_q_values(model: chainer.Link, observations: np.ndarray) -> np.ndarray:
    """Q-values (batch, n_actions) of ``model`` for scaled float32 observations."""
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        return np.asarray(chainer.cuda.to_cpu(model(observations).q_values.array))
