"""The page of ``src/app.py --web`` in a real browser: headless Chromium driven over the DevTools protocol.

The player plays Breakout against the session's Triton; the test opens the URL it prints,
takes screenshots of the page and presses keys in it, as a viewer would. Each wait is for
a state of the page or of the player (pictures drawn, a banner shown, the process ended).
Chromium is Debian's (``scripts/install_browser.sh``, run by ``./setup.sh``); where it
cannot be installed these tests are skipped, saying why.
"""

from __future__ import annotations

import asyncio
import re

import numpy as np
import pytest
from browser import Browser, Tab, chromium_or_skip
from helpers import Player

from atari_trtis_demo.play.web_address import WebAddress
from atari_trtis_demo.play.web_frames import Picture
from atari_trtis_demo.play.web_server import WebServer


@pytest.fixture(scope="module")
def chromium() -> str:
    return chromium_or_skip()


def watch_url(player: Player) -> str:
    player.wait_for("watch the game at", timeout=120)
    line = next(line for line in player.lines if "watch the game at" in line)
    return re.search(r"http://\S+", line).group(0)


def colours(image: np.ndarray) -> int:
    return len(np.unique(image.reshape(-1, image.shape[-1]), axis=0))


async def picture_changes(tab: Tab, before: np.ndarray, element: str = "screen") -> np.ndarray:
    """The first screenshot of ``element`` that differs from ``before`` (waiting for new pictures while it is not)."""
    for _ in range(100):
        drawn = await tab.pictures()
        await tab.wait_for(f"Number(document.body.dataset.pictures) > {drawn}", what="a new picture")
        after = await tab.screenshot(element)
        if after.shape != before.shape or np.any(after != before):
            return after
    raise AssertionError("100 new pictures, and the game area never changed")


def stop(player: Player) -> None:
    if player.proc.poll() is None:
        player.proc.kill()
        player.finish()


def test_one_game_plays_live_in_the_page_and_p_stops_the_picture(server, chromium: str) -> None:
    """Drawn and moving, the overlay there, P freezes the picture under PAUSED, Space resumes, Esc ends play."""
    player = Player("--host", "127.0.0.1", "--port", str(server.grpc_port), "--web", "0", "--fire-on-life-loss")
    try:
        url = watch_url(player)
        assert url.startswith("http://127.0.0.1:")

        async def view() -> None:
            async with Browser(chromium) as browser:
                tab = await browser.open(url)
                await tab.wait_for("Number(document.body.dataset.pictures) >= 2", what="two pictures")
                first = await tab.screenshot("screen")
                assert first.shape[0] > first.shape[1] > 300, "one Atari screen, scaled up"
                assert colours(first) >= 6, "Breakout's bricks, walls and score are drawn"
                await picture_changes(tab, first)
                overlay = await tab.evaluate("document.getElementById('overlay').innerText")
                for words in ("score ", "episode 1", "steps/s", "rtt", "ASYNC"):
                    assert words in overlay, overlay
                assert "/" not in overlay.splitlines()[0], "no episode count: --web plays on until stopped"
                assert "BreakoutNoFrameskip-v4" in await tab.evaluate("document.title")

                await tab.press("p")
                await tab.wait_for("document.body.dataset.banner.startsWith('PAUSED')", what="PAUSED")
                paused_at = await tab.evaluate("document.body.dataset.number")
                frozen = await tab.screenshot("screen")
                await asyncio.sleep(1.5)  # 22 steps at the Atari's pace: none may come while paused
                assert await tab.evaluate("document.body.dataset.number") == paused_at
                assert np.array_equal(await tab.screenshot("screen"), frozen), "the picture stopped"

                await tab.press(" ")
                await tab.wait_for("document.body.dataset.banner === ''", what="the banner gone")
                await picture_changes(tab, frozen)

                await tab.press("Escape")
                await tab.wait_for("document.body.dataset.state === 'ended'", what="the end of play")
                whole = await tab.screenshot()
                assert whole.shape[:2] == (900, 1000)

        asyncio.run(view())
        done = player.finish()
    finally:
        stop(player)
    assert done.returncode == 0, done.stderr
    assert "agent steps in" in done.stdout and "Traceback" not in done.stderr


def test_the_grid_of_games_and_the_game_over_summary(server, chromium: str) -> None:
    """--games 4: four cells drawn and moving, labelled; after --max-steps the summary stays until a key."""
    args = ["--host", "127.0.0.1", "--port", str(server.grpc_port), "--games", "4", "--max-steps", "160"]
    args += ["--fps", "8", "--fire-on-life-loss", "--web", "127.0.0.1:0", "--game-over-seconds", "300"]

    async def view(browser: Browser, url: str) -> None:
        tab = await browser.open(url)
        await tab.wait_for("Number(document.body.dataset.pictures) >= 2", what="two pictures")
        columns, rows = map(int, (await tab.evaluate("document.body.dataset.grid")).split("x"))
        assert columns * rows >= 4 > columns * (rows - 1)
        first = await tab.screenshot("screen")
        height, width = first.shape[0] // rows, first.shape[1] // columns
        cells = [first[r * height : (r + 1) * height, c * width : (c + 1) * width] for r in range(rows)
                 for c in range(columns)][:4]  # fmt: skip
        assert all(colours(cell) >= 6 for cell in cells), "every game is drawn in its cell"
        await picture_changes(tab, first)
        overlay = await tab.evaluate("document.getElementById('overlay').innerText")
        assert "4 games" in overlay and "steps/s per game" in overlay and "rtt p50" in overlay, overlay
        assert "each game's screen, 160x210" in await tab.evaluate("document.getElementById('shows').innerText")

        banner = await tab.wait_for(  # 160 steps at 8 a second (20 s: time to open the page), or fewer
            "document.body.dataset.banner.includes('4 games, mean score') && document.body.dataset.banner",
            timeout=120,
            what="the game-over summary",
        )
        assert re.match(r"(GAME OVER|STEP LIMIT REACHED) / 4 games, mean score .* / press a key", banner), banner
        await tab.press("x")
        await tab.wait_for("document.body.dataset.state === 'ended'", what="the end of play")
        assert "4 games, mean score" in await tab.evaluate("document.getElementById('banner').innerText")

    async def run() -> None:
        async with Browser(chromium) as browser:  # started first: the page is opened as soon as the URL is out
            player = Player(*args)
            try:
                await view(browser, await asyncio.to_thread(watch_url, player))
                done = await asyncio.to_thread(player.finish)
            finally:
                stop(player)
            assert done.returncode == 0, done.stderr
            assert "n_episodes: 4" in done.stdout

    asyncio.run(run())


def test_the_page_asks_once_for_the_key(chromium: str) -> None:
    """A page opened without the key asks for it (a prompt), keeps it for the tab: a reload does not ask again."""
    server = WebServer(WebAddress("127.0.0.1", 0, key="s3cret"), "key test")
    url = server.start()
    assert url.endswith("/?key=s3cret")
    server.publish(Picture(1, (np.full((210, 160, 3), 200, np.uint8),), overlay=("score 7",)))

    async def view() -> None:
        async with Browser(chromium) as browser:
            tab = await browser.open(url.split("?")[0])
            dialog = await tab.event("Page.javascriptDialogOpening")
            assert dialog["type"] == "prompt" and "ATARI_DEMO_KEY" in dialog["message"]
            await tab.call("Page.handleJavaScriptDialog", accept=True, promptText="s3cret")
            await tab.wait_for("Number(document.body.dataset.pictures) >= 1", what="the picture")
            assert "score 7" in await tab.evaluate("document.getElementById('overlay').innerText")
            await tab.evaluate("window.before_reload = true")
            await tab.call("Page.reload")
            # A second prompt would block the page's script, and with it this wait: hence the outer deadline.
            reloaded = tab.wait_for("!window.before_reload && Number(document.body.dataset.pictures) >= 1")
            await asyncio.wait_for(reloaded, 60)

    try:
        asyncio.run(view())
    finally:
        server.stop()
