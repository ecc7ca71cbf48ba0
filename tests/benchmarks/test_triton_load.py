"""benchmarks/triton_load.py: the bounded load run counts every request once, over all threads, and its Triton and
embedded rows come from one run (the real server on loopback, as in tests/serving)."""

import threading

import pytest

from fusionrt.benchmarks.triton_load import load_run


def test_load_run_makes_exactly_the_requests_asked_over_all_threads():
    seen, lock = [], threading.Lock()

    def make():
        def classify(image, text):
            with lock:
                seen.append((image, threading.get_ident()))
        return classify

    row = load_run(make, [("a", "x"), ("b", "y"), ("c", "z")], threads=3, requests=31)
    assert row["requests"] == 31 and len(seen) == 31
    assert sorted(i for i, _ in seen).count("a") == 11  # the pairs are cycled in order
    assert row["pairs_per_s"] > 0 and row["p50_ms"] <= row["p99_ms"]


def test_load_run_reports_a_failing_request():
    def make():
        def classify(image, text):
            raise RuntimeError("server went away")
        return classify

    with pytest.raises(RuntimeError, match="went away"):
        load_run(make, [("a", "x")], threads=2, requests=4)


def test_triton_and_embedded_rows_in_one_run(calibrated):
    from tests.serving.test_triton_server import _server_can_run

    pytest.importorskip("tritonclient.grpc", reason="needs fusionrt[triton]")
    _server_can_run()
    from fusionrt.benchmarks.triton_load import triton_load

    result = triton_load(calibrated[0], calibrated[3], threads=2, requests=12, say=lambda _: None)
    rows = result["rows"]
    assert len(rows) == 3 and all(r["requests"] == 12 for r in rows.values())
    triton = next(r for name, r in rows.items() if name.startswith("triton"))
    assert "fusion_head" in triton["executions"]
