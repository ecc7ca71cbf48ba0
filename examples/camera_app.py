"""A camera app with fusionrt embedded: classify every fresh frame together with an operator's note.

    python examples/camera_app.py BUNDLE [--source 0|video.mp4|rtsp://...] [--note "..."]

Press q (or Ctrl-C) to stop. Needs opencv-python (not -headless) for the window.
"""

import argparse
import sys

import cv2

from fusionrt import FusionRTError, Pipeline
from fusionrt.overlay import annotate
from fusionrt.runtime.video import VideoSource


class OperatorNote:
    """The text paired with each frame. It changes rarely, so its features come from the pipeline's cache."""

    def __init__(self, text: str):
        self.text = text

    def __call__(self) -> str:
        return self.text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--source", default="0", help="camera index, video file or stream URL")
    parser.add_argument("--note", default="a street scene seen from a car")
    args = parser.parse_args()

    note = OperatorNote(args.note)
    # Load once: the engines (or ONNX Runtime sessions) stay open for the whole run.
    with Pipeline.load(args.bundle) as pipe, VideoSource(args.source) as video:
        # "latest": if inference falls behind the camera, stale frames are dropped, not queued.
        results = pipe.stream(video, note, policy="latest" if video.live else "all")
        result = None
        try:
            for result in results:
                # result.prediction: label, score, probs; result.latency_ms, .fps, .dropped
                cv2.imshow("fusionrt", annotate(result.frame, result))
                key = cv2.waitKey(1) & 0xFF
                if key == ord("q"):
                    break
                if key == ord("n"):  # a new note: the text branch runs once, then is cached again
                    note.text = input("note> ") or note.text
        except KeyboardInterrupt:
            pass
        finally:
            results.close()  # stop the frame reader before the camera is released
            cv2.destroyAllWindows()
        if result is not None:
            print(f"classified {result.processed} frames at {result.fps:.1f} fps, dropped {result.dropped}")


if __name__ == "__main__":
    try:
        main()
    except FusionRTError as exc:  # a bad bundle or source: one clear line, no traceback
        sys.exit(f"camera_app: {exc}")
