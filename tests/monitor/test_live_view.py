"""The live view in a real browser: headless Chromium (Debian's), driven by Playwright, sees every source's tile with
its frames, label, score and fps, sees a label change and a stale source, and keeps a screenshot."""

from pathlib import Path

import pytest

from fusionrt.monitor import Site, SiteOptions
from tests.layers import ROOT
from tests.monitor.conftest import TEXT
from tests.monitor.tools import http_get, tool

playwright = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright: pip install "
                                 "playwright (requirements/test.txt)")
pytest.importorskip("aiohttp", reason="the site's server needs aiohttp: pip install 'fusionrt[site]'")

SCREENSHOT = ROOT / "build" / "test-artifacts" / "live-view.png"


def test_chromium_sees_every_tile_a_label_change_and_a_stale_source(pipe, colour_frames, cameras):
    chromium = tool("chromium")
    cams = {colour: cameras(colour_frames[colour], period_s=0.04) for colour in ("red", "green", "blue")}
    with Site(pipe, SiteOptions(serve="127.0.0.1:0", stale_after_s=1.0)) as site, \
            pipe.start_stream_many({f"cam-{c}": cam for c, cam in cams.items()}, TEXT, lambda r: None, monitor=site), \
            playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(site.url)
            page.wait_for_function("document.querySelectorAll('.tile').length === 3", timeout=15_000)
            for n, colour in enumerate(cams):
                tile = page.locator(f"#tile-{n}")
                assert tile.get_attribute("data-source") == f"cam-{colour}"
                page.wait_for_function(f"document.querySelector('#tile-{n} .label').textContent.startsWith('{colour} ')",
                                       timeout=15_000)
                page.wait_for_function(f"document.querySelector('#tile-{n} img').naturalWidth > 0", timeout=15_000)
                assert tile.locator(".meta").inner_text().endswith(" fps")
            assert page.locator("#fps").inner_text() != "-"
            page.wait_for_function("document.getElementById('ready').textContent === 'ready'", timeout=15_000)

            cams["red"].frames = colour_frames["blue"]  # the first camera now sees blue
            page.wait_for_function("document.querySelector('#tile-0 .label').textContent.startsWith('blue ')",
                                   timeout=15_000)
            cams["green"].stall.set()  # the second stops delivering
            page.wait_for_function("document.querySelector('#tile-1').classList.contains('stale')", timeout=15_000)
            assert page.locator("#tile-1 .flag").is_visible() and not page.locator("#tile-0 .flag").is_visible()
            assert "cam-green" in page.locator("#ready").inner_text()
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and SCREENSHOT.stat().st_size > 10_000


def test_frames_and_unknown_tiles(pipe, colour_frames, cameras):
    cam = cameras(colour_frames["red"])
    with Site(pipe, SiteOptions(serve="127.0.0.1:0")) as site, \
            pipe.start_stream_many({"only": cam}, TEXT, lambda r: None, monitor=site):
        from tests.monitor.tools import wait_until

        status, body = wait_until(lambda: (r := http_get(f"{site.url}/frame/0.jpg", raw=True))[0] == 200 and r, 10,
                                  "the first frame's JPEG")
        import cv2
        import numpy as np

        image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == colour_frames["red"][0].shape  # a camera's own frame, JPEG-encoded
        assert http_get(f"{site.url}/frame/3.jpg")[0] == 404
        assert http_get(f"{site.url}/mjpeg/3")[0] == 404
        page_status, html = http_get(site.url)
        assert page_status == 200 and "<img" not in html.split("<script>")[0]  # tiles are made from /api/state
