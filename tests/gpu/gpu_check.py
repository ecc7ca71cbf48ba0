"""One GPU check, under 5 minutes: the cuda-python layer (streams, events, pinned copies, graph capture,
borrowed caller streams); fusionrt's TensorRT runner itself on real CUDA, with copy engines standing in for
TensorRT (tests/gpu/copy_engine.py: a test double, so it lives here, outside the installed package); then one stream vs two streams for the ResNet-50 + BERT-base branches with
PyTorch CUDA FP16 as the engine (TensorRT is not installable on the lent machines).

    python tests/gpu/gpu_check.py [--out DIR] [--iters 50]

Prints a short table; writes gpu_check.json under --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np


def _use_checkout() -> None:
    """Import fusionrt from this checkout without installing it: its folders map onto packages as in setup.py; the
    copy engines come from this folder (tests.gpu)."""
    import importlib.util

    root = Path(__file__).resolve().parents[2]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    for name, folder in (("fusionrt", root / "fusionrt"), ("fusionrt.runtime", root / "runtime")):
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                          submodule_search_locations=[str(folder)])
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)


def check_cuda_layer(cu) -> dict:
    """Pinned H2D -> D2D -> D2H on our streams, verified; event-timed bandwidth; graph capture + replay."""
    out = {"devices": cu.device_count()}
    cc, name = cu.compute_capability(0)
    out.update(gpu=name, compute_capability=f"{cc[0]}.{cc[1]}")
    n = 64 << 20  # 256 MiB of float32
    rng = np.random.default_rng(0)
    with cu.Stream() as s1, cu.Stream() as s2, cu.PinnedBuffer((n,), np.float32) as src, \
            cu.PinnedBuffer((n,), np.float32) as dst, cu.DeviceBuffer(n * 4) as d1, cu.DeviceBuffer(n * 4) as d2, \
            cu.Event() as e0, cu.Event() as e1, cu.Event() as e2:
        src.array[:] = rng.standard_normal(n, dtype=np.float32)
        dst.array[:] = np.nan  # poison: every element must be written
        e0.record(s1)
        d1.copy_from_host(src, s1)
        e1.record(s1)
        s2.wait(e1)  # the D2D copy on the second stream waits for the upload on the first
        d2.copy_from_device(d1, s2)
        d2.copy_to_host(dst, s2)
        e2.record(s2)
        e2.synchronize()
        out["roundtrip_equal"] = bool(np.array_equal(src.array, dst.array))
        out["h2d_GBps"] = round(src.nbytes / e1.elapsed_ms(e0) / 1e6, 1)
        # Graph capture of upload + copy + download, replayed on fresh data.
        dst.array[:] = np.nan

        def enqueue():
            d1.copy_from_host(src, s1)
            d2.copy_from_device(d1, s1)
            d2.copy_to_host(dst, s1)

        with cu.Graph(s1, enqueue) as graph:
            src.array[:] = rng.standard_normal(n, dtype=np.float32)
            graph.launch()
            s1.synchronize()
            out["graph_replay_equal"] = bool(np.array_equal(src.array, dst.array))
    return out


def borrowed_stream_check(cu, torch) -> dict:
    """A caller's stream (torch's, and CuPy's when present) used by our layer without taking ownership."""
    out = {}
    ts = torch.cuda.Stream()
    x = torch.randn(1 << 20, device="cuda")
    with cu.PinnedBuffer((1 << 20,), np.float32) as host:
        with torch.cuda.stream(ts):
            y = x * 2
        dev_ptr = y.data_ptr()
        borrowed = cu.Stream(ts.cuda_stream)
        rt = cu.cudart()
        cu.cuda_call(rt.cudaMemcpyAsync(host.ptr, dev_ptr, 4 << 20, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, borrowed.handle))
        borrowed.synchronize()
        borrowed.close()  # borrowed: must not destroy torch's stream
        torch.cuda.synchronize()
        out["torch_stream_borrowed"] = bool(np.allclose(host.array, (x * 2).cpu().numpy()))
    try:
        import cupy

        cs = cupy.cuda.Stream(non_blocking=True)
        with cu.Stream(cs.ptr) as borrowed:
            borrowed.synchronize()
        cs.synchronize()  # still alive after our close()
        out["cupy_stream_borrowed"] = True
    except ImportError:
        out["cupy_stream_borrowed"] = "cupy not installed"
    return out


def check_fused_path(cu, head_stream: int | None = None, calls: int = 30) -> dict:
    """fusionrt's TensorRT runner on real CUDA, with copy engines standing in for TensorRT: both branches on their
    own streams, the head on `head_stream` (a caller's) after both, then the cached-text path (image branch and
    head), eager and with CUDA graphs. Each shape runs three times in a row (eager, captured, replayed), full calls
    then cached-text ones; every call gets new data and its result is compared byte for byte; the event timings
    must read back."""
    import tempfile

    from fusionrt.runtime.backends.tensorrt import TensorRTBackend, TensorRTOptions
    from tests.gpu.copy_engine import WIRING, expected_bytes, logits_bytes, open_copy_backends

    rng, out = np.random.default_rng(1), {}
    with tempfile.TemporaryDirectory() as folder:
        backends = open_copy_backends(cu, Path(folder), head_stream)
        try:
            for mode in ("eager", "cuda_graphs"):
                fusion = TensorRTBackend.executor(backends, WIRING, TensorRTOptions(cuda_graphs=mode == "cuda_graphs"),
                                                  True)
                equal, timings_read, host_us, captured = True, True, [], set()
                try:
                    for call in range(calls):
                        batch, cached = (1, 8, 32)[call // 6 % 3], call % 6 >= 3  # 3 full calls, then 3 cached-text
                        pixels = rng.standard_normal((batch, 12), dtype=np.float32)
                        tokens = {"input_ids": rng.integers(0, 30522, (batch, 8)),
                                  "attention_mask": rng.integers(0, 2, (batch, 8))}
                        given = np.ascontiguousarray(expected_bytes(pixels, tokens)[:, 48:].view(np.float32)) \
                            if cached else None  # what the text branch gives: its inputs' bytes
                        start = time.perf_counter()
                        result = fusion.run(pixels, tokens, given)
                        host_us.append((time.perf_counter() - start) * 1e6)
                        equal &= bool(np.array_equal(logits_bytes(result.logits), expected_bytes(pixels, tokens)))
                        if fusion.graph is not None:
                            captured.add(" ".join(map(str, fusion.graph_key)))
                        timings = result.timings
                        marks = (timings.image_ms, timings.text_ms, timings.branches_ms, timings.head_ms)
                        timings_read &= all(np.isfinite(m) and m >= -1e-3 for m in marks)
                    out[mode] = {"results_equal": equal, "timings_read": timings_read, "graphs": sorted(captured),
                                 "call_us_median": round(statistics.median(host_us[6:] or host_us), 1)}
                finally:
                    fusion.close()
        finally:
            for backend in backends.values():
                backend.close()
    return out


def build_models(torch):
    import torchvision
    import transformers

    image = torchvision.models.resnet50(weights=None)
    image.fc = torch.nn.Identity()
    bert = transformers.BertModel(transformers.BertConfig())  # BERT-base: 12 layers, 768 hidden
    head = torch.nn.Sequential(torch.nn.Linear(2048 + 768, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
    return [m.half().cuda().eval() for m in (image, bert, head)]


def time_branches(torch, cu, models, batch: int, seq: int, iters: int) -> dict:
    image, bert, head = models
    g = torch.Generator(device="cuda").manual_seed(batch)
    pixels = torch.randn(batch, 3, 224, 224, device="cuda", generator=g).half()
    ids = torch.randint(1000, 30000, (batch, seq), device="cuda", generator=g)
    mask = torch.ones_like(ids)

    def text(ids, mask):
        return bert(input_ids=ids, attention_mask=mask).last_hidden_state.mean(1)

    results = {}
    with cu.Stream() as a, cu.Stream() as b, cu.Event() as start, cu.Event() as end, cu.Event() as text_done:
        sa, sb = torch.cuda.ExternalStream(a.ptr), torch.cuda.ExternalStream(b.ptr)

        def one_stream():
            with torch.cuda.stream(sa):
                return head(torch.cat([image(pixels), text(ids, mask)], 1))

        def two_streams():
            with torch.cuda.stream(sb):
                t = text(ids, mask)
            text_done.record(b)
            with torch.cuda.stream(sa):
                i = image(pixels)
            a.wait(text_done)  # cudaStreamWaitEvent: the head waits for both branches
            with torch.cuda.stream(sa):
                return head(torch.cat([i, t], 1))

        with torch.inference_mode():
            for name, fn in (("one_stream", one_stream), ("two_streams", two_streams)):
                for _ in range(5):
                    fn()
                torch.cuda.synchronize()
                times = []
                for _ in range(iters):
                    start.record(a)
                    b.wait(start)
                    logits = fn()
                    end.record(a)
                    end.synchronize()
                    times.append(end.elapsed_ms(start))
                results[name] = {"median_ms": statistics.median(times), "p90_ms": float(np.percentile(times, 90)),
                                 "logits": logits.float().cpu()}
            # CUDA graph of the two-stream pipeline: the second stream forks from and joins the capture stream.
            try:
                static = torch.cuda.CUDAGraph()
                cap = torch.cuda.Stream()
                with torch.cuda.stream(cap):
                    for _ in range(3):
                        two_streams()
                cap.synchronize()
                side = torch.cuda.Stream()
                with torch.cuda.graph(static, stream=cap):
                    side.wait_stream(cap)
                    with torch.cuda.stream(side):
                        t = text(ids, mask)
                    i = image(pixels)
                    cap.wait_stream(side)
                    graph_logits = head(torch.cat([i, t], 1))
                times = []
                for _ in range(iters):
                    with torch.cuda.stream(sa):  # replay() launches on the current stream: time it on that one
                        start.record(a)
                        static.replay()
                        end.record(a)
                    end.synchronize()
                    times.append(end.elapsed_ms(start))
                results["two_streams_graph"] = {"median_ms": statistics.median(times),
                                                "p90_ms": float(np.percentile(times, 90)), "logits": graph_logits.float().cpu()}
            except Exception as exc:  # report, do not hide: the table says what failed
                results["two_streams_graph"] = {"error": f"{type(exc).__name__}: {exc}"}
    ref = results["one_stream"]["logits"]
    for r in results.values():
        if "logits" in r:
            r["max_abs_diff_vs_one_stream"] = float((r.pop("logits") - ref).abs().max())
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=".")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--seq", type=int, default=128)
    args = parser.parse_args()
    t0 = time.time()
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None or not torch.cuda.is_available():
        print("gpu_check needs an NVIDIA GPU with a CUDA build of PyTorch; none is visible here.", file=sys.stderr)
        return 2
    _use_checkout()
    from fusionrt.runtime import cuda as cu

    report = {"python": platform.python_version(), "torch": torch.__version__}
    # One lent GPU session may be all there is: a section that fails is reported and the others still run.
    caller = torch.cuda.Stream()  # the head runs on a caller's stream, as in an app that already uses torch
    from tests.gpu.gpu_contracts import check_contracts

    sections = {
        "cuda_layer": lambda: check_cuda_layer(cu),
        "borrowed_streams": lambda: borrowed_stream_check(cu, torch),
        "fused_path": lambda: check_fused_path(cu, caller.cuda_stream),
        "contracts": lambda: check_contracts(cu, torch, args.out),
        "branches": lambda: time_all_branches(torch, cu, args),
    }
    for name, run in sections.items():
        try:
            report[name] = run()
        except Exception:
            report[name] = {"error": traceback.format_exc()}
            print(f"{name} FAILED:\n{report[name]['error']}", file=sys.stderr)
    report["seconds"] = round(time.time() - t0, 1)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print_report(report, args)
    return 1 if any("error" in report[name] for name in sections) else 0


def time_all_branches(torch, cu, args) -> dict:
    torch.backends.cudnn.benchmark = True
    models = build_models(torch)
    return {b: time_branches(torch, cu, models, int(b), args.seq, args.iters) for b in args.batches.split(",")}


def print_report(report: dict, args) -> None:
    c, fused = report["cuda_layer"], report["fused_path"]
    if "error" not in c:
        print(f"\n{c['gpu']} (sm {c['compute_capability']}), torch {report['torch']}")
        print(f"cuda-python layer: pinned/D2D roundtrip equal={c['roundtrip_equal']}, graph replay equal="
              f"{c['graph_replay_equal']}, H2D {c['h2d_GBps']} GB/s; borrowed streams {report['borrowed_streams']}")
    if "error" not in fused:
        print("fusionrt TensorRT runner on copy engines (two streams, head on a torch stream): "
              + "; ".join(f"{mode}: results equal={r['results_equal']}, timings read={r['timings_read']}, "
                          f"{r['call_us_median']} us/call, graphs {r['graphs']}" for mode, r in fused.items()))
    if "error" not in report.get("contracts", {"error": "did not run"}):
        print("CUDA / TensorRT contracts: " + "; ".join(f"{k}: {v}" for k, v in report["contracts"].items()))
    if "error" in report["branches"]:
        print(f"\ntotal {report['seconds']} s")
        return
    print(f"\nResNet-50 + BERT-base (seq {args.seq}) + head, PyTorch CUDA FP16, median latency (ms), {args.iters} iters")
    print("| batch | one stream | two streams | two streams + CUDA graph | speed-up (2 streams) | pairs/s (best) |")
    print("|---|---|---|---|---|---|")
    for b, r in report["branches"].items():
        one, two, graph = r["one_stream"]["median_ms"], r["two_streams"]["median_ms"], r["two_streams_graph"].get("median_ms")
        best = min(x for x in (one, two, graph) if x)
        gtext = f"{graph:.3f}" if graph else r["two_streams_graph"]["error"][:60]
        print(f"| {b} | {one:.3f} | {two:.3f} | {gtext} | {one / two:.2f}x | {int(b) * 1000 / best:.0f} |")
    print(f"\ntotal {report['seconds']} s")


if __name__ == "__main__":
    sys.exit(main())
