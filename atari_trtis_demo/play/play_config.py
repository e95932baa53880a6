"""What a play session is asked to do: :class:`PlayConfig`, the flags both players share, and their defaults.

Imports neither cv2, gymnasium, the ALE nor pygame: a command's flags parse, and its
help prints, before any of those loads.
"""

from __future__ import annotations

from dataclasses import dataclass

from atari_trtis_demo.core.cli_args import float_in, int_in, output_file
from atari_trtis_demo.core.contract import DEFAULT_ENV_ID, EVAL_EPSILON, EVALUATION_EPISODE_CAP
from atari_trtis_demo.core.typed_flags import flag

# The Atari's own pace: 60 frames/s, and one agent step is 4 frames (action repeat).
REAL_TIME_FPS = 15.0
# How long a player rides out a server that is away, by default (--reconnect).
RECONNECT_SECONDS = 30.0
# The remote player's per-request deadline, by default (--timeout).
REQUEST_TIMEOUT_SECONDS = 5.0
# How long the game-over screen stays where a key can come, by default (--game-over-seconds).
GAME_OVER_SECONDS = 10.0

# The window's size as a multiple of the ALE's 160x210 screen (--rendering_scale).
DEFAULT_SCALE = 3.0


@dataclass
class PlayConfig:
    """What both players are asked to do; each field with a flag is that flag's one definition (play_cli)."""

    # --env unset parses as None: the command sets the model's own game, else DEFAULT_ENV_ID.
    env_id: str | None = flag(
        DEFAULT_ENV_ID,
        "--env",
        unset=None,
        help=f"the game (default: the model's own, else {DEFAULT_ENV_ID} if it records none)",
    )
    # Parsed as None when not given: play_cli resolves it (1; with --web and no --max-steps, play on).
    episodes: int = flag(
        1,
        type=int_in(1),
        unset=None,
        help="whole games to play (all lives); with --web and no --max-steps, until stopped (default: 1)",
    )
    # None: the evaluation cap, EVALUATION_EPISODE_CAP (episode_cap)
    max_steps: int | None = flag(
        None,
        type=int_in(1),
        help=f"cap on agent steps per episode (default: {EVALUATION_EPISODE_CAP}, the cap of the reproduction's "
        "evaluation: 5 minutes of play)",
    )
    # The remote player's --sync; the standalone player declares its own (--sync/--async, on by default).
    sync: bool = flag(False, action="store_true", help="wait for each action (default: asynchronous inference)")
    headless: bool = flag(False, action="store_true", help="no window (servers, tests, benchmarks)")
    fps: float = flag(
        REAL_TIME_FPS,
        type=float_in(0, 10000),
        help="agent steps per second, window and headless alike (default: 15, the Atari's own pace, 60 frames/s "
        "with 4 frames a step; 0: as fast as possible, and async play then applies actions as many steps old "
        "as fit into one round trip)",
    )
    rendering_scale: float = flag(
        DEFAULT_SCALE,
        "--rendering_scale",
        type=float_in(0.5, 16),
        metavar="SCALE",
        help="size of the game in the window: each Atari pixel drawn SCALE x SCALE (160x210 at 1, 480x630 at 3; "
        "0.5 to 16, fractions allowed)",
    )
    seed: int = flag(0, type=int_in(0, 2**31 - 1), help="seeds the emulator, the no-op starts and the random actions")
    epsilon: float = flag(EVAL_EPSILON, type=float_in(0, 1), help="fraction of random actions, as the original")
    record: str | None = flag(None, type=output_file, help="write the gameplay to FILE.gif (or .mp4)")
    screenshot: str | None = flag(None, type=output_file, help="save the last window image to FILE.png")
    # FIRE at the start and after each lost life (envs.FireOnLifeLoss)
    fire_on_life_loss: bool = flag(
        False,
        action="store_true",
        help="press FIRE at the start and after each lost life, so that a barely trained agent's Breakout serves "
        "(an action override, not preprocessing; see docs/deviations.md)",
    )
    # 0: the first failed request ends play. A remote-only flag, like --timeout.
    reconnect: float = flag(
        RECONNECT_SECONDS,
        type=float_in(0, 86400),
        help="while the server is away, play on (sync waits, async plays its last action) for up to SECONDS, then "
        "end with exit code 1 (default: 30; 0: end at the first failed request)",
        metavar="SECONDS",
    )
    # A remote policy's per-request deadline: an answer older is lost. None: no deadline (tests, the local player).
    request_timeout: float | None = flag(
        None,
        "--timeout",
        unset=REQUEST_TIMEOUT_SECONDS,
        type=float_in(0, 600, low_open=True),
        metavar="SECONDS",
        help="how long one request may wait for its answer",
    )
    # None: GAME_OVER_SECONDS where a key can come, else 0
    game_over_seconds: float | None = flag(
        None,
        type=float_in(0, 3600),
        metavar="SECONDS",
        help=f"how long the window stays on the game-over screen unless a key is pressed (default: "
        f"{GAME_OVER_SECONDS:g} in a window; 0 where no key can come: --headless, SDL's dummy or offscreen driver)",
    )
    json: str | None = flag(None, type=output_file, help="write the statistics to FILE.json")
    # None: the pygame window (or none, --headless). Checked with its key by web_address.parse_web_address.
    web: str | None = flag(
        None,
        metavar="[HOST:]PORT",
        help="no window: show the game (the grid of --games N) as a page at http://HOST:PORT/ (HOST: 127.0.0.1 "
        "unless given; another needs ATARI_DEMO_KEY; PORT 0: a free one), and play on until stopped unless "
        "--episodes or --max-steps",
    )
    # Not a flag: the index of the first game played in this process (a worker's share: play_workers).
    first_game: int = 0

    @property
    def episode_cap(self) -> int:
        return self.max_steps or EVALUATION_EPISODE_CAP
