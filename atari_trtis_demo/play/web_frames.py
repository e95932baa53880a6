"""What the page of ``--web`` is sent: one picture of every game, encoded once, whatever the viewer count.

A :class:`Picture` is what the play loop drew: one cell per game, each an (H, W, 3) RGB
screen or an (H, W) grayscale frame (the model's 84x84 input, where the env gives no
screen), with the games' labels, the overlay lines, a warning and a banner (PAUSED,
GAME OVER). :func:`encode` packs the cells side by side in a grid (the page scales it
and draws the gaps, labels and text) and makes one message: a 4-byte big-endian length,
a JSON header, then the image. PNG (lossless: Atari pixels stay sharp) up to a few
screens; JPEG above, where PNG costs 6-12 ms of CPU per grid of 16 screens and JPEG
about 1 ms (docs/play.md). cv2 encodes: the players already need it.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field

import cv2
import numpy as np

# Above this many pixels a picture goes as JPEG (quality 90): PNG's cost grows with the grid.
PNG_MAX_PIXELS = 4 * 210 * 160
JPEG_OPTIONS = [cv2.IMWRITE_JPEG_QUALITY, 90]  # 4:2:0: 4:4:4 cost twice as much
PNG_OPTIONS = [cv2.IMWRITE_PNG_COMPRESSION, 1]
_buffers = threading.local()  # mosaic(): one reused image per thread (the page's encoder, --record)
# The grid's shape is chosen for a browser window of about this size (cells as large as fits).
PAGE_ROOM = (1600, 860)


@dataclass(frozen=True)
class Picture:
    """One drawn state of play, numbered in drawing order; the cells are the viewer's to read, never changed."""

    number: int
    cells: tuple[np.ndarray, ...]
    labels: tuple[str, ...] = ()
    overlay: tuple[str, ...] = ()
    warning: str | None = None
    banner: tuple[str, ...] = ()  # lines over the picture: PAUSED, GAME OVER and the summary
    encoded: dict[str, bytes] = field(default_factory=dict, compare=False)  # filled by encode(), once


def grid_columns(n: int, cell: tuple[int, int], room: tuple[int, int] = PAGE_ROOM) -> int:
    """Columns of the grid that shows ``n`` cells of ``cell`` (width, height) largest in ``room``, fewest empty."""

    def key(columns: int) -> tuple[float, int]:
        rows = math.ceil(n / columns)
        return min(room[0] / (columns * cell[0]), room[1] / (rows * cell[1])), -(columns * rows - n)

    return max(range(1, n + 1), key=key)


def shows(cells: tuple[np.ndarray, ...]) -> str:
    """What the page says its cells are."""
    height, width = cells[0].shape[:2]
    if all(c.ndim == 2 for c in cells):
        return f"what the agent sees: {width}x{height} grayscale, the model's input"
    return f"the game's screen, {width}x{height}" if len(cells) == 1 else f"each game's screen, {width}x{height}"


def mosaic(cells: tuple[np.ndarray, ...], columns: int) -> np.ndarray:
    """The cells side by side, ``columns`` a row, in BGR (cv2's order), or grayscale when every cell is.

    The result is this thread's buffer of that shape, overwritten by the next call: fresh memory
    each time cost more than the copies (a page fault per 4 kB: about 2 ms for a grid of 16 here).
    """
    height = max(c.shape[0] for c in cells)
    width = max(c.shape[1] for c in cells)
    rows = math.ceil(len(cells) / columns)
    gray = all(c.ndim == 2 for c in cells)
    shape = (rows * height, columns * width) if gray else (rows * height, columns * width, 3)
    out = getattr(_buffers, "image", None)
    if out is None or out.shape != shape:
        out = _buffers.image = np.empty(shape, np.uint8)
    if any(c.shape[:2] != (height, width) for c in cells) or len(cells) < rows * columns:
        out.fill(0)  # the empty cells, and the margins of smaller ones, are black
    for i, cell in enumerate(cells):
        y, x = (i // columns) * height, (i % columns) * width
        h, w = cell.shape[:2]
        out[y : y + h, x : x + w] = cell if gray or cell.ndim == 3 else cell[:, :, None]
    # RGB to BGR in one pass, in place: numpy's copy of a reversed channel axis costs 20-40 times more.
    return out if gray else cv2.cvtColor(out, cv2.COLOR_RGB2BGR, dst=out)


def encode(picture: Picture, title: str) -> bytes:
    """The message for ``picture`` (cached on it: every viewer gets the same bytes)."""
    if "message" in picture.encoded:
        return picture.encoded["message"]
    cells = picture.cells
    height, width = max(c.shape[0] for c in cells), max(c.shape[1] for c in cells)
    columns = grid_columns(len(cells), (width, height))
    image = mosaic(cells, columns)
    png = image.shape[0] * image.shape[1] <= PNG_MAX_PIXELS
    ok, data = cv2.imencode(".png" if png else ".jpg", image, PNG_OPTIONS if png else JPEG_OPTIONS)
    if not ok:
        raise RuntimeError(f"cv2 could not encode a {image.shape} picture")
    header = {
        "number": picture.number,
        "title": title,
        "shows": shows(cells),
        "columns": columns,
        "rows": math.ceil(len(cells) / columns),
        "cell": [width, height],
        "labels": list(picture.labels),
        "overlay": list(picture.overlay),
        "warning": picture.warning,
        "banner": list(picture.banner),
        "type": "image/png" if png else "image/jpeg",
    }
    head = json.dumps(header).encode()
    message = len(head).to_bytes(4, "big") + head + data.tobytes()
    picture.encoded["message"] = message
    return message


def decode(message: bytes) -> tuple[dict, np.ndarray]:
    """The header and the image (BGR or grayscale) of one message, as the page reads it (tests, benchmarks)."""
    length = int.from_bytes(message[:4], "big")
    header = json.loads(message[4 : 4 + length])
    image = cv2.imdecode(np.frombuffer(message[4 + length :], np.uint8), cv2.IMREAD_UNCHANGED)
    return header, image
