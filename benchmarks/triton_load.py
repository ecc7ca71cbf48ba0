"""A bounded load run against Triton on loopback, beside the embedded runtime, in one run.

    python benchmarks/triton_load.py BUNDLE --data DATA.csv [--threads 4] [--requests 400] [--protocol grpc]
        [--platform python] [--instances 1] [--out DIR]         (make triton-load, after make demo)

It writes the bundle's `--platform python` model repository, starts the real `tritonserver` (nvidia-pytriton's, in
build/triton_env) on 127.0.0.1, and sends `--requests` image+text pairs from `--threads` client threads (one
`fusionrt.client.TritonClient` each; image files' bytes, as a camera app sends them). Then the same pairs, from as
many threads, go to the embedded runtime (`Pipeline.clone()` per thread, ONNX Runtime, the same precision), once with
the text cache off (the same work the server does) and once on. Reports pairs/s and per-request p50/p99 for each, and
how many executions Triton's dynamic batcher made of the requests. The server is stopped at the end."""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import threading
import time
from pathlib import Path

from fusionrt.benchmarks.stats import percentiles, run_together
from fusionrt.data.dataset import LabeledDataset
from fusionrt.runtime.pipeline import Pipeline
from fusionrt.serving.client import TritonClient
from fusionrt.serving.repository import RepositoryOptions, write_repository
from fusionrt.serving.tritonserver import TritonServer

__all__ = ["load_run", "triton_load"]

SERVER_ENV = Path(__file__).resolve().parents[1] / "build" / "triton_env"


def load_run(make_classify, pairs, threads: int, requests: int) -> dict:
    """`threads` workers share `requests` calls over `pairs` (cycled); each worker calls its own `make_classify()`.
    Returns pairs/s over the whole run and the per-request latency percentiles."""
    classifiers = [make_classify() for _ in range(threads)]  # set-up (sessions, connections) is not timed
    latencies: list = []
    lock, errors = threading.Lock(), []
    next_call = iter(range(requests))

    def worker(classify):
        mine = []
        try:
            while True:
                with lock:
                    call = next(next_call, None)
                if call is None:
                    break
                image, text = pairs[call % len(pairs)]
                t0 = time.perf_counter()
                classify(image, text)
                mine.append((time.perf_counter() - t0) * 1e3)
        except Exception as exc:  # noqa: BLE001 - reported after the run
            errors.append(exc)
        with lock:
            latencies.extend(mine)

    seconds = run_together([functools.partial(worker, c) for c in classifiers])
    if errors:
        raise errors[0]
    p = percentiles(latencies)
    return {"requests": len(latencies), "threads": threads, "seconds": round(seconds, 2),
            "pairs_per_s": round(len(latencies) / seconds, 1), "p50_ms": round(p["p50"], 2), "p99_ms": round(p["p99"], 2)}


def triton_load(bundle, data, threads: int = 4, requests: int = 400, protocol: str = "grpc",
                platform: str = "python", instances: int = 1, say=print) -> dict:
    samples = LabeledDataset.read(data).head(64)
    pairs = [(str(s.image), s.text) for s in samples]
    rows = {}
    with tempfile.TemporaryDirectory(prefix="fusionrt-load-") as scratch:
        repo = Path(scratch) / "repo"
        summary = write_repository(bundle, repo, RepositoryOptions(platform=platform, instances=instances))
        say(f"repository: {platform}, {instances} instance(s) per part, precision {summary['precision']}")
        with TritonServer(repo, SERVER_ENV) as server:
            url = server.grpc_url if protocol == "grpc" else server.http_url
            with TritonClient(url, protocol=protocol) as warm:
                for image, text in pairs[:8]:
                    warm.classify(image, text)
            clients = []

            def make_client():
                clients.append(TritonClient(url, protocol=protocol))
                return clients[-1].classify

            rows[f"triton ({protocol}, loopback)"] = load_run(make_client, pairs, threads, requests)
            for c in clients:
                c.close()
            rows[f"triton ({protocol}, loopback)"]["executions"] = _executions(server.http_url)
    for cache in (0, 64):
        with Pipeline.load(bundle, backend="onnxruntime", precision=summary["precision"], text_cache=cache) as pipe:
            for image, text in pairs[:8]:
                pipe.classify(image, text)
            clones = []

            def make_clone():
                clones.append(pipe.clone())
                return clones[-1].classify

            rows[f"embedded (onnxruntime, text cache {'on' if cache else 'off'})"] = \
                load_run(make_clone, pairs, threads, requests)
            for c in clones:
                c.close()
    for name, row in rows.items():
        say(f"{name:42s} {row['pairs_per_s']:7.1f} pairs/s  p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms"
            + (f"  ({row['executions']})" if "executions" in row else ""))
    return {"bundle": str(bundle), "threads": threads, "requests": requests, "platform": platform,
            "instances": instances, "precision": summary["precision"], "rows": rows}


def _executions(http_url: str) -> str:
    import tritonclient.http

    stats = tritonclient.http.InferenceServerClient(http_url).get_inference_statistics()["model_stats"]
    return ", ".join(f"{s['name']} {s['inference_count']} in {s['execution_count']}" for s in stats
                     if s.get("inference_count"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--data", required=True, help="image,text,label CSV: the pairs sent")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--protocol", choices=["http", "grpc"], default="grpc")
    parser.add_argument("--platform", choices=["python", "onnxruntime", "openvino", "tensorrt"], default="python",
                        help="the server here has the Python backend only; the others need Triton's container")
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--out", help="folder for triton_load.json")
    args = parser.parse_args(argv)
    result = triton_load(args.bundle, args.data, args.threads, args.requests, args.protocol, args.platform,
                         args.instances)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "triton_load.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
