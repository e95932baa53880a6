"""The windows' text (overlay, labels, game-over banner), drawn with ``pygame.freetype``.

``pygame.font`` (SDL_ttf 2.20.1 in pygame 2.6.1's wheel) draws each glyph hinted but does not
place it at the hinted advances: a word comes out wider than its letters drawn side by side,
the extra pixels bunched into gaps inside words ("episod e", "w indow" in the 16 px overlay;
figures in docs/play.md). pygame offers no switch for it (SDL_ttf's hinting is not exposed);
``pygame.freetype``, in the same wheel, lays the hinted glyphs out at their own advances.

:class:`OverlayFont` draws pygame's own default font (freesansbold.ttf) at the pixel size
``pygame.font.Font(None, size)`` used, with the three calls the windows make of a font, so
the layout (line heights, label strips) stays as it was. pygame is imported by the caller
first (:class:`~atari_trtis_demo.play.screen.Screen`), with its banner hidden.
"""

from __future__ import annotations

from typing import Any

# pygame.font draws its default font at this fraction of the size asked for (pygame's font.c),
# truncated to whole pixels: Font(None, 24) is a 16 px font.
DEFAULT_FONT_SCALE = 0.6875


class OverlayFont:
    """``pygame.font.Font(None, size)``'s ``render``, ``size``, ``get_linesize`` and ``metrics``, on pygame.freetype."""

    def __init__(self, size: int) -> None:
        import pygame.freetype

        pygame.freetype.init()
        self._font = pygame.freetype.Font(None, max(1, int(size * DEFAULT_FONT_SCALE)))
        self._font.pad = True  # boxes as pygame.font's: the line's full height, each glyph's whole advance

    def render(self, text: str, antialias: bool, colour: Any, background: Any = None) -> Any:
        """``text`` on a new surface (transparent without ``background``), as pygame.font's ``render``."""
        self._font.antialiased = antialias
        surface, _ = self._font.render(text, colour, background)
        return surface

    def size(self, text: str) -> tuple[int, int]:
        """Width and height of ``render(text)``."""
        rect = self._font.get_rect(text)
        return rect.width, rect.height

    def get_linesize(self) -> int:
        """Pixels from one line of text to the next."""
        return self._font.get_sized_height()

    def metrics(self, text: str) -> list[tuple[int, int, int, int, int]]:
        """Per character: (min x, max x, min y, max y, advance), as pygame.font's ``metrics``."""
        return [(int(m[0]), int(m[1]), int(m[2]), int(m[3]), round(m[4])) for m in self._font.get_metrics(text)]
