"""The window of many games (``src/app.py --games N``): one cell per game in a grid, an overlay below.

Each cell is a game's ALE screen scaled alike (nearest neighbour) with its number and
score in the cell's top-left corner; the bar below the grid shows the aggregate
figures (agent steps/s, requests/s, round-trip latency). Keys, pause, the game-over
screen, screenshots and recordings behave as in the one-game window
(:class:`~atari_trtis_demo.screen.Screen`, whose methods this reuses). No Chainer here.
"""

from __future__ import annotations

import math

import numpy as np

from atari_trtis_demo.screen import ATARI_SIZE, RECORD_EVERY, Screen

# The largest window the grid is shrunk into (a laptop screen); the cells keep the Atari's aspect.
MAX_WINDOW = (1600, 860)  # the grid; the overlay bar goes below
LABEL_COLOUR = (255, 255, 0)
MIN_WIDTH = 360  # room for the overlay's lines under a grid of one or two small cells


def grid_layout(n: int, scale: float, max_size: tuple[int, int] = MAX_WINDOW) -> tuple[int, int, float]:
    """(columns, rows, cell scale) showing ``n`` cells as large as fits, at most at ``scale``.

    Of the layouts with the largest cells, the one with the fewest empty cells, then the squarest, wins.
    """
    best, best_key = (1, n, 0.0), (0.0, -n, -(10**9))
    for columns in range(1, n + 1):
        rows = math.ceil(n / columns)
        fit = min(scale, max_size[0] / (columns * ATARI_SIZE[0]), max_size[1] / (rows * ATARI_SIZE[1]))
        key = (round(fit, 6), n - columns * rows, -abs(columns * ATARI_SIZE[0] - rows * ATARI_SIZE[1]))
        if key > best_key:
            best, best_key = (columns, rows, fit), key
    return best


class GridScreen(Screen):
    """The window (or, headless, an off-screen surface) of ``n`` games; see the module's doc."""

    def __init__(
        self,
        title: str,
        n: int,
        *,
        scale: float = 3.0,
        headless: bool = False,
        record: str | None = None,
        screenshot: str | None = None,
    ) -> None:
        # The grid first: Screen.__init__ asks window_size() and make_fonts() for it.
        self.columns, self.rows, self.cell_scale = grid_layout(n, scale)
        self.cell_size = (round(ATARI_SIZE[0] * self.cell_scale), round(ATARI_SIZE[1] * self.cell_scale))
        self.cells: list[tuple[int, int]] = [
            ((i % self.columns) * self.cell_size[0], (i // self.columns) * self.cell_size[1]) for i in range(n)
        ]
        super().__init__(title, scale=scale, headless=headless, record=record, screenshot=screenshot)

    def make_fonts(self) -> None:
        self.font = self.pygame.font.Font(None, 20)
        self.big_font = self.pygame.font.Font(None, 48)
        self.cell_font = self.pygame.font.Font(None, max(12, round(10 * self.cell_scale)))
        self.label_height = self.cell_font.get_linesize()
        self.bar_height = 2 * self.font.get_linesize() + 4

    def window_size(self) -> tuple[int, int]:
        """The grid of cells, with the overlay bar below it."""
        return max(self.columns * self.cell_size[0], MIN_WIDTH), self.rows * self.cell_size[1] + self.bar_height

    def draw_grid(self, screens: list[np.ndarray], labels: list[str], overlay: list[str], step: int) -> None:
        """Every game's ALE screen (H, W, 3) in its cell with its label, and the overlay bar."""
        if not self.draws:
            return
        pg, surface = self.pygame, self.surface
        surface.fill((0, 0, 0))
        for (x, y), rgb, label in zip(self.cells, screens, labels, strict=True):
            game = pg.surfarray.make_surface(rgb.swapaxes(0, 1))
            surface.blit(pg.transform.scale(game, self.cell_size), (x, y))
            surface.blit(self.cell_font.render(label, True, LABEL_COLOUR, (0, 0, 0)), (x + 1, y))
        y = self.rows * self.cell_size[1] + 2
        for text in overlay:
            label = self.font.render(text, True, (255, 255, 255))
            surface.blit(label, (4, y))
            y += self.font.get_linesize()
        if self.record and step % RECORD_EVERY == 0:
            self.frames.append(pg.surfarray.array3d(surface).swapaxes(0, 1))
        if not self.headless:
            pg.display.flip()
