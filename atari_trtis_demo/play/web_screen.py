"""The play loop's screen for ``--web``: the game (or the grid of ``--games N``) as a page in the browser.

The same interface as the window (:class:`~atari_trtis_demo.play.screen.Screen` for one
game, :class:`~atari_trtis_demo.play.grid_screen.GridScreen` for many): ``show`` hands the
newest picture to the web server (:mod:`web_server`, its own thread) and returns at once;
the viewers' keys come back as the window's do: P or Space pause and resume, Esc or Q end
play, any key leaves the game-over screen. No pygame, no display. A cell may be an
(H, W, 3) RGB screen or an (H, W) grayscale frame; the page says which.
"""

from __future__ import annotations

import queue
import socket
import time
from collections.abc import Sequence

import cv2
import numpy as np

from atari_trtis_demo.play.controls import PAUSE, QUIT, Controls
from atari_trtis_demo.play.play_config import REAL_TIME_FPS
from atari_trtis_demo.play.screen import RECORD_EVERY, View, write_recording
from atari_trtis_demo.play.web_address import WebAddress, parse_web_address
from atari_trtis_demo.play.web_frames import Picture, grid_columns, mosaic
from atari_trtis_demo.play.web_server import OTHER_KEY, WebServer

# Overlay lines of the grid that are warnings (shown in red on the page, as the window's warning is).
PAUSED = ("PAUSED", "P or Space: resume   Esc or Q: quit")
# With nobody watching the play loop draws this seldom (the window's drawing of N games is not free).
IDLE_DRAW_SECONDS = 1.0


class WebScreen(Controls):
    """The page at ``address`` (``--web``); prints the URL to open. See the module's doc."""

    def __init__(
        self, title: str, address: str | WebAddress, *, record: str | None = None, screenshot: str | None = None
    ) -> None:
        if isinstance(address, str):
            address = parse_web_address(address)
        self.record, self.screenshot = record, screenshot
        self.frames: list[np.ndarray] = []  # --record: the pictures' cells laid out as sent, RGB
        self.server = WebServer(address, title)
        url = self.server.start()
        print(f"watch the game at {url}   (P or Space: pause, Esc or Q: end play)", flush=True)
        if address.every_address:
            print(f"  from other machines: {address.url(self.server.port, socket.gethostname())}", flush=True)
        self.drawn_at = -IDLE_DRAW_SECONDS
        self.paused_seconds = 0.0  # time spent paused, which play does not count as playing
        self.number = 0
        self.last = Picture(0, (np.zeros((210, 160, 3), np.uint8),), overlay=("starting",))
        self.banner: list[str] = []  # the last game-over banner's lines, as shown

    @property
    def draws(self) -> bool:
        """Whether the play loop should draw now: always while someone watches (or for --record, --screenshot),
        else once a second, so that a viewer who comes during a pause sees the game as it is."""
        if self.server.viewer_count or self.record or self.screenshot:
            return True
        return time.monotonic() - self.drawn_at >= IDLE_DRAW_SECONDS

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def keys_can_come(self) -> bool:
        """Someone is watching: a key can come from the page."""
        return self.server.viewer_count > 0

    def publish(self, cells: Sequence[np.ndarray], labels: Sequence[str], overlay: Sequence[str], warning: str | None,
                banner: Sequence[str] = (), step: int | None = None) -> None:  # fmt: skip
        self.number += 1
        if self.server.viewer_count:  # a viewer may read them while the game writes the next: copies
            cells = [np.array(c, copy=True) for c in cells]
        self.last = Picture(self.number, tuple(cells), tuple(labels), tuple(overlay), warning, tuple(banner))
        self.server.publish(self.last)
        if self.record and step is not None and step % RECORD_EVERY == 0:
            self.frames.append(rgb_layout(self.last.cells))

    def again(self, banner: Sequence[str]) -> None:
        """The last picture again, with ``banner`` over it (or none)."""
        last = self.last
        self.publish(last.cells, last.labels, last.overlay, last.warning, banner)

    def show(self, view: View, step: int) -> None:
        """Publish ``view``: one game's screen, or every game's cell with its label."""
        self.drawn_at = time.monotonic()
        labels = view.labels if len(view.screens) > 1 else []
        self.publish(view.screens, labels, view.overlay, view.warning, step=step)

    # -- keys --------------------------------------------------------------------------

    def commands(self, timeout: float = 0.0) -> list[str]:
        """The viewers' keys since the last call (QUIT, PAUSE, OTHER_KEY), waiting up to ``timeout`` s for one."""
        asked = []
        try:
            commands = self.server.commands
            asked.append(commands.get(timeout=timeout) if timeout > 0 else commands.get_nowait())
            while True:
                asked.append(commands.get_nowait())
        except queue.Empty:
            return asked

    def wait_while_paused(self) -> bool:
        """Show PAUSED until P or Space again; False when a viewer quit meanwhile."""
        self.again(PAUSED)
        while True:
            for command in self.commands(timeout=0.5):
                if command == QUIT:
                    return False
                if command == PAUSE:
                    self.again(())
                    return True

    def game_over(self, headline: str, lines: list[str], seconds: float) -> None:
        """The summary over the last picture; stays ``seconds`` or until a key, where someone watches."""
        waits = seconds > 0 and self.keys_can_come
        hint = f"press a key (the page closes by itself in {seconds:g} s)" if waits else "the end"
        self.banner = [headline, *lines, hint]
        self.commands()  # keys pressed during play do not leave the summary
        self.again(self.banner)
        deadline = time.monotonic() + seconds
        while waits and (left := deadline - time.monotonic()) > 0:
            if any(c in (QUIT, PAUSE, OTHER_KEY) for c in self.commands(timeout=min(left, 0.5))):
                return

    def finish(self) -> None:
        """Let each viewer get the last picture (up to a second), then close the page; write --screenshot, --record."""
        self.server.stop(linger=1.0)
        if self.screenshot and self.number:  # the game as it ended, without the page's text
            cv2.imwrite(self.screenshot, cv2.cvtColor(rgb_layout(self.last.cells), cv2.COLOR_RGB2BGR))
        if self.record and self.frames:
            write_recording(self.record, self.frames, fps=REAL_TIME_FPS / RECORD_EVERY)


def rgb_layout(cells: tuple[np.ndarray, ...]) -> np.ndarray:
    """The cells laid out as the page gets them, as one (H, W, 3) RGB image (for --screenshot and --record)."""
    image = mosaic(cells, grid_columns(len(cells), (cells[0].shape[1], cells[0].shape[0])))
    return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB if image.ndim == 2 else cv2.COLOR_BGR2RGB)
