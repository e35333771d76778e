"""The console page's web server: aiohttp on a thread of its own, with its own asyncio loop.

GET / serves the page, /console.js its script; /ws is the page's websocket: JSON text messages
both ways (the page's controls, buttons and measurements in; state, answers and motion events
out) and, out, the endoscope's H.264 access units as binary messages (FRAME_HEADER, then the
Annex B bytes as the bridge delivered them: the browser decodes them with WebCodecs). The page
and the websocket need the session's token (?token=...), whatever address the server is bound to;
a websocket opened from another origin is refused.

A page that cannot keep up loses video frames, never commands or state: each page has a short
queue, and an eye whose frame did not fit waits for its next keyframe (the page never decodes a
frame whose reference it lacks).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import struct
import threading
from collections.abc import Callable
from importlib import resources
from itertools import count
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web

from telesurg.console.options import page_url

#: Before each frame: eye (0 left, 1 right), 1 if a keyframe, 6 bytes of padding, then the
#: capture stamp in ms since the epoch (a float64, which JavaScript reads without BigInt).
FRAME_HEADER = struct.Struct("<BB6xd")
QUEUE_FRAMES = 6  # frames a page may have waiting before its eye skips to a keyframe
STATIC = resources.files("telesurg.console") / "static"
START_TIMEOUT_S = 10.0


class ConsoleServerError(RuntimeError):
    """The server could not start (the address is taken, not ours...): the message says why."""


class Page:
    """One connected page: its websocket and what waits to be sent to it."""

    def __init__(self, number: int, socket: web.WebSocketResponse):
        self.number = number
        self.socket = socket
        self.queue: asyncio.Queue = asyncio.Queue()
        self.frames_queued = 0
        self.wants_keyframe = [True, True]  # per eye: skip until a keyframe

    def offer_frame(self, eye: int, keyframe: bool, payload: bytes) -> bool:
        """Queue a frame if the page can take it; False if the eye now waits for a keyframe."""
        if keyframe:
            self.wants_keyframe[eye] = False
        if self.wants_keyframe[eye]:
            return True
        if self.frames_queued >= QUEUE_FRAMES:
            self.wants_keyframe[eye] = True
            return False
        self.frames_queued += 1
        self.queue.put_nowait(("frame", payload))
        return True


class ConsoleServer:
    """Serves the page. on_message(page_number, message) is called on the server's thread for
    each JSON object a page sends; on_connect(page_number) when a page connects (returns the
    first message for it); on_disconnect(page_number) when it goes."""

    def __init__(self, host: str, port: int, token: str,
                 on_message: Callable[[int, dict], None],
                 on_connect: Callable[[int], dict],
                 on_disconnect: Callable[[int], None]):
        self.host, self.port, self.token = host, port, token
        self._on_message, self._on_connect = on_message, on_connect
        self._on_disconnect = on_disconnect
        self._pages: dict[int, Page] = {}
        self._numbers = count(1)
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._run, name="console-web", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None
        self.frames_skipped = 0

    # -- life cycle (any thread) --------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(START_TIMEOUT_S):
            raise ConsoleServerError(f"the web server did not start within {START_TIMEOUT_S:g} s")
        if self._error is not None:
            raise ConsoleServerError(f"cannot serve on {self.host}:{self.port}: "
                                     f"{getattr(self._error, 'strerror', None) or self._error}")

    def url(self) -> str:
        return page_url(self.host, self.port, self.token)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=5.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5.0)

    # -- to the pages (any thread) ------------------------------------------------------------

    @property
    def has_pages(self) -> bool:
        """Whether a page is connected (what it sees may wait until one is)."""
        return bool(self._pages)

    def send(self, message: dict, page: int | None = None) -> None:
        """Send a JSON message to one page, or to all."""
        if self._loop.is_closed():  # stopped: there are no pages
            return
        text = json.dumps(message)
        self._loop.call_soon_threadsafe(self._queue_text, text, page)

    def send_frame(self, eye: int, keyframe: bool, capture_ms: float, data: bytes) -> None:
        if self._loop.is_closed():
            return
        payload = FRAME_HEADER.pack(eye, int(keyframe), capture_ms) + data
        self._loop.call_soon_threadsafe(self._queue_frame, eye, keyframe, payload)

    # -- the server's thread -------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as error:  # reported by start()
            self._error = error
            self._loop.close()
            self._started.set()
            return
        self._started.set()
        self._loop.run_forever()
        self._loop.close()

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_get("/", self._page)
        app.router.add_get("/console.js", self._script)
        app.router.add_get("/ws", self._websocket)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = self._runner.addresses[0][1]  # the one picked, if port 0 asked for any

    async def _shutdown(self) -> None:
        for page in list(self._pages.values()):
            await page.socket.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def _authorised(self, request: web.Request) -> bool:
        given = request.query.get("token", "")
        return hmac.compare_digest(given.encode(), self.token.encode())

    async def _page(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request):
            raise web.HTTPForbidden(text="telesurg console: this page needs the session's token "
                                         "(the URL `telesurg console` printed)\n")
        return web.Response(text=(STATIC / "index.html").read_text(), content_type="text/html",
                            headers={"Cache-Control": "no-store"})

    async def _script(self, _request: web.Request) -> web.StreamResponse:
        return web.Response(text=(STATIC / "console.js").read_text(),
                            content_type="application/javascript",
                            headers={"Cache-Control": "no-store"})

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request):
            raise web.HTTPForbidden(text="telesurg console: the session's token is needed\n")
        origin = request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != request.host:
            raise web.HTTPForbidden(text=f"telesurg console: origin {origin} refused\n")
        socket = web.WebSocketResponse(heartbeat=5.0, max_msg_size=1 << 20)
        await socket.prepare(request)
        page = Page(next(self._numbers), socket)
        self._pages[page.number] = page
        writer = asyncio.ensure_future(self._write(page))
        try:
            page.queue.put_nowait(("text", json.dumps(self._on_connect(page.number))))
            async for message in socket:
                if message.type != WSMsgType.TEXT:
                    continue
                try:
                    fields = json.loads(message.data)
                except ValueError:
                    fields = None
                if not isinstance(fields, dict):
                    page.queue.put_nowait(("text", json.dumps(
                        {"type": "error", "text": "not a JSON object"})))
                    continue
                self._on_message(page.number, fields)
        finally:
            del self._pages[page.number]
            writer.cancel()
            self._on_disconnect(page.number)
        return socket

    async def _write(self, page: Page) -> None:
        while True:
            kind, payload = await page.queue.get()
            if kind == "frame":
                page.frames_queued -= 1
                await page.socket.send_bytes(payload)
            else:
                await page.socket.send_str(payload)

    def _queue_text(self, text: str, number: int | None) -> None:
        for page in self._pages.values():
            if number is None or page.number == number:
                page.queue.put_nowait(("text", text))

    def _queue_frame(self, eye: int, keyframe: bool, payload: bytes) -> None:
        for page in self._pages.values():
            if not page.offer_frame(eye, keyframe, payload):
                self.frames_skipped += 1
