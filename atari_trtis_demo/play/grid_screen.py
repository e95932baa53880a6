"""The window of many games (``src/app.py --games N``): one cell per game in a grid, an overlay below.

Each cell is a game's ALE screen scaled alike (nearest neighbour) with its number and
score in a strip above it, a small gap between cells, the grid sized to fit the screen;
the bar below the grid shows the aggregate figures (agent steps/s, requests/s, round-trip
latency). Keys, pause, the game-over screen, screenshots and recordings behave as in the one-game window
(:class:`~atari_trtis_demo.play.screen.Screen`, whose methods this reuses).
"""

from __future__ import annotations

import math
import os

import numpy as np

from atari_trtis_demo.play.play_config import DEFAULT_SCALE
from atari_trtis_demo.play.screen import ATARI_SIZE, RECORD_EVERY, Screen, View

# The largest grid when no display tells its size (headless recordings and screenshots); the cells keep
# the Atari's aspect and the overlay bar goes below.
MAX_WINDOW = (1600, 860)
# A window must fit the screen with its title bar and a taskbar: what the desktop's size leaves the grid.
SCREEN_MARGIN = (16, 120)
LABEL_COLOUR = (255, 255, 0)
MIN_WIDTH = 360  # room for the overlay's lines under a grid of one or two small cells
GAP = 6  # pixels between cells, so that neighbouring games do not run into each other
LABEL_FONT_SIZE = 22  # pygame's default font at 22 px: 17 px lines, readable at any cell size
LABEL_HEIGHT = 18  # the strip above each cell that holds its label (the game is never covered)


def grid_layout(n: int, scale: float, max_size: tuple[int, int] = MAX_WINDOW) -> tuple[int, int, float]:
    """(columns, rows, cell scale) showing ``n`` cells as large as fits, at most at ``scale``.

    Each cell is the game, a label strip above it and a gap to its neighbours. Of the
    layouts with the largest cells, the one with the fewest empty cells, then the squarest, wins.
    """
    best, best_key = (1, n, 0.0), (0.0, -n, -(10**9))
    for columns in range(1, n + 1):
        rows = math.ceil(n / columns)
        width = (max_size[0] - (columns - 1) * GAP) / (columns * ATARI_SIZE[0])
        height = (max_size[1] - rows * LABEL_HEIGHT - (rows - 1) * GAP) / (rows * ATARI_SIZE[1])
        fit = max(min(scale, width, height), 0.01)
        key = (round(fit, 6), n - columns * rows, -abs(columns * ATARI_SIZE[0] - rows * ATARI_SIZE[1]))
        if key > best_key:
            best, best_key = (columns, rows, fit), key
    return best


def screen_room(headless: bool) -> tuple[int, int]:
    """The most the grid may take: the desktop less a margin for window decorations, or MAX_WINDOW headless.

    (``--games 16`` at a fixed 1600 px was 1308 px wide on a 1280 px screen, cut at both edges.)
    """
    if headless:
        return MAX_WINDOW
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # before pygame's first import, as Screen does
    import pygame

    pygame.display.init()
    sizes = pygame.display.get_desktop_sizes()  # the screen's, not a window's (as Info() is after set_mode)
    if not sizes or min(sizes[0]) <= 0:  # a driver that does not know its screen
        return MAX_WINDOW
    return sizes[0][0] - SCREEN_MARGIN[0], sizes[0][1] - SCREEN_MARGIN[1]


class GridScreen(Screen):
    """The window (or, headless, an off-screen surface) of ``n`` games; see the module's doc."""

    def __init__(
        self,
        title: str,
        n: int,
        *,
        scale: float = DEFAULT_SCALE,
        headless: bool = False,
        record: str | None = None,
        screenshot: str | None = None,
        max_size: tuple[int, int] | None = None,
    ) -> None:
        # The grid first: Screen.__init__ asks window_size() and make_fonts() for it. The bar's height is
        # known only once its font is: a fixed 40 px (two 15 px lines and the margins) is kept free for it.
        room = max_size or screen_room(headless)
        room = (room[0], room[1] - 40)
        self.columns, self.rows, self.cell_scale = grid_layout(n, scale, room)
        # Rounded down: rounding up made four 1.97-scale columns 2 px wider than the screen.
        self.cell_size = (int(ATARI_SIZE[0] * self.cell_scale), int(ATARI_SIZE[1] * self.cell_scale))
        stride_x, stride_y = self.cell_size[0] + GAP, LABEL_HEIGHT + self.cell_size[1] + GAP
        # Each cell's game image, top-left; its label sits in the LABEL_HEIGHT strip above it.
        self.cells: list[tuple[int, int]] = [
            ((i % self.columns) * stride_x, (i // self.columns) * stride_y + LABEL_HEIGHT) for i in range(n)
        ]
        self.grid_size = (
            self.columns * stride_x - GAP,
            self.rows * stride_y - GAP,
        )
        super().__init__(title, scale=scale, headless=headless, record=record, screenshot=screenshot)

    def make_fonts(self) -> None:
        from atari_trtis_demo.play.overlay_font import OverlayFont  # words whole: see its module

        self.font = OverlayFont(20)
        self.big_font = OverlayFont(48)
        self.cell_font = OverlayFont(LABEL_FONT_SIZE)
        self.label_height = LABEL_HEIGHT
        self.bar_height = 2 * self.font.get_linesize() + 4

    def window_size(self) -> tuple[int, int]:
        """The grid of cells, with the overlay bar below it."""
        return max(self.grid_size[0], MIN_WIDTH), self.grid_size[1] + GAP + self.bar_height

    def show(self, view: View, step: int) -> None:
        """Draw ``view``: every game in its cell; a warning replaces the overlay's second line."""
        overlay = view.overlay[:1] + [view.warning] if view.warning else view.overlay
        self.draw_grid(view.screens, view.labels, overlay, step)

    def draw_grid(self, screens: list[np.ndarray], labels: list[str], overlay: list[str], step: int) -> None:
        """Every game's ALE screen (H, W, 3) in its cell with its label, and the overlay bar."""
        if not self.draws:
            return
        pg, surface = self.pygame, self.surface
        surface.fill((0, 0, 0))
        for (x, y), rgb, label in zip(self.cells, screens, labels, strict=True):
            game = pg.surfarray.make_surface(rgb.swapaxes(0, 1))
            surface.blit(pg.transform.scale(game, self.cell_size), (x, y))
            text = self.cell_font.render(label, True, LABEL_COLOUR)
            # Clipped to its cell's width: a long score never runs into the neighbour's label.
            area = pg.Rect(0, 0, self.cell_size[0] - 1, text.get_height())
            surface.blit(text, (x + 1, y - LABEL_HEIGHT + (LABEL_HEIGHT - text.get_height()) // 2), area)
        y = self.grid_size[1] + GAP + 2
        for text in overlay:
            label = self.font.render(text, True, (255, 255, 255))
            surface.blit(label, (4, y))
            y += self.font.get_linesize()
        if self.record and step % RECORD_EVERY == 0:
            self.frames.append(pg.surfarray.array3d(surface).swapaxes(0, 1))
        if not self.headless:
            pg.display.flip()
