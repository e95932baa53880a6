"""The pygame window (or, headless, an off-screen surface), its overlay, and recordings of it.

pygame is imported only when something is drawn.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from atari_trtis_demo.core.errors import UserError
from atari_trtis_demo.play.controls import PAUSE, QUIT, Controls
from atari_trtis_demo.play.play_config import DEFAULT_SCALE

ATARI_SIZE = (160, 210)  # width, height of the ALE screen
RECORD_EVERY = 2  # agent steps per recorded GIF frame: keeps files small


@dataclass
class View:
    """One moment of play as a window shows it: every game's RGB screen and label, the overlay, a warning."""

    screens: list[np.ndarray]  # (210, 160, 3) uint8 each
    labels: list[str]
    overlay: list[str]
    warning: str | None = None


class Screen(Controls):
    """The pygame window (or, headless, an off-screen surface) with the overlay.

    Headless play draws only when a recording or screenshot needs the pixels. In the
    window, Esc or Q ends play, P or Space pauses and resumes, and closing it ends play.
    """

    def __init__(
        self,
        title: str,
        *,
        scale: float = DEFAULT_SCALE,
        headless: bool = False,
        record: str | None = None,
        screenshot: str | None = None,
    ) -> None:
        self.scale, self.headless = scale, headless
        self.record, self.screenshot = record, screenshot
        self.draws = not headless or bool(record or screenshot)
        self.frames: list[np.ndarray] = []
        self.surface = None
        self.paused_seconds = 0.0  # time spent paused, which play does not count as playing
        self._screenshot_saved = False
        self.banner: list[str] = []  # the last game-over banner's lines, as shown
        if not self.draws:
            return
        if headless:
            os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        import pygame

        self.pygame = pygame
        if not headless:
            pygame.display.init()
        self.make_fonts()
        if headless:
            self.surface = pygame.Surface(self.window_size())
        else:
            self.surface = pygame.display.set_mode(self.window_size())
            pygame.display.set_caption(title)

    def window_size(self) -> tuple[int, int]:
        """Width and height of the window: one ALE screen scaled."""
        return round(ATARI_SIZE[0] * self.scale), round(ATARI_SIZE[1] * self.scale)

    def make_fonts(self) -> None:
        from atari_trtis_demo.play.overlay_font import OverlayFont  # words whole: see its module

        self.font = OverlayFont(max(16, round(8 * self.scale)))
        self.big_font = OverlayFont(max(32, round(20 * self.scale)))

    @property
    def interactive(self) -> bool:
        """A window a person can see and drive (not headless)."""
        return self.draws and not self.headless

    def commands(self) -> list[str]:
        """What the player asked for since the last call: QUIT (window closed, Esc, Q) or PAUSE (P, Space)."""
        if not self.interactive:
            return []
        pg, asked = self.pygame, []
        for event in pg.event.get():
            if event.type == pg.QUIT or (event.type == pg.KEYDOWN and event.key in (pg.K_ESCAPE, pg.K_q)):
                asked.append(QUIT)
            elif event.type == pg.KEYDOWN and event.key in (pg.K_p, pg.K_SPACE):
                asked.append(PAUSE)
        return asked

    def wait_while_paused(self) -> bool:
        """Show PAUSED until P or Space again; False when the player quit meanwhile."""
        self._banner(["PAUSED", "P or Space: resume   Esc or Q: quit"])
        while True:
            for command in self.commands():
                if command == QUIT:
                    return False
                if command == PAUSE:
                    return True
            self.pygame.time.wait(20)

    @property
    def keys_can_come(self) -> bool:
        """A window on a real display: SDL's dummy and offscreen drivers show nothing and get no key."""
        return self.interactive and self.pygame.display.get_driver() not in ("dummy", "offscreen")

    def game_over(self, headline: str, lines: list[str], seconds: float) -> None:
        """A banner (``headline``, then ``lines``) that stays ``seconds``, or until a key or the window's close.

        The caller prints the statistics first: nothing waits for this screen.
        """
        if not self.interactive:
            return
        self.save_screenshot()  # the game as it ended, not the banner
        hint = f"press a key or close the window (closes by itself in {seconds:g} s)" if seconds > 0 else "the end"
        self.banner = [headline, *lines, hint]
        self.pygame.event.clear()
        self._banner(self.banner)
        pg, deadline = self.pygame, time.monotonic() + seconds
        while time.monotonic() < deadline and not any(e.type in (pg.QUIT, pg.KEYDOWN) for e in pg.event.get()):
            pg.time.wait(20)

    def save_screenshot(self) -> None:
        """Write ``--screenshot`` once: the last game image."""
        if self.screenshot and not self._screenshot_saved:
            self.pygame.image.save(self.surface, self.screenshot)
            self._screenshot_saved = True

    def _banner(self, lines: list[str]) -> None:
        """Big centred text over the darkened last frame, shown at once."""
        pg = self.pygame
        shade = pg.Surface(self.surface.get_size(), pg.SRCALPHA)
        shade.fill((0, 0, 0, 160))
        self.surface.blit(shade, (0, 0))
        labels = [self.big_font.render(lines[0], True, (255, 255, 255))]
        labels += [self.font.render(text, True, (255, 255, 255)) for text in lines[1:]]
        y = (self.surface.get_height() - sum(label.get_height() + 4 for label in labels)) // 2
        for label in labels:
            self.surface.blit(label, ((self.surface.get_width() - label.get_width()) // 2, y))
            y += label.get_height() + 4
        pg.display.flip()

    def show(self, view: View, step: int) -> None:
        """Draw ``view`` (its one game), and record it every RECORD_EVERY steps."""
        self.draw(view.screens[0], view.overlay, view.warning, step)

    def draw(self, rgb: np.ndarray, overlay: list[str], warning: str | None, step: int) -> None:
        if not self.draws:
            return
        pg = self.pygame
        game = pg.surfarray.make_surface(rgb.swapaxes(0, 1))
        pg.transform.scale(game, self.surface.get_size(), self.surface)
        # The overlay sits at the bottom, below the paddle, where the game draws nothing.
        labels = [
            self.font.render(text, True, (255, 80, 80) if text == warning else (255, 255, 255), (0, 0, 0))
            for text in overlay + ([warning] if warning else [])
        ]
        y = self.surface.get_height() - sum(label.get_height() for label in labels) - 2
        for label in labels:
            self.surface.blit(label, (4, y))
            y += label.get_height()
        if self.record and step % RECORD_EVERY == 0:
            self.frames.append(pg.surfarray.array3d(self.surface).swapaxes(0, 1))
        if not self.headless:
            pg.display.flip()

    def finish(self) -> None:
        if not self.draws:
            return
        self.save_screenshot()
        if self.record and self.frames:
            # Real time: 60 emulator frames/s are 15 agent steps/s.
            write_recording(self.record, self.frames, fps=15 / RECORD_EVERY)
        self.pygame.quit()


MACRO_BLOCK = 16  # H.264 codes 16x16 blocks: ffmpeg (through imageio) stretches other sizes to fit


def pad_to_macro_block(frame: np.ndarray) -> np.ndarray:
    """``frame`` (H, W, 3) with black rows and columns added below and to the right, up to multiples of 16.

    imageio-ffmpeg would otherwise resize 480x630 to 480x640, stretching every pixel of the window.
    """
    height, width = frame.shape[:2]
    pad_h, pad_w = -height % MACRO_BLOCK, -width % MACRO_BLOCK
    if not pad_h and not pad_w:
        return frame
    return np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)))


def write_recording(path: str, frames: list[np.ndarray], fps: float) -> None:
    import imageio.v2 as imageio

    if path.lower().endswith(".gif"):
        imageio.mimsave(path, frames, duration=1000 / fps, loop=0)
    else:
        # Padded ourselves, so ffmpeg keeps the window's pixels as they are (and says nothing about resizing).
        imageio.mimsave(path, [pad_to_macro_block(f) for f in frames], fps=fps, macro_block_size=MACRO_BLOCK)


def check_record_path(path: str | None) -> None:
    """``--record`` takes .gif (imageio), or .mp4 when imageio-ffmpeg is installed."""
    if not path:
        return
    if path.lower().endswith(".mp4"):
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError as e:
            raise UserError(
                f"--record {path}: .mp4 needs imageio-ffmpeg (pip install imageio-ffmpeg); or use .gif"
            ) from e
    elif not path.lower().endswith(".gif"):
        raise UserError(f"--record {path}: use a .gif or .mp4 file name")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UserError(f"--record {path}: directory {parent} does not exist")
