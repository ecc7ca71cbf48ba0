"""A camera app with fusionrt embedded: classify every fresh frame together with an operator's note.

    python examples/camera_app.py BUNDLE [--source 0|video.mp4|rtsp://...] [--note "..."] [--serve 127.0.0.1:8080]

In the window, n asks for a new note; q (or Ctrl-C) stops. Needs opencv-python (not -headless) for the window.
With --serve, a site runs beside it (pip install 'fusionrt[site]'): metrics, health and a live view in a browser.
"""

import argparse
import contextlib
import sys

from fusionrt import FusionRTError, Pipeline
from fusionrt.camera import run_cameras


class OperatorNote:
    """The text paired with each frame. It changes rarely, so its features come from the pipeline's cache."""

    def __init__(self, text: str):
        self.text = text

    def __call__(self, source_id: str) -> str:
        return self.text

    def on_key(self, key: int) -> None:
        if key == ord("n"):  # a new note: the text branch runs once for it, then it is cached too
            self.text = input("note> ") or self.text


def _site(pipe, serve):
    if not serve:
        return contextlib.nullcontext()
    from fusionrt.monitor import Site, SiteOptions

    site = Site(pipe, SiteOptions(serve=serve))
    print(f"live view: {site.url}/")
    return site


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--source", default="0", help="camera index, video file or stream URL")
    parser.add_argument("--note", default="a street scene seen from a car")
    parser.add_argument("--serve", help="HOST:PORT for /metrics, /readyz and the live view at /")
    args = parser.parse_args()

    note = OperatorNote(args.note)
    # Load once: the engines (or ONNX Runtime sessions) stay open for the whole run. A live source drops stale
    # frames ("latest") rather than queueing them; a file gives every frame.
    with Pipeline.load(args.bundle) as pipe, _site(pipe, args.serve) as site:
        summary = run_cameras(pipe, [args.source], note, headless=False, on_key=note.on_key, say=lambda line: None,
                              monitor=site)
    source = next(iter(summary["sources"].values()))
    print(f"classified {source['processed']} frames at {source['fps']:.1f} fps, dropped {source['dropped']}")


if __name__ == "__main__":
    try:
        main()
    except FusionRTError as exc:  # a bad bundle or source: one clear line, no traceback
        sys.exit(f"camera_app: {exc}")
