"""Where the page of ``--web [HOST:]PORT`` listens, and who may watch it.

127.0.0.1 unless a host is given. A page reachable from other machines needs the
players' key, ``ATARI_DEMO_KEY`` (the page asks for it once, or takes it from the URL
the player prints): without it the player refuses to start, as ``serve`` does. With the
key set the page asks for it on loopback too. Standard library only: the flags are
checked before aiohttp is imported.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass

from atari_trtis_demo.core.addresses import is_loopback
from atari_trtis_demo.core.errors import UserError
from atari_trtis_demo.core.keys import PLAYER_KEY_ENV, check_key

DEFAULT_HOST = "127.0.0.1"
# --episodes when --web plays on until stopped: a year of 5-minute episodes, and game i's seeds
# (seed + i * episodes) stay far from any integer limit for --games 1024.
PLAY_ON_EPISODES = 100_000


@dataclass(frozen=True)
class WebAddress:
    """The page's host and port (0: a free one), and the key a viewer must give (None: none asked)."""

    host: str
    port: int
    key: str | None = None

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def every_address(self) -> bool:
        """0.0.0.0 or ::, which other machines reach by this machine's name."""
        return self.host in ("0.0.0.0", "::")

    def url(self, port: int | None = None, host: str | None = None) -> str:
        """The URL to open, with the key in it when one is asked (``port``: the one actually bound; ``host``:
        another name for this machine). On every address it names this machine's loopback, which works here."""
        host = host or ({"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host))
        host = f"[{host}]" if ":" in host else host
        query = "?" + urllib.parse.urlencode({"key": self.key}) if self.key else ""
        return f"http://{host}:{self.port if port is None else port}/{query}"


def parse_web_address(text: str, environ: dict[str, str] | None = None) -> WebAddress:
    """``--web`` as given (``PORT``, ``HOST:PORT`` or ``[IPv6]:PORT``) with the key it needs, or one line.

    A host other than loopback without ``ATARI_DEMO_KEY`` is refused: anyone on the network
    could otherwise watch, pause and end the game.
    """
    env = os.environ if environ is None else environ
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host = DEFAULT_HOST
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise UserError(f"--web {text}: write an IPv6 address in brackets, as [::1]:8080")
    if not host:
        raise UserError(f"--web {text}: give a port, or HOST:PORT (for example 127.0.0.1:8080)")
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise UserError(f"--web {text}: the port must be a number from 0 to 65535 (0: any free port)")
    key = env.get(PLAYER_KEY_ENV)
    if key is not None:
        check_key(PLAYER_KEY_ENV, key)  # serve's and the player's one check
    if key is None and not is_loopback(host):
        raise UserError(
            f"--web {text}: a page other machines can reach needs {PLAYER_KEY_ENV} (viewers give it once); "
            f"set it, or watch on 127.0.0.1"
        )
    return WebAddress(host, port, key)
