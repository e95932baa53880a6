"""``--load-pretrained``: ChainerRL's pretrained DQNs, fetched with ChainerRL's own downloader.

Cheap to import: ChainerRL is imported only when a model is fetched.
"""

from __future__ import annotations

import os
import shutil
import zipfile

from atari_trtis_demo.errors import UserError

# Where ChainerRL's model zoo lives; ATARI_DEMO_MODEL_ZOO_URL overrides it (a mirror,
# or a file:// directory of archives in the tests).
MODEL_ZOO_URL_VARIABLE = "ATARI_DEMO_MODEL_ZOO_URL"


def download_pretrained(env_id: str, model_type: str) -> str:
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
    try:
        path, _ = pretrained_models.download_model("DQN", f"{game}NoFrameskip-v4", model_type=model_type)
    except urllib.error.URLError as e:
        raise UserError(f"--load-pretrained: cannot download {where} ({getattr(e, 'reason', e)})") from e
    except zipfile.BadZipFile as e:
        shutil.rmtree(_zoo_dir(game), ignore_errors=True)  # never keep a bad archive cached
        raise UserError(f"--load-pretrained: {where} is not a valid zip archive") from e
    return path


def _zoo_dir(game: str) -> str:
    from chainer.dataset.download import get_dataset_directory

    return get_dataset_directory(os.path.join("pfnet", "chainerrl", "models", "DQN", game))
