"""The web side of ``--web`` without a browser: the address and its key, who may connect, the newest picture
per viewer, a viewer that stops reading, grayscale cells, and the flags around it.

Real games (ALE Breakout) played by the one play loop with a local random policy, a real
aiohttp server on 127.0.0.1, and aiohttp's websocket client as the viewer, reading the
same messages the page reads. The page itself in a browser: tests/test_web_page.py.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from helpers import REMOTE, STANDALONE, Player, answers, free_ports, one_error_line, run_command, wait_for_answers

from atari_trtis_demo.client.latency import LatencyStats
from atari_trtis_demo.core.errors import UserError
from atari_trtis_demo.play.play_cli import play_config, remote_parser
from atari_trtis_demo.play.play_config import PlayConfig
from atari_trtis_demo.play.play_loop import play_games
from atari_trtis_demo.play.play_result import PlayResult
from atari_trtis_demo.play.policies import Policy
from atari_trtis_demo.play.screen import View
from atari_trtis_demo.play.web_address import PLAY_ON_EPISODES, WebAddress, parse_web_address
from atari_trtis_demo.play.web_frames import Picture, decode
from atari_trtis_demo.play.web_screen import WebScreen
from atari_trtis_demo.play.web_server import KEY_REFUSED, PLAYER_ENDED, WebServer


class RandomPolicy(Policy):
    name = "random test policy"

    def __init__(self, seed: int = 0) -> None:
        self.n_actions, self.latency = 4, LatencyStats()
        self.rng = np.random.default_rng(seed)

    def q_values(self, frames: np.ndarray) -> np.ndarray:
        return self.rng.random((len(frames), self.n_actions))


class Playing:
    """``play_games`` on a thread of its own, its page on a free port; ``result`` once it ended."""

    def __init__(self, games: int = 1, **config: object) -> None:
        self.port = free_ports(1)[0]
        self.config = PlayConfig(web=f"127.0.0.1:{self.port}", **config)  # type: ignore[arg-type]
        self.result: PlayResult | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._play, args=(games,), daemon=True)
        self.thread.start()

    def _play(self, games: int) -> None:
        try:
            self.result = play_games(RandomPolicy(), games, self.config)
        except BaseException as e:  # raised again in the test's thread by finished()
            self.error = e

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def finished(self, timeout: float = 120) -> PlayResult:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "play did not end"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


async def connect(session: aiohttp.ClientSession, url: str, tries: int = 600) -> aiohttp.ClientWebSocketResponse:
    """The page's websocket, once the player listens (it starts listening while the envs are made)."""
    for _ in range(tries):
        try:
            return await session.ws_connect(url + "/ws")
        except aiohttp.ClientConnectorError:
            await asyncio.sleep(0.1)
    raise AssertionError(f"nothing listens at {url}")


async def next_picture(ws: aiohttp.ClientWebSocketResponse) -> tuple[dict, np.ndarray]:
    message = await asyncio.wait_for(ws.receive(), 60)
    assert message.type == aiohttp.WSMsgType.BINARY, message
    return decode(message.data)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [("8080", "127.0.0.1", 8080), ("localhost:0", "localhost", 0), ("[::1]:9000", "::1", 9000)],
)
def test_a_loopback_page_needs_no_key(text: str, host: str, port: int) -> None:
    address = parse_web_address(text, environ={})
    assert (address.host, address.port, address.key, address.loopback) == (host, port, None, True)


def test_another_address_needs_the_key_and_the_url_carries_it() -> None:
    with pytest.raises(UserError, match="--web 0.0.0.0:8080: a page other machines can reach needs ATARI_DEMO_KEY"):
        parse_web_address("0.0.0.0:8080", environ={})
    address = parse_web_address("0.0.0.0:8080", environ={"ATARI_DEMO_KEY": "s3cret/+"})
    assert not address.loopback and address.url() == "http://127.0.0.1:8080/?key=s3cret%2F%2B"
    assert parse_web_address("8080", environ={"ATARI_DEMO_KEY": "k"}).key == "k", "a key set is asked on loopback too"


@pytest.mark.parametrize(
    ("text", "words"),
    [("80800", "from 0 to 65535"), ("host:", "from 0 to 65535"), (":80", "give a port"), ("::1:80", "brackets")],
)
def test_a_bad_address_is_one_line(text: str, words: str) -> None:
    with pytest.raises(UserError, match=words):
        parse_web_address(text, environ={})


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--web", "0.0.0.0:19499"], ["--web 0.0.0.0:19499", "ATARI_DEMO_KEY"]),
        (["--web", "abc"], ["--web abc", "port"]),
        (["--web", "0", "--games", "2", "--workers", "2", "--headless"], ["--web", "--workers"]),
    ],
)
def test_the_player_refuses_before_connecting(args: list[str], words: list[str]) -> None:
    """One line, exit 2, and no server asked (port 1 would fail with exit 1 if it were)."""
    done = run_command(REMOTE, "--host", "127.0.0.1", "--port", "1", *args)
    one_error_line(done, *words, code=2)


def test_web_plays_on_until_stopped_unless_told_how_long() -> None:
    def episodes(*argv: str) -> int:
        return play_config(remote_parser().parse_args(list(argv))).episodes

    assert episodes("--web", "0") == PLAY_ON_EPISODES
    assert episodes("--web", "0", "--max-steps", "9") == 1
    assert episodes("--web", "0", "--episodes", "3") == 3
    assert episodes() == 1


def test_a_taken_port_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=f"--web 127.0.0.1:{port}: cannot listen there"):
            play_games(RandomPolicy(), 1, PlayConfig(web=f"127.0.0.1:{port}", max_steps=5))


def test_a_viewer_sees_the_game_and_its_keys_pause_and_end_play() -> None:
    playing = Playing(fps=60)

    async def view() -> None:
        async with aiohttp.ClientSession() as session:
            ws = await connect(session, playing.url)
            async with session.get(playing.url + "/") as page:
                assert page.status == 200 and "<canvas" in await page.text()
                assert "default-src 'none'" in page.headers["Content-Security-Policy"]
            head, image = await next_picture(ws)
            assert image.shape == (210, 160, 3) and head["type"] == "image/png" and head["labels"] == []
            assert head["overlay"][0].startswith("score 0   episode 1") and head["overlay"][1].endswith(" ASYNC")
            assert "random test policy" in head["title"] and head["shows"] == "the game's screen, 160x210"
            await ws.send_str("ack")
            later, _ = await next_picture(ws)
            assert later["number"] > head["number"]
            await ws.send_str("ack")
            await ws.send_str("key: ")  # Space pauses
            while not (await next_picture(ws))[0]["banner"][:1] == ["PAUSED"]:
                await ws.send_str("ack")
            await ws.send_str("ack")
            await ws.send_str("key:Escape")
            ended = await asyncio.wait_for(ws.receive(), 60)
            assert ended.type == aiohttp.WSMsgType.CLOSE and ended.data == PLAYER_ENDED

    asyncio.run(view())
    result = playing.finished()
    assert result.stopped_by_user and result.error is None and result.steps > 0


def test_a_viewer_that_stops_reading_never_holds_the_game() -> None:
    """One viewer never reads nor acks; another reads what comes. The game plays unpaced to its end."""
    playing = Playing(fps=0, max_steps=300, sync=True, game_over_seconds=0)

    async def view() -> list[dict]:
        async with aiohttp.ClientSession() as session:
            stalled = await connect(session, playing.url)  # noqa: F841  (open, never read)
            reader = await connect(session, playing.url)
            heads = []
            while True:
                message = await asyncio.wait_for(reader.receive(), 120)
                if message.type != aiohttp.WSMsgType.BINARY:
                    return heads
                heads.append(decode(message.data)[0])
                await reader.send_str("ack")

    heads = asyncio.run(view())
    result = playing.finished()
    assert result.error is None and not result.stopped_by_user
    numbers = [head["number"] for head in heads]
    assert len(numbers) > 1 and numbers == sorted(set(numbers)), "each picture once, in order"
    assert heads[-1]["banner"][0] in ("GAME OVER", "STEP LIMIT REACHED"), "the reader got the very last picture"


def test_grayscale_cells_say_what_they_are() -> None:
    """The vector env gives no screen, only the model's 84x84 frames: the page is told so."""
    screen = WebScreen("gray test", WebAddress("127.0.0.1", 0))
    try:
        cells = [np.full((84, 84), 40 * i, np.uint8) for i in range(6)]

        async def view() -> tuple[dict, np.ndarray]:
            async with aiohttp.ClientSession() as session:
                ws = await connect(session, screen.url.rstrip("/"))
                while screen.server.viewer_count == 0:
                    await asyncio.sleep(0.01)
                screen.show(View(cells, [f"{i + 1}: 0" for i in range(6)], ["6 games"], "LOCAL FALLBACK"), 1)
                return await next_picture(ws)

        head, image = asyncio.run(view())
    finally:
        screen.finish()
    assert head["shows"] == "what the agent sees: 84x84 grayscale, the model's input"
    assert head["warning"] == "LOCAL FALLBACK" and head["overlay"] == ["6 games"]
    assert image.ndim == 2 and image.shape == (head["rows"] * 84, head["columns"] * 84)
    assert head["columns"] * head["rows"] >= 6
    row, column = divmod(1, head["columns"])
    cell = image[row * 84 : (row + 1) * 84, column * 84 : (column + 1) * 84]
    assert np.all(cell == 40), "the second game in its cell"


def test_the_key_the_origin_and_the_host_are_checked() -> None:
    server = WebServer(WebAddress("127.0.0.1", 0, key="s3cret"), "key test")
    url = server.start().split("?")[0].rstrip("/")
    try:

        async def knock() -> None:
            async with aiohttp.ClientSession() as session:
                for query in ("", "?key=wrong"):
                    ws = await session.ws_connect(f"{url}/ws{query}")
                    refused = await ws.receive()
                    assert refused.type == aiohttp.WSMsgType.CLOSE and refused.data == KEY_REFUSED
                ws = await session.ws_connect(f"{url}/ws?key=s3cret")
                server.publish(Picture(1, (np.zeros((210, 160, 3), np.uint8),)))
                head, _ = await next_picture(ws)
                assert head["number"] == 1 and head["title"] == "key test"
                await ws.close()
                with pytest.raises(aiohttp.WSServerHandshakeError) as other_site:
                    await session.ws_connect(f"{url}/ws?key=s3cret", origin="http://evil.example")
                assert other_site.value.status == 403
                async with session.get(url + "/", headers={"Host": f"evil.example:{url.rsplit(':', 1)[1]}"}) as r:
                    assert r.status == 403, "a loopback page answers loopback names only (DNS rebinding)"

        asyncio.run(knock())
    finally:
        server.stop()


def test_screenshot_and_record_keep_the_games_pixels(tmp_path: Path) -> None:
    shot, gif = tmp_path / "last.png", tmp_path / "play.gif"
    playing = Playing(games=2, fps=0, max_steps=12, screenshot=str(shot), record=str(gif), game_over_seconds=0)
    assert playing.finished().steps == 24
    import imageio.v2 as imageio

    assert imageio.imread(shot).shape == (210, 320, 3), "two games side by side"
    assert len(imageio.mimread(gif)) == 6, "every second step of 12"


def test_ctrl_c_ends_a_web_player_with_its_statistics(server) -> None:
    """src/app.py --web against the session's Triton: the URL printed, Ctrl-C ends play as in the window."""
    before = answers(server, "atari")
    player = Player("--host", "127.0.0.1", "--port", str(server.grpc_port), "--web", "127.0.0.1:0", "--games", "2")
    try:
        player.wait_for("watch the game at http://127.0.0.1:", timeout=120)
        wait_for_answers(server, "atari", before + 3)  # in play: its games' waves are answered
        done = player.stop()
    finally:
        if player.proc.poll() is None:
            player.proc.kill()
    assert done.returncode == 0, done.stderr
    assert "sync play of 2 games" in done.stdout and "Traceback" not in done.stderr


def test_the_standalone_player_serves_the_page_too(agents: dict[str, Path]) -> None:
    done = run_command(
        STANDALONE, "--modelpath", str(agents["breakout"]), "--web", "127.0.0.1:0", "--max-steps", "20", "--fps", "0"
    )
    assert done.returncode == 0, done.stderr
    assert "watch the game at http://127.0.0.1:" in done.stdout and "episode 1: score" in done.stdout
