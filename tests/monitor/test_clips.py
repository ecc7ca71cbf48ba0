"""Clips around events, cut from a generated H.264 file (known GOP) without re-encoding: each starts on a keyframe and
covers the event's window; the folder stays under its size, the oldest clip deleted first, nothing else touched."""

import json
import subprocess

import pytest

from fusionrt.monitor import Site, SiteOptions
from fusionrt.monitor.clips import ClipRecorder
from fusionrt.runtime.errors import InputError
from tests.monitor.conftest import TEXT
from tests.monitor.test_events import FPS, GOP, _changes, write_video
from tests.monitor.tools import tool

pytest.importorskip("prometheus_client", reason="the site needs prometheus_client: pip install 'fusionrt[site]'")


def _frames(path) -> list:
    """(pts seconds, key frame?, picture type) of every video frame, by ffprobe."""
    out = subprocess.run([tool("ffprobe"), "-v", "error", "-select_streams", "v:0", "-show_entries",
                          "frame=pts_time,key_frame,pict_type", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return [(float(f["pts_time"]), f["key_frame"] == 1, f["pict_type"]) for f in json.loads(out)["frames"]]


def _codec(path) -> str:
    return subprocess.run([tool("ffprobe"), "-v", "error", "-select_streams", "v:0", "-show_entries",
                           "stream=codec_name", "-of", "csv=p=0", str(path)], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_each_event_gets_a_clip_that_starts_on_a_keyframe_and_covers_its_window(pipe, tmp_path):
    video = write_video(tmp_path / "scripted.mp4")
    pre, post = 1.5, 2.0
    with Site(pipe, SiteOptions(clips=tmp_path / "clips", pre_s=pre, post_s=post, events=tmp_path / "ev.jsonl")) as site:
        list(pipe.stream_many({"door": str(video)}, TEXT, policy="all", monitor=site))
        assert site.clips.drain(60)
        assert site.clips.failed == 0, site.clips._worker.last_error
    events = [json.loads(line) for line in (tmp_path / "ev.jsonl").read_text().splitlines()]
    changes = [e for e in events if e["type"] == "label_change"]
    assert [e["frame"] for e in changes] == [f for _, _, f in _changes()]
    for event in changes:
        clip = tmp_path / "clips" / event["clip"].rpartition("/")[2]
        assert clip.is_file() and clip.name.startswith("door-") and clip.name.endswith("-label_change.mp4")
        assert _codec(clip) == "h264"  # copied, not re-encoded to another codec
        frames = _frames(clip)
        assert frames[0][1] and frames[0][2] == "I", frames[:3]  # it starts on a keyframe
        at = event["video_time"]
        start = max(0.0, at - pre) // (GOP / FPS) * (GOP / FPS)  # the keyframe at or before the window's start
        covered = len(frames) / FPS
        assert covered >= min(at + post, 7.5) - start - 1.5 / FPS, (len(frames), at, start)  # the whole window
        assert covered <= min(at + post, 7.5) - start + 0.5  # and not the rest of the file (a copy may run a few
        # frames past its end: the packets the last ones reference)
    outside = [e for e in events if e["type"] == "source"]
    assert outside and all(e["clip"] is None for e in outside)  # a source event has no frame: no clip


def test_the_folder_stays_under_its_size_oldest_first_and_only_our_clips(tmp_path):
    video = write_video(tmp_path / "v.mp4")
    folder = tmp_path / "clips"
    folder.mkdir()
    (folder / "holiday.mp4").write_bytes(b"x" * 50_000)  # the user's own file: never ours to delete
    recorder = ClipRecorder(folder, pre_s=0.5, post_s=0.5, max_mb=0.001)
    try:
        first = recorder.request(video, "cam", 1.0, "label_change")
        assert recorder.drain(60)
        second = recorder.request(video, "cam", 5.0, "label_change")
        assert recorder.drain(60)
    finally:
        recorder.close()
    assert recorder.written == [first, second] and recorder.deleted == [first]
    assert not first.exists() and second.exists() and (folder / "holiday.mp4").exists()
    assert not list(folder.glob("*.part.mp4"))


def test_bad_clip_options_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="--pre/--post"):
        ClipRecorder(tmp_path, pre_s=-1)
    with pytest.raises(InputError, match="--clips-max-mb"):
        ClipRecorder(tmp_path, max_mb=0)


def _centre_label(frame) -> str:
    from tests.conftest import COLORS

    import numpy as np

    centre = frame[frame.shape[0] // 2, frame.shape[1] // 2].astype(int)
    return min(COLORS, key=lambda c: int(np.abs(centre - np.asarray(COLORS[c])).sum()))


def test_a_live_streams_event_gets_a_clip_with_pre_roll_from_its_ring(pipe, tmp_path):
    import cv2

    from tests.monitor.tools import VideoStreamServer

    video = write_video(tmp_path / "street.mp4", script=(("red", 50), ("blue", 50)))  # the change 5 s in
    pre, post = 2.0, 2.0
    with VideoStreamServer(video) as server:
        with Site(pipe, SiteOptions(clips=tmp_path / "clips", pre_s=pre, post_s=post,
                                    events=tmp_path / "ev.jsonl")) as site:
            results = list(pipe.stream_many({"street": server.url}, TEXT, monitor=site, max_reconnects=0))
        # closing the site cut the clip that was waiting for its post-roll, if the stream ended first
    assert len(results) > 20
    events = [json.loads(line) for line in (tmp_path / "ev.jsonl").read_text().splitlines()]
    changes = [e for e in events if e["type"] == "label_change"]
    assert [(e["previous"], e["label"]) for e in changes] == [("red", "blue")]
    clip = tmp_path / "clips" / changes[0]["clip"].rpartition("/")[2]
    assert clip.is_file(), sorted(p.name for p in (tmp_path / "clips").iterdir())
    assert _codec(clip) == "h264"
    frames = _frames(clip)
    assert frames[0][1] and frames[0][2] == "I"  # segments start on keyframes, so does the clip
    assert len(frames) / FPS >= pre + post - 1.0, len(frames)  # the window, give or take the stream's buffering
    capture = cv2.VideoCapture(str(clip))
    decoded = []
    while (read := capture.read())[0]:
        decoded.append(read[1])
    capture.release()
    assert _centre_label(decoded[0]) == "red" and _centre_label(decoded[-1]) == "blue"  # before and after it
    assert not list((tmp_path / "clips").glob("*.part.mp4"))
    assert sorted(p.name for p in (tmp_path / "clips").iterdir()) == [clip.name]  # the ring's segments are gone
