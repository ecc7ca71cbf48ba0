"""Events: a scripted video's known label changes reach a real broker (Debian's mosquitto) once each, and a JSONL
file; the retained state; the broker killed and restarted mid-run: frames never stall, events resume."""

import json
import subprocess
import threading
import time

import pytest

from fusionrt.monitor import Site, SiteOptions
from fusionrt.monitor.events import EventDetector
from fusionrt.runtime.errors import InputError
from tests.monitor.conftest import TEXT, colour_frame
from tests.monitor.tools import Broker, Subscriber, tool, wait_until

pytest.importorskip("paho.mqtt.client", reason="MQTT events need paho-mqtt: pip install 'fusionrt[site]'")
pytest.importorskip("prometheus_client", reason="the site needs prometheus_client: pip install 'fusionrt[site]'")

FPS, GOP = 10, 10
SCRIPT = (("red", 20), ("blue", 30), ("green", 25))  # (label, frames): two label changes, at frames 20 and 50


def write_video(path, script=SCRIPT, fps: int = FPS, gop: int = GOP):
    """An H.264 MP4 of coloured frames with a keyframe every `gop` frames, written by ffmpeg from raw BGR."""
    frames = [colour_frame(label, i) for label, n in script for i in range(n)]
    height, width = frames[0].shape[:2]
    subprocess.run([tool("ffmpeg"), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s",
                    f"{width}x{height}", "-r", str(fps), "-i", "-", "-c:v", "libx264", "-g", str(gop),
                    "-keyint_min", str(gop), "-sc_threshold", "0", "-pix_fmt", "yuv420p", str(path)],
                   input=b"".join(f.tobytes() for f in frames), check=True)
    return path


def _changes(script=SCRIPT, debounce: int = 3):
    """(previous, label, frame) of each label change the script makes: held `debounce` frames, so its last frame."""
    out, at = [], 0
    for (before, n), (after, _) in zip(script, script[1:]):
        at += n
        out.append((before, after, at + debounce - 1))
    return out


def test_a_scripted_videos_label_changes_arrive_once_each_on_mqtt_and_in_jsonl(pipe, tmp_path):
    video = write_video(tmp_path / "scripted.mp4")
    with Broker(tmp_path) as broker:
        subscriber = Subscriber(broker.port, "site/test")
        try:
            with Site(pipe, SiteOptions(mqtt=f"127.0.0.1:{broker.port}", topic="site/test",
                                        events=tmp_path / "events.jsonl", debounce=3)) as site:
                results = list(pipe.stream_many({"door": str(video)}, TEXT, policy="all", monitor=site))
                assert len(results) == sum(n for _, n in SCRIPT)
                wait_until(lambda: len(subscriber.events()) >= 3, 15, "three events at the subscriber")
            time.sleep(1.0)  # a duplicate would come now
            everything = subscriber.events()
        finally:
            subscriber.close()
        events = [e for e in everything if e["type"] != "source"]
        assert [(e["type"], e["detail"]) for e in everything if e["type"] == "source"] == [
            ("source", "ended after 75 frames; removed")]  # the file's end is an event of its own
        assert [(e["previous"], e["label"], e["frame"]) for e in events] == _changes()
        assert len({e["id"] for e in events}) == len(events)
        for e in events:
            assert e["type"] == "label_change" and e["source"] == "door" and e["score"] > 0.5
            assert e["video_time"] == pytest.approx(e["frame"] / FPS, abs=1e-3) and e["clip"] is None
        written = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
        assert written == everything  # the file has the same records, in order

        late = Subscriber(broker.port, "site/test", client_id="late", clean=True)  # retained: what it shows now
        try:
            state = wait_until(lambda: [json.loads(p) for t, p, r in late.messages if t == "site/test/door/state" and r],
                               10, "the retained state")
            status = [p for t, p, r in late.messages if t == "site/test/status"]
        finally:
            late.close()
        assert state[-1]["label"] == "green" and state[-1]["source"] == "door"
        assert status == ["offline"]  # the site closed: its will and its goodbye say so


def test_broker_killed_and_restarted_mid_run_no_frame_stalls_and_events_resume(pipe, colour_frames, cameras, tmp_path):
    cam = cameras(colour_frames["red"], period_s=0.02)
    stamps: list = []
    with Broker(tmp_path) as broker:
        subscriber = Subscriber(broker.port, "site/restart")
        try:
            with Site(pipe, SiteOptions(mqtt=f"127.0.0.1:{broker.port}", topic="site/restart", debounce=3)) as site:
                sink = site.sinks[0]
                wait_until(sink.connected.is_set, 10, "the site's connection to the broker")
                with pipe.start_stream_many({"gate": cam}, TEXT, lambda r: stamps.append((time.monotonic(), r.index)),
                                            monitor=site):
                    wait_until(lambda: len(stamps) > 20, 10, "frames before the first change")
                    cam.frames = colour_frames["blue"]
                    wait_until(lambda: len(subscriber.events()) >= 1, 10, "the first event")

                    broker.stop()
                    killed = time.monotonic()
                    cam.frames = colour_frames["green"]  # a change while the broker is away: queued, not lost
                    time.sleep(2.0)
                    during = [s for s in stamps if s[0] > killed]
                    broker.restart()
                    wait_until(lambda: sink.connects >= 2, 20, "the site to reconnect")
                    wait_until(lambda: len(subscriber.events()) >= 2, 20, "the event of the outage, delivered")
                    cam.frames = colour_frames["red"]  # after the restart: events go on
                    wait_until(lambda: len(subscriber.events()) >= 3, 20, "the event after the restart")
                    stopped = time.monotonic()
            time.sleep(0.5)
            events = subscriber.events()
        finally:
            subscriber.close()
    assert [(e["previous"], e["label"]) for e in events] == [("red", "blue"), ("blue", "green"), ("green", "red")]
    assert len({e["id"] for e in events}) == 3
    assert len(during) > 30  # the 2 s outage: frames kept coming (a frame each 20 ms)
    times = [t for t, _ in stamps if killed - 1 < t < stopped]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) < 1.0, max(gaps)  # no stall while the broker was gone or came back


def test_an_absent_broker_never_stalls_the_frames(pipe, colour_frames):
    from tests.monitor.tools import free_port

    with Site(pipe, SiteOptions(mqtt=f"127.0.0.1:{free_port()}", topic="nobody/home", debounce=1)) as site:
        frames = [colour_frames[c][0] for c in ("red", "blue") * 20]
        started = time.monotonic()
        results = list(pipe.stream_many({"cam": frames}, TEXT, policy="all", monitor=site))
        elapsed = time.monotonic() - started
        assert len(results) == 40 and not site.sinks[0].connected.is_set()
        assert elapsed < 10  # 39 events queued for a broker that is not there; no frame waited on it


def test_the_detector_debounces_and_crosses_thresholds_once():
    from types import SimpleNamespace as NS

    def frame(i, label, score):
        return NS(source="s", index=i, prediction=NS(label=label, score=score))

    detector = EventDetector(debounce=2, score_threshold=0.8)
    seq = [("a", 0.9), ("a", 0.9), ("b", 0.9), ("a", 0.9), ("b", 0.9), ("b", 0.7), ("b", 0.6), ("b", 0.9)]
    found = [e for i, (label, score) in enumerate(seq) for e in detector.update(frame(i, label, score))]
    assert [(e["type"], e["frame"]) for e in found] == [("label_change", 5), ("score_below", 6)]
    assert found[0]["previous"] == "a" and found[0]["label"] == "b" and found[1]["threshold"] == 0.8
    with pytest.raises(InputError, match="debounce"):
        EventDetector(debounce=0)
    with pytest.raises(InputError, match="between 0 and 1"):
        EventDetector(score_threshold=1.5)
