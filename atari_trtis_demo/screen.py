"""The pygame window (or, headless, an off-screen surface), its overlay, and recordings of it.

No Chainer here, and pygame is imported only when something is drawn.
"""

from __future__ import annotations

import os

import numpy as np

from atari_trtis_demo.errors import UserError

ATARI_SIZE = (160, 210)  # width, height of the ALE screen
RECORD_EVERY = 2  # agent steps per recorded GIF frame: keeps files small


class Screen:
    """The pygame window (or, headless, an off-screen surface) with the overlay.

    Headless play draws only when a recording or screenshot needs the pixels.
    """

    def __init__(
        self,
        title: str,
        *,
        scale: int = 3,
        headless: bool = False,
        record: str | None = None,
        screenshot: str | None = None,
    ) -> None:
        self.scale, self.headless = scale, headless
        self.record, self.screenshot = record, screenshot
        self.draws = not headless or bool(record or screenshot)
        self.frames: list[np.ndarray] = []
        self.surface = None
        if not self.draws:
            return
        if headless:
            os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        import pygame

        self.pygame = pygame
        if not headless:
            pygame.display.init()
        pygame.font.init()
        size = (ATARI_SIZE[0] * scale, ATARI_SIZE[1] * scale)
        if headless:
            self.surface = pygame.Surface(size)
        else:
            self.surface = pygame.display.set_mode(size)
            pygame.display.set_caption(title)
        self.font = pygame.font.Font(None, max(16, 8 * scale))

    def closed(self) -> bool:
        """Whether the user closed the window (events are pumped here)."""
        if not self.draws or self.headless:
            return False
        return any(event.type == self.pygame.QUIT for event in self.pygame.event.get())

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
        if self.screenshot:
            self.pygame.image.save(self.surface, self.screenshot)
        if self.record and self.frames:
            # Real time: 60 emulator frames/s are 15 agent steps/s.
            write_recording(self.record, self.frames, fps=15 / RECORD_EVERY)
        self.pygame.quit()


def write_recording(path: str, frames: list[np.ndarray], fps: float) -> None:
    import imageio.v2 as imageio

    if path.lower().endswith(".gif"):
        imageio.mimsave(path, frames, duration=1000 / fps, loop=0)
    else:
        imageio.mimsave(path, frames, fps=fps)


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
