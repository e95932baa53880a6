"""The web side of ``--web``: an aiohttp server on a thread of its own, sending the newest picture to each viewer.

The play loop never waits on it: it only replaces the newest :class:`Picture` (and wakes
this thread's event loop); each viewer's task sends the newest picture when the viewer
has drawn the previous one (the page answers every picture with ``ack``), so a viewer
that stops reading costs nothing and holds at most one picture, and a slow one skips to
the newest. Each picture is encoded once, for every viewer (``web_frames.encode``).

Why a websocket and not server-sent events: pictures are binary (SSE would send them as
base64, a third larger, and encode them again) and the viewers' keys and acks travel back
on the same connection (SSE would need a second request per key).

Who may watch: a loopback page answers only requests addressed to a loopback name (a
web site cannot reach it through DNS rebinding), a websocket opened by another site's
page (its ``Origin``) is refused, and with ``ATARI_DEMO_KEY`` the websocket needs the
key (``?key=``; wrong or missing: closed with code 4401, and the page asks for it).
"""

from __future__ import annotations

import asyncio
import hmac
import queue
import threading
from dataclasses import dataclass, field
from importlib import resources
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web

from atari_trtis_demo.core.addresses import is_loopback
from atari_trtis_demo.core.errors import UserError
from atari_trtis_demo.play.controls import PAUSE, QUIT
from atari_trtis_demo.play.web_address import WebAddress
from atari_trtis_demo.play.web_frames import Picture, encode

OTHER_KEY = "key"  # a viewer's key press that asks for nothing (commands); the others: controls.QUIT, PAUSE
KEYS = {"p": PAUSE, " ": PAUSE, "escape": QUIT, "q": QUIT}  # KeyboardEvent.key, lower case; any other: OTHER_KEY
MAX_VIEWERS = 32
MAX_COMMANDS = 64  # keys waiting for the play loop: more are dropped
MAX_FPS = 30.0  # pictures a second to one viewer, at most (real time is 15; --fps 0 would be hundreds)
KEY_REFUSED, PLAYER_ENDED, TOO_MANY = 4401, 4000, 4429  # websocket close codes the page understands
PAGE = resources.files("atari_trtis_demo.play").joinpath("web_page.html")
# Nothing from elsewhere: the page's own inline script and style, its pictures as blobs, its own websocket.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src blob:; connect-src 'self'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}


@dataclass(eq=False)
class Viewer:
    """One open page: the number of the last picture sent, whether it drew it, how many it got."""

    ws: web.WebSocketResponse
    drawn: asyncio.Event = field(default_factory=asyncio.Event)
    sent: int = -1
    pictures: int = 0


class WebServer:
    """Serves the page and the pictures; :meth:`publish` from the play loop, :attr:`commands` for its keys."""

    def __init__(self, address: WebAddress, title: str) -> None:
        self.address, self.title = address, title
        self.commands: queue.Queue[str] = queue.Queue(MAX_COMMANDS)
        self.viewers: set[Viewer] = set()  # changed on the server's thread only
        self.latest: Picture | None = None
        self.url, self.port = "", 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="web page", daemon=True)
        self._wake_pending = False
        self._changed: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None

    # -- the play loop's side ----------------------------------------------------------

    def start(self) -> str:
        """Listen (one line when it cannot) and return the URL to open."""
        self._thread.start()
        try:
            port = asyncio.run_coroutine_threadsafe(self._open(), self._loop).result(timeout=60)
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            raise
        self.port = port
        self.url = self.address.url(port)
        return self.url

    def publish(self, picture: Picture) -> None:
        """Make ``picture`` the newest; never waits. Viewers waiting for one are woken (once per burst)."""
        self.latest = picture
        if self.viewers and not self._wake_pending:
            self._wake_pending = True
            self._loop.call_soon_threadsafe(self._wake)

    @property
    def viewer_count(self) -> int:
        return len(self.viewers)

    def stop(self, linger: float = 1.0) -> None:
        """Give each viewer up to ``linger`` s to get the newest picture (the game-over summary), then close."""
        if not self._thread.is_alive():
            return
        closing = asyncio.run_coroutine_threadsafe(self._close(linger), self._loop)
        try:
            closing.result(timeout=linger + 10)
        except Exception:  # (a viewer that will not close must not hold or fail the player's exit)
            pass
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    # -- the server's thread -----------------------------------------------------------

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._changed = asyncio.Event()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _open(self) -> int:
        app = web.Application(middlewares=[self._only_this_host])
        app.router.add_get("/", self._page)
        app.router.add_get("/ws", self._viewer)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2)
        await self._runner.setup()
        where = f"{self.address.host}:{self.address.port}"
        try:
            await web.TCPSite(self._runner, self.address.host, self.address.port).start()
        except OSError as e:
            await self._runner.cleanup()
            raise UserError(f"--web {where}: cannot listen there ({e.strerror or e})") from None
        return self._runner.addresses[0][1]

    def _wake(self) -> None:
        self._wake_pending = False
        changed, self._changed = self._changed, asyncio.Event()
        if changed is not None:
            changed.set()

    @web.middleware
    async def _only_this_host(self, request: web.Request, handler):  # -> web.StreamResponse
        """A loopback page answers loopback names only: DNS rebinding would give another site's name."""
        if self.address.loopback and not is_loopback(urlsplit(f"//{request.host}").hostname or ""):
            raise web.HTTPForbidden(text="this page answers on its loopback address only\n")
        return await handler(request)

    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(body=PAGE.read_bytes(), content_type="text/html", headers=PAGE_HEADERS)

    async def _viewer(self, request: web.Request) -> web.WebSocketResponse:
        origin = request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != request.host:
            raise web.HTTPForbidden(text="this page's websocket is for this page only\n")
        # No compression: the pictures are PNG or JPEG already. Small messages only come back (acks, keys).
        ws = web.WebSocketResponse(compress=False, max_msg_size=1024, heartbeat=10, timeout=1)
        await ws.prepare(request)
        key = self.address.key
        if key is not None and not hmac.compare_digest(request.query.get("key", "").encode(), key.encode()):
            await ws.close(code=KEY_REFUSED, message=b"ATARI_DEMO_KEY refused")
            return ws
        if len(self.viewers) >= MAX_VIEWERS:
            await ws.close(code=TOO_MANY, message=b"too many viewers")
            return ws
        viewer = Viewer(ws)
        viewer.drawn.set()
        self.viewers.add(viewer)
        sender = asyncio.ensure_future(self._send_pictures(viewer))
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                if message.data == "ack":
                    viewer.drawn.set()
                elif message.data.startswith("key:"):
                    try:
                        self.commands.put_nowait(KEYS.get(message.data[4:].lower(), OTHER_KEY))
                    except queue.Full:
                        pass
        finally:
            self.viewers.discard(viewer)
            sender.cancel()
        return ws

    async def _send_pictures(self, viewer: Viewer) -> None:
        """The newest picture each time the viewer has drawn the last one, at most MAX_FPS a second."""
        loop = asyncio.get_running_loop()
        next_time = 0.0
        while not viewer.ws.closed:
            await viewer.drawn.wait()
            if (wait := next_time - loop.time()) > 0:
                await asyncio.sleep(wait)
            while (picture := self.latest) is None or picture.number == viewer.sent:
                assert self._changed is not None
                await self._changed.wait()
            viewer.drawn.clear()
            next_time = loop.time() + 1 / MAX_FPS
            await viewer.ws.send_bytes(encode(picture, self.title))
            viewer.sent, viewer.pictures = picture.number, viewer.pictures + 1

    async def _close(self, linger: float) -> None:
        deadline = asyncio.get_running_loop().time() + linger
        newest = self.latest.number if self.latest is not None else -1
        while any(v.sent < newest and not v.ws.closed for v in self.viewers):
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.02)
        closing = [v.ws.close(code=PLAYER_ENDED, message=b"the player has ended") for v in list(self.viewers)]
        await asyncio.gather(*closing, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
