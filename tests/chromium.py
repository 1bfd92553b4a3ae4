"""Headless Chromium (Debian's `chromium`) for tests, driven over the DevTools protocol.

    async with Chromium(tmp_path) as browser:
        await browser.goto("http://127.0.0.1:15400/")
        await browser.wait_for("document.querySelectorAll('#graph svg .edge').length > 0")
        html = await browser.dom()
        await browser.screenshot(tmp_path / "page.png")

Each browser gets a throwaway profile under the given folder and its own process group,
which is killed on exit whatever happened, so no Chromium outlives its test.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp

WINDOW_SIZE = (1400, 900)
START_TIMEOUT = 30.0  # seconds for Chromium to open its DevTools port
COMMAND_TIMEOUT = 30.0  # seconds for one DevTools command


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class BrowserError(RuntimeError):
    pass


class Chromium:
    def __init__(self, workdir: Path, window_size: tuple[int, int] = WINDOW_SIZE) -> None:
        binary = chromium_binary()
        if binary is None:
            raise BrowserError("no chromium on PATH (Debian: apt-get install chromium)")
        self.binary = binary
        self.profile = workdir / f"chromium-profile-{os.getpid()}-{time.monotonic_ns()}"
        self.window_size = window_size
        self.proc: subprocess.Popen[bytes] | None = None
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self.console: list[str] = []  # the page's console messages and uncaught errors

    async def __aenter__(self) -> Chromium:
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _start(self) -> None:
        self.profile.mkdir(parents=True)
        width, height = self.window_size
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--headless=new",
                "--no-sandbox",  # as root, Chromium refuses to run sandboxed
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--metrics-recording-only",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--user-data-dir={self.profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: killed whole on close
        )
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None:
                raise BrowserError(f"chromium exited {self.proc.returncode} on start")
            if time.monotonic() > deadline:
                raise BrowserError(f"chromium opened no DevTools port in {START_TIMEOUT:g}s")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        self.session = aiohttp.ClientSession()
        async with self.session.get(f"http://127.0.0.1:{port}/json/list") as resp:
            targets = await resp.json()
        page = next((t for t in targets if t.get("type") == "page"), None)
        if page is None:
            raise BrowserError(f"chromium has no page target: {targets}")
        self.ws = await self.session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        await self.send("Page.enable")
        await self.send("Runtime.enable")

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """One DevTools command's result; events that arrive meanwhile are noted or skipped."""
        assert self.ws is not None
        ident = next(self._ids)
        await self.ws.send_str(json.dumps({"id": ident, "method": method, "params": params or {}}))
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while True:
            msg = await self.ws.receive(timeout=max(0.1, deadline - time.monotonic()))
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise BrowserError(f"DevTools connection closed during {method}: {msg.type}")
            data = json.loads(msg.data)
            if data.get("id") == ident:
                if "error" in data:
                    raise BrowserError(f"{method}: {data['error']}")
                result: dict[str, Any] = data.get("result", {})
                return result
            self._note(data)

    def _note(self, event: dict[str, Any]) -> None:
        params = event.get("params", {})
        if event.get("method") == "Runtime.consoleAPICalled":
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            self.console.append(f"console.{params.get('type')}: {args}")
        elif event.get("method") == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text")
            self.console.append(f"uncaught: {text}")

    async def goto(self, url: str, timeout: float = 30.0) -> None:
        """Load `url` and return once its document (and its deferred scripts) loaded."""
        result = await self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise BrowserError(f"cannot load {url}: {result['errorText']}")
        await self.wait_for(
            f"location.href === {json.dumps(url)} && document.readyState === 'complete'",
            timeout,
        )

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        """Poll (a few times a second, at most `timeout` seconds) until `expression` is
        truthy; its value. BrowserError with the page's console when it never is."""
        deadline = time.monotonic() + timeout
        error = ""
        while True:
            try:
                value = await self.evaluate(expression)
            except BrowserError as err:  # (e.g. the element is not there yet)
                value, error = None, str(err)[:300]
            # JavaScript's truthiness: a DOM element comes back as {}, which is found
            if value not in (None, False, 0, ""):
                return value
            if time.monotonic() > deadline:
                raise BrowserError(
                    f"not true after {timeout:g}s: {expression}\nlast error: {error}\n"
                    f"console: {self.console[-10:]}"
                )
            await asyncio.sleep(0.25)

    async def click(self, selector: str) -> None:
        """Click the first element matching `selector` (SVG elements too)."""
        found = await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return false;"
            " e.dispatchEvent(new MouseEvent('click', {bubbles: true})); return true; })()"
        )
        if not found:
            raise BrowserError(f"nothing to click: no element matches {selector!r}")

    async def dom(self) -> str:
        """The document as it is now (after scripts ran)."""
        html: str = await self.evaluate("document.documentElement.outerHTML")
        return html

    async def screenshot(self, path: Path) -> Path:
        data = await self.send("Page.captureScreenshot", {"format": "png"})
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.session is not None:
            await self.session.close()
        if self.proc is not None:
            # the whole group: the browser and its renderer/zygote/utility children
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        shutil.rmtree(self.profile, ignore_errors=True)
