"""ChainerRL's published DQNs, fetched with ChainerRL's own downloader.

For training's ``--load-pretrained`` and the converter's ``--pretrained``.

Cheap to import: ChainerRL is imported only when a model is fetched.
"""

from __future__ import annotations

import os
import shutil
import zipfile

from atari_trtis_demo.core.errors import UserError

# Where ChainerRL's model zoo lives; ATARI_DEMO_MODEL_ZOO_URL overrides it (a mirror,
# or a file:// directory of archives in the tests).
MODEL_ZOO_URL_VARIABLE = "ATARI_DEMO_MODEL_ZOO_URL"
# How long the zoo may take to answer before --pretrained gives up (a firewall that drops packets).
PROBE_TIMEOUT_SECONDS = 30.0


def download_pretrained(env_id: str, model_type: str, *, flag: str = "--load-pretrained") -> str:
    """Fetch ChainerRL's pretrained DQN for ``env_id`` with its own downloader; the agent dir.

    ChainerRL names archives by game (``DQN/Breakout/best.zip``); ``ALE/Breakout-v5``
    maps to the same game as ``BreakoutNoFrameskip-v4``.
    """
    import urllib.error

    from chainerrl.misc import pretrained_models

    if os.environ.get(MODEL_ZOO_URL_VARIABLE):
        pretrained_models.download_url = os.environ[MODEL_ZOO_URL_VARIABLE]
    game = env_id.removeprefix("ALE/").split("-")[0].removesuffix("NoFrameskip")
    where = f"{pretrained_models.download_url.rstrip('/')}/DQN/{game}/{model_type}.zip"
    # Offline, or behind a firewall, the only way on is a mirror: say which variable points at one.
    mirror = (
        f"set {MODEL_ZOO_URL_VARIABLE} to a mirror (an http:// or file:// folder with DQN/{game}/{model_type}.zip)"
        if not os.environ.get(MODEL_ZOO_URL_VARIABLE)
        else f"check the mirror in {MODEL_ZOO_URL_VARIABLE}"
    )
    if not os.path.exists(_cached_archive(game, model_type)):
        # ChainerRL's downloader prints "Downloading ..." and makes its cache folders (~/.chainer)
        # before it tries the network: offline, that left a cache folder and a misleading line.
        _check_reachable(where, f"{flag}: cannot download {where}", mirror)
    try:
        path, _ = pretrained_models.download_model("DQN", f"{game}NoFrameskip-v4", model_type=model_type)
    except urllib.error.URLError as e:
        raise UserError(f"{flag}: cannot download {where} ({getattr(e, 'reason', e)}); {mirror}") from e
    except zipfile.BadZipFile as e:
        shutil.rmtree(_zoo_dir(game), ignore_errors=True)  # never keep a bad archive cached
        raise UserError(f"{flag}: {where} is not a valid zip archive; {mirror}") from e
    return path


def _cached_archive(game: str, model_type: str) -> str:
    """Where ChainerRL keeps a downloaded archive (its cache, ``$CHAINER_DATASET_ROOT`` or ~/.chainer/dataset);
    the path only: nothing is created."""
    from chainer.dataset.download import get_dataset_root

    return os.path.join(get_dataset_root(), "pfnet", "chainerrl", "models", "DQN", game, f"{model_type}.zip")


def _check_reachable(url: str, failure: str, mirror: str) -> None:
    """Open ``url`` (and close it unread): a :class:`UserError` ``failure (reason); mirror`` when it cannot be."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_SECONDS):
            pass
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise UserError(f"{failure} ({getattr(e, 'reason', e)}); {mirror}") from e


def _zoo_dir(game: str) -> str:
    from chainer.dataset.download import get_dataset_directory

    return get_dataset_directory(os.path.join("pfnet", "chainerrl", "models", "DQN", game))


def pretrained_root(env_id: str) -> str:
    """Where ``converter.py --pretrained`` keeps its agent (``<type>/``) and repository (``trtismodel/``)."""
    return os.path.join("results", "pretrained", env_id)


def save_pretrained(env_id: str, model_type: str, agent_dir: str) -> int:
    """Download ChainerRL's published DQN for ``env_id`` and save it as this project's agent directory.

    The directory is written as training writes one (atomically, with ``agent_state.json``
    recording the game), so the converter and the players know its game. Returns the
    action count. Imports Chainer.
    """
    from atari_trtis_demo.core.envs import make_env
    from atari_trtis_demo.train.agent import load_agent, make_agent

    env = make_env(env_id, train=False)  # an unknown id fails before the download
    n_actions = int(env.action_space.n)
    env.close()
    downloaded = download_pretrained(env_id, model_type, flag="--pretrained")
    agent = make_agent(n_actions, env_id=env_id)
    load_agent(agent, downloaded, env_n_actions=n_actions)
    agent.save(agent_dir)
    return n_actions
