"""A real headless Chromium for the tests of the ``--web`` page, driven over the DevTools protocol.

Debian's ``chromium`` (``scripts/install_browser.sh`` installs it: ``./setup.sh`` runs it, and
:func:`chromium_or_skip` once more when it is missing). The protocol goes over a websocket
with aiohttp's client, which the project already has: no Selenium, no driver binary. Each
wait is for a state of the page (a JavaScript expression turning true), never a fixed time.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "scripts" / "install_browser.sh"
# Headless on a machine without a display, a GPU or a user session bus; nothing fetched from the network.
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--hide-scrollbars",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--metrics-recording-only",
    "--mute-audio",
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    "--remote-debugging-port=0",
]
KEYS = {  # key -> (code, Windows key code) for Input.dispatchKeyEvent
    "p": ("KeyP", 80),
    "q": ("KeyQ", 81),
    "x": ("KeyX", 88),
    " ": ("Space", 32),
    "Escape": ("Escape", 27),
}


def chromium_or_skip() -> str:
    """The chromium command, installed by scripts/install_browser.sh when missing; a skip saying why it cannot be."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    done = subprocess.run(["bash", str(INSTALL)], capture_output=True, text=True, timeout=1200)
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip(f"no browser for the page's tests: {(done.stderr or done.stdout).strip()}")
    return found


class Browser:
    """One headless Chromium with a profile of its own, closed (and its processes ended) on exit."""

    def __init__(self, command: str, size: tuple[int, int] = (1000, 900)) -> None:
        self.command, self.size = command, size
        self.profile = tempfile.mkdtemp(prefix="atari-web-test-chromium-")
        self.proc: subprocess.Popen | None = None
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []  # what came while a command waited for its answer

    async def __aenter__(self) -> Browser:
        log = open(os.path.join(self.profile, "chromium.log"), "w")  # noqa: SIM115  (closed with the process)
        self.proc = subprocess.Popen(
            [self.command, *FLAGS, f"--window-size={self.size[0]},{self.size[1]}", f"--user-data-dir={self.profile}"],
            stdout=log,
            stderr=log,
            start_new_session=True,  # its helper processes share its group, and end with it
        )
        log.close()
        port_file = Path(self.profile) / "DevToolsActivePort"
        for _ in range(1200):  # chromium writes its port here once it listens
            if port_file.exists() and len(port_file.read_text().split()) == 2:
                break
            assert self.proc.poll() is None, f"chromium ended: {self.log()}"
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"chromium did not listen within 60 s: {self.log()}")
        port, path = port_file.read_text().split()
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0)
        return self

    def log(self) -> str:
        return Path(self.profile, "chromium.log").read_text()[-2000:]

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self.ws is not None and not self.ws.closed:
                await asyncio.wait_for(self.call("Browser.close"), 10)
        except (TimeoutError, aiohttp.ClientError, ConnectionError):
            pass
        if self.session is not None:
            await self.session.close()
        if self.proc is not None:
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        shutil.rmtree(self.profile, ignore_errors=True)

    async def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result (events that come meanwhile are kept in ``events``)."""
        assert self.ws is not None
        number = next(self.ids)
        message: dict[str, Any] = {"id": number, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        await self.ws.send_str(json.dumps(message))
        while True:
            answer = json.loads(await self.ws.receive_str())
            if answer.get("id") == number:
                if "error" in answer:
                    raise AssertionError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            if "method" in answer:
                self.events.append(answer)

    async def event(self, method: str, session: str, timeout: float = 60) -> dict[str, Any]:
        """The parameters of the first event ``method`` of ``session`` (kept, or still to come)."""
        assert self.ws is not None
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events:
                    if event["method"] == method and event.get("sessionId") == session:
                        self.events.remove(event)
                        return event["params"]
                self.events.append(json.loads(await self.ws.receive_str()))

    async def open(self, url: str) -> Tab:
        target = (await self.call("Target.createTarget", url="about:blank"))["targetId"]
        session = (await self.call("Target.attachToTarget", targetId=target, flatten=True))["sessionId"]
        tab = Tab(self, session)
        await tab.call("Page.enable")
        await tab.call("Page.bringToFront")
        await tab.call("Emulation.setDeviceMetricsOverride", width=self.size[0], height=self.size[1],
                       deviceScaleFactor=1, mobile=False)  # fmt: skip
        await tab.call("Page.navigate", url=url)
        return tab


class Tab:
    """One page of the browser."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser, self.session = browser, session

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.browser.call(method, self.session, **params)

    async def event(self, method: str, timeout: float = 60) -> dict[str, Any]:
        return await self.browser.event(method, self.session, timeout)

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 60, what: str = "") -> Any:
        """The value of ``expression`` once it is truthy (checked every 0.1 s)."""
        deadline = asyncio.get_running_loop().time() + timeout
        guarded = f"(() => {{ try {{ return {expression}; }} catch (e) {{ return false; }} }})()"  # page loading
        while not (value := await self.evaluate(guarded)):
            state = await self.evaluate("document.body ? JSON.stringify(document.body.dataset) : 'no page yet'")
            assert asyncio.get_running_loop().time() < deadline, f"no {what or expression} in {timeout} s: {state}"
            await asyncio.sleep(0.1)
        return value

    async def pictures(self) -> int:
        return int(await self.evaluate("Number(document.body.dataset.pictures)"))

    async def screenshot(self, element: str | None = None) -> np.ndarray:
        """The page (or the element of that id) as drawn now, (H, W, 3) BGR."""
        params: dict[str, Any] = {"format": "png"}
        if element:
            box = await self.evaluate(f"JSON.stringify(document.getElementById('{element}').getBoundingClientRect())")
            box = json.loads(box)
            params["clip"] = {"x": box["x"], "y": box["y"], "width": box["width"], "height": box["height"], "scale": 1}
        data = base64.b64decode((await self.call("Page.captureScreenshot", **params))["data"])
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)

    async def press(self, key: str) -> None:
        code, number = KEYS[key]
        text = key if len(key) == 1 else ""
        for kind in ("keyDown", "keyUp"):
            await self.call("Input.dispatchKeyEvent", type=kind, key=key, code=code, text=text if kind == "keyDown"
                            else "", windowsVirtualKeyCode=number, nativeVirtualKeyCode=number)  # fmt: skip
