"""The site's HTTP server (aiohttp, on a thread and event loop of its own, so a slow viewer never touches the frame
loop): `/metrics`, `/livez`, `/readyz`, `/api/state`, `/mjpeg/<n>` and `/frame/<n>.jpg` (source n's frames), and the
live view at `/`."""

from __future__ import annotations

import asyncio
import json
import threading

from fusionrt.monitor.page import PAGE
from fusionrt.runtime.errors import InputError
from fusionrt.runtime.optional import require

__all__ = ["SiteServer"]

_BOUNDARY = "fusionrt-frame"
START_TIMEOUT_S = 10.0


class SiteServer:
    """`site` gives metrics (`metrics.exposition()`), `readiness()`, `snapshot()`, `source_ids()`, `live` and
    `view_fps`. Started on construction; `port` is the bound one (ask for 0 to get a free one); `close()`."""

    def __init__(self, site, host: str, port: int):
        self.web = require("aiohttp.web", "the site's HTTP server (--serve)")
        self.site, self.host = site, host
        self.port: int | None = None
        self._loop = asyncio.new_event_loop()
        self._closing: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, args=(port,), name="fusionrt-site-http", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise InputError(f"--serve {host}:{port}: the HTTP server did not start within {START_TIMEOUT_S:g} s.")
        if self._error is not None:
            raise InputError(f"--serve {host}:{port}: could not listen there ({self._error}); choose a free port or "
                             "another address.") from self._error

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _app(self):
        web = self.web
        app = web.Application()
        app.add_routes([web.get("/", self._page), web.get("/metrics", self._metrics), web.get("/livez", self._livez),
                        web.get("/readyz", self._readyz), web.get("/api/state", self._state),
                        web.get(r"/mjpeg/{n:\d+}", self._mjpeg), web.get(r"/frame/{n:\d+}.jpg", self._frame)])
        return app

    def _serve(self, port: int) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main(port))
        except BaseException as exc:  # noqa: BLE001 - handed to the constructor, which raises it on the caller's thread
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    async def _main(self, port: int) -> None:
        self._closing = asyncio.Event()
        runner = self.web.AppRunner(self._app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = self.web.TCPSite(runner, self.host, port)
            await site.start()
            self.port = runner.addresses[0][1]
            self._ready.set()
            await self._closing.wait()
        finally:
            await runner.cleanup()

    async def _page(self, request):
        return self.web.Response(text=PAGE, content_type="text/html")

    async def _metrics(self, request):
        body, content_type = await asyncio.to_thread(self.site.metrics.exposition)
        return self.web.Response(body=body, headers={"Content-Type": content_type})

    async def _livez(self, request):
        return self.web.Response(text="ok\n")

    async def _readyz(self, request):
        ready, reasons = self.site.readiness()
        body = {"ready": ready, "reasons": reasons}
        return self.web.Response(text=json.dumps(body) + "\n", status=200 if ready else 503,
                                 content_type="application/json")

    async def _state(self, request):
        return self.web.json_response(self.site.snapshot())

    def _source(self, request) -> str:
        ids, n = self.site.source_ids(), int(request.match_info["n"])
        if n >= len(ids):
            raise self.web.HTTPNotFound(text=f"no source {n}: this site has {len(ids)} (0..{len(ids) - 1}).\n")
        return ids[n]

    async def _frame(self, request):
        encoded = await asyncio.to_thread(self.site.live.jpeg, self._source(request))
        if encoded is None:
            raise self.web.HTTPServiceUnavailable(text="no frame from this source yet\n")
        return self.web.Response(body=encoded[1], content_type="image/jpeg", headers={"Cache-Control": "no-store"})

    async def _mjpeg(self, request):
        source = self._source(request)
        response = self.web.StreamResponse(headers={
            "Content-Type": f"multipart/x-mixed-replace; boundary={_BOUNDARY}", "Cache-Control": "no-store"})
        await response.prepare(request)
        shown, pause = None, 1.0 / self.site.view_fps
        while not self._closing.is_set():
            encoded = await asyncio.to_thread(self.site.live.jpeg, source)
            if encoded is not None and encoded[0] != shown:
                shown, data = encoded
                try:
                    await response.write(f"--{_BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}"
                                         f"\r\n\r\n".encode() + data + b"\r\n")
                except (ConnectionResetError, RuntimeError):
                    break  # the viewer left
            try:
                await asyncio.wait_for(self._closing.wait(), pause)
            except asyncio.TimeoutError:
                pass
        return response

    def close(self) -> None:
        if self._thread.is_alive() and self._closing is not None:
            self._loop.call_soon_threadsafe(self._closing.set)
        self._thread.join(timeout=5.0)
