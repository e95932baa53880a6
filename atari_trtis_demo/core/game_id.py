"""The game a model plays, as recorded where it travels: the agent directory and the model's config.

Every agent directory this project writes has ``agent_state.json`` with ``"env_id"``;
the converter copies it into ``config.pbtxt`` as the parameter ``env_id``, which the
remote player reads back from the server. Stock ChainerRL directories record none.
The players read it too.
"""

from __future__ import annotations

import json
import os

from atari_trtis_demo.core.contract import AGENT_STATE_FILE, DEFAULT_ENV_ID, ENV_ID_KEY
from atari_trtis_demo.core.errors import UserError


def recorded_env_id(agent_dir: str) -> str | None:
    """The game recorded in ``agent_dir/agent_state.json``, or None (none recorded, or no such file).

    A file that is there but unreadable is an error naming it: it would be wrong to
    guess a game for it.
    """
    path = os.path.join(agent_dir, AGENT_STATE_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: corrupt ({e})") from e
    env_id = state.get(ENV_ID_KEY) if isinstance(state, dict) else None
    return env_id if isinstance(env_id, str) and env_id else None


def resolve_env_id(flag: str | None, recorded: str | None, where: str, *, flag_name: str = "--env") -> str:
    """The game to use: ``--env`` when given, else the model's recorded game, else the default.

    ``where`` says where the model's game was read (an agent directory's
    ``agent_state.json``, a server's model config). ``--env`` contradicting the
    recorded game is a one-line :class:`UserError` naming both.
    """
    if flag and recorded and flag != recorded:
        raise UserError(
            f"{flag_name} {flag} contradicts the model's game {recorded} (recorded in {where}); "
            f"leave {flag_name} out to use {recorded}"
        )
    return flag or recorded or DEFAULT_ENV_ID


def describe_choice(env_id: str, flag: str | None, recorded: str | None, where: str) -> str:
    """One line saying which game is played and why (for the players' and the converter's output)."""
    if recorded:
        return f"game: {env_id} (the model's own, recorded in {where})"
    if flag:
        return f"game: {env_id} (--env; the model records no game)"
    return f"game: {env_id} (the default; the model records no game: pass --env for another)"


def choose_game(flag: str | None, recorded: str | None, where: str) -> str:
    """:func:`resolve_env_id`, and print which game is played and why."""
    env_id = resolve_env_id(flag, recorded, where)
    print(describe_choice(env_id, flag, recorded, where), flush=True)
    return env_id


def remote_game(flag: str | None, server_env_id: str | None, where: str, fallback_dir: str | None = None) -> str:
    """The remote player's game: ``--env``, else the server's model's, else the fallback agent's, else the default.

    ``server_env_id`` is None when the server did not answer or records none; the
    fallback agent (``--fallback-modelpath``) must not play another game than the server's model.
    """
    fallback = recorded_env_id(fallback_dir) if fallback_dir else None
    if server_env_id and fallback and fallback != server_env_id:
        raise UserError(
            f"--fallback-modelpath {fallback_dir} plays {fallback} but the server's model plays {server_env_id}"
        )
    if server_env_id or not fallback:
        return choose_game(flag, server_env_id, where)
    return choose_game(flag, fallback, os.path.join(fallback_dir or "", AGENT_STATE_FILE))


def check_action_count(model: str, n_actions: int, env_id: str, game_actions: int, remedy: str) -> None:
    """A model must have one Q-value per action of its game: one line naming both counts when not.

    ``model`` names it as the user knows it (the player, or the agent's ``model.npz``);
    ``remedy`` is what to do about it.
    """
    if n_actions != game_actions:
        raise UserError(f"{model} has {n_actions} actions but {env_id} has {game_actions}: {remedy}")
