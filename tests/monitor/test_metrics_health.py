"""/metrics under a real Prometheus (Debian's), /livez and /readyz, while the stream runs and when a source stalls."""

import math
import subprocess
import time
import urllib.parse

import pytest

from fusionrt.monitor import Site, SiteOptions
from tests.monitor.tools import Server, free_port, http_get, http_json, tool, wait_until

pytest.importorskip("prometheus_client", reason="the site's metrics need prometheus_client: pip install 'fusionrt[site]'")
pytest.importorskip("aiohttp", reason="the site's server needs aiohttp: pip install 'fusionrt[site]'")


def _query(prom: str, expr: str) -> list:
    answer = http_json(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def _value(prom: str, expr: str, **labels) -> float | None:
    for series in _query(prom, expr):
        if all(series["metric"].get(k) == v for k, v in labels.items()):
            value = float(series["value"][1])
            return value if math.isfinite(value) else None
    return None


def test_prometheus_scrapes_fps_and_p99_and_a_stalled_source_turns_unready(pipe, colour_frames, cameras, tmp_path):
    prometheus = tool("prometheus")
    promtool = tool("promtool")
    red, blue = cameras(colour_frames["red"]), cameras(colour_frames["blue"])
    with Site(pipe, SiteOptions(serve="127.0.0.1:0", stale_after_s=1.0)) as site:
        assert http_get(f"{site.url}/readyz")[0] == 503  # no stream yet
        handle = pipe.start_stream_many({"cam-red": red, "cam-blue": blue}, "a shape", lambda r: None, monitor=site)
        prom_port = free_port()
        (tmp_path / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"scrape_configs: [{{job_name: fusionrt, static_configs: [{{targets: ['127.0.0.1:{site.server.port}']}}]}}]\n")
        with handle, Server([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                            tmp_path / "prometheus.log"):
            prom = f"http://127.0.0.1:{prom_port}"
            wait_until(lambda: http_get(f"{site.url}/readyz")[0] == 200, 10, "/readyz 200 with both sources running")
            fps = wait_until(lambda: _value(prom, "fusionrt_source_fps", source="cam-red"), 30,
                             "Prometheus to hold cam-red's fps")
            assert 5 < fps < 60  # a frame every 20 ms, give or take the machine
            wait_until(lambda: (n := _value(prom, 'count_over_time(fusionrt_source_fps{source="cam-red"}[5s])'))
                       and n >= 5, 30, "five scrapes in the rate's window")
            rate = _value(prom, "rate(fusionrt_source_frames_classified_total[5s])", source="cam-red")
            mean_fps = _value(prom, "avg_over_time(fusionrt_source_fps[5s])", source="cam-red")
            assert rate == pytest.approx(mean_fps, rel=0.5)  # the counter and the gauge tell one story
            p99 = wait_until(lambda: _value(prom, 'histogram_quantile(0.99, sum by (le) '
                                            '(rate(fusionrt_inference_seconds_bucket{branch="total"}[10s])))'), 30,
                             "a p99 of the calls' latency")
            assert 0 < p99 < 5.0
            frame_p99 = _value(prom, "histogram_quantile(0.99, sum by (le, source) "
                               "(rate(fusionrt_frame_latency_seconds_bucket[10s])))", source="cam-blue")
            assert frame_p99 is not None and frame_p99 > 0
            assert _value(prom, "fusionrt_model_info", backend="onnxruntime") == 1.0

            blue.stall.set()
            status, body = wait_until(lambda: (r := http_get(f"{site.url}/readyz"))[0] == 503 and r, 10,
                                      "/readyz 503 once cam-blue stalls")
            assert "cam-blue" in body and "cam-red" not in body
            assert http_get(f"{site.url}/livez")[0] == 200
            first = wait_until(lambda: (v := _value(prom, "fusionrt_source_last_frame_age_seconds",
                                                    source="cam-blue")) and v > 1.0 and v, 15, "cam-blue's age > 1 s")
            later = wait_until(lambda: (v := _value(prom, "fusionrt_source_last_frame_age_seconds",
                                                    source="cam-blue")) and v > first + 1.0 and v, 15,
                               "cam-blue's age to keep rising")
            assert later > first
            red_age = _value(prom, "fusionrt_source_last_frame_age_seconds", source="cam-red")
            assert red_age is not None and red_age < 1.0  # the other source is unaffected
            stalled_fps = _value(prom, "fusionrt_source_fps", source="cam-blue")
            assert stalled_fps is not None and stalled_fps < fps / 2  # a silent source's fps falls
            blue.stall.clear()
            wait_until(lambda: http_get(f"{site.url}/readyz")[0] == 200, 10, "/readyz 200 again once cam-blue is back")

            exposition = http_get(f"{site.url}/metrics")[1]
            lint = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True, text=True)
            assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), lint
        for family in ("fusionrt_source_frames_received_total", "fusionrt_source_frames_dropped_total",
                       "fusionrt_source_reconnects_total", "fusionrt_batch_size_bucket", "fusionrt_text_cache_hits_total",
                       'branch="image"', 'branch="head"'):
            assert family in exposition, family


def test_readyz_names_a_source_that_never_delivered_and_one_that_ended(pipe, colour_frames, cameras):
    silent = cameras(colour_frames["red"])
    silent.stall.set()
    with Site(pipe, SiteOptions(serve="127.0.0.1:0", stale_after_s=0.5)) as site:
        with pipe.start_stream_many({"never": silent, "file": colour_frames["green"][:3]}, "a shape", lambda r: None,
                                    monitor=site, policy="all"):
            status, body = wait_until(lambda: (r := http_get(f"{site.url}/readyz"))[0] == 503 and "ended" in r[1]
                                      and "never" in r[1] and r, 10, "/readyz naming both")
            assert "source never: no frame yet" in body and "source file: ended" in body
            state = http_json(f"{site.url}/api/state")
            by_id = {s["source"]: s for s in state["sources"]}
            assert by_id["file"]["processed"] == 3 and by_id["file"]["ended"] and by_id["never"]["received"] == 0
            assert by_id["never"]["stale"] and by_id["file"]["label"] == "green"


def test_a_closed_pipeline_is_not_ready(tiny_bundle):
    from fusionrt.runtime.pipeline import Pipeline

    pipeline = Pipeline.load(tiny_bundle, backend="onnxruntime", tune=False)
    with Site(pipeline, SiteOptions(serve="127.0.0.1:0")) as site:
        pipeline.close()
        status, body = http_get(f"{site.url}/readyz")
        assert status == 503 and "closed" in body


def test_serve_on_a_taken_port_is_a_clear_error(pipe):
    with Site(pipe, SiteOptions(serve="127.0.0.1:0")) as site:
        from fusionrt.runtime.errors import InputError

        with pytest.raises(InputError, match="could not listen there"):
            Site(pipe, SiteOptions(serve=f"127.0.0.1:{site.server.port}"))
