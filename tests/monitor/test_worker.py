"""The site's hand-off thread and its small parsers: a full queue drops and counts, a failing job leaves the rest."""

import threading

import pytest

from fusionrt.monitor.worker import Worker
from fusionrt.runtime.errors import InputError


def test_a_full_queue_drops_and_counts_and_a_failing_job_does_not_stop_the_rest():
    gate, done, errors = threading.Event(), [], []

    def handle(job):
        gate.wait(10)
        if job == "bad":
            raise OSError("disk full")
        done.append(job)
    worker = Worker("test-worker", handle, size=2, on_error=errors.append)
    try:
        assert worker.submit("first")  # taken by the thread, which waits on the gate
        threading.Event().wait(0.2)
        assert worker.submit("bad") and worker.submit("second")
        assert not worker.submit("third")  # the queue (2) is full: refused at once, never waited for
        assert worker.dropped == 1
        gate.set()
        assert worker.drain(10)
    finally:
        worker.close()
    assert done == ["first", "second"] and worker.failed == 1 and errors == ["OSError: disk full"]


@pytest.mark.parametrize("prefix", ["", "a/#", "site/+/x", "/lead", "trail/"])
def test_a_bad_topic_prefix_is_a_clear_error(prefix):
    pytest.importorskip("paho.mqtt.client", reason="MQTT events need paho-mqtt: pip install 'fusionrt[site]'")
    from fusionrt.monitor.mqtt import MqttSink

    with pytest.raises(InputError, match="--topic"):
        MqttSink("127.0.0.1:1883", prefix)


@pytest.mark.parametrize("value, expected", [("127.0.0.1:1884", ("127.0.0.1", 1884)), ("broker", ("broker", 1883)),
                                             ("[::1]:8080", ("::1", 8080))])
def test_addresses(value, expected):
    from fusionrt.monitor.address import parse_address

    assert parse_address(value, "--mqtt", 1883) == expected


@pytest.mark.parametrize("value", ["host:port", ":80", "host:70000"])
def test_bad_addresses(value):
    from fusionrt.monitor.address import parse_address

    with pytest.raises(InputError, match="HOST:PORT"):
        parse_address(value, "--mqtt", 1883)


def test_an_events_file_in_a_missing_folder_is_refused_before_any_frame(tmp_path):
    from fusionrt.monitor.events import JsonlSink

    with pytest.raises(InputError, match="folder does not exist"):
        JsonlSink(tmp_path / "nope" / "events.jsonl")
