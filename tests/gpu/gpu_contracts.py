"""The GPU check's contract section: the CUDA and TensorRT rules the runner must keep, on a real GPU, with copy
engines standing in for TensorRT (`copy_engine.py`). Each entry of the result is True, or what went wrong.

- an external event record outside a capture: the driver refuses it, fusionrt's layer never asks for one;
- frames written by torch and CuPy on the legacy, the per-thread and a non-blocking stream, each after a slow
  kernel: read only once written (byte for byte);
- copy engines that sleep on their stream: every result right, and the two branches overlap;
- CUDA graphs over shapes A, A, B, B, A, B: every answer the eager one;
- a capture that fails: the shape runs eagerly, right, and no CUDA error is left pending;
- sync=False then close(), and two clones on two threads (200 calls each): right, under compute-sanitizer where it
  is installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np

__all__ = ["check_contracts"]

SPIN_NS = 2_000_000  # 2 ms of spinning on a stream: longer than any of these copies


def _inputs(rng, batch: int):
    pixels = rng.standard_normal((batch, 12), dtype=np.float32)
    tokens = {"input_ids": rng.integers(0, 30522, (batch, 8)), "attention_mask": rng.integers(0, 2, (batch, 8))}
    return pixels, tokens


def _right(result, pixels, tokens) -> bool:
    from tests.gpu.copy_engine import expected_bytes, logits_bytes

    return bool(np.array_equal(logits_bytes(result.logits), expected_bytes(pixels, tokens)))


def _fusion(cu, folder, graphs=False, sleep=None, head_stream=None):
    from fusionrt.runtime.backends.tensorrt import TensorRTBackend, TensorRTOptions
    from tests.gpu.copy_engine import WIRING, open_copy_backends

    backends = open_copy_backends(cu, Path(folder), head_stream, sleep)
    return TensorRTBackend.executor(backends, WIRING, TensorRTOptions(cuda_graphs=graphs), True), backends


def _close(fusion, backends) -> None:
    fusion.close()
    for backend in backends.values():
        backend.close()


def external_record(cu) -> object:
    rt = cu.cudart()
    with cu.Stream() as stream, cu.Event() as event:
        err, = rt.cudaEventRecordWithFlags(event.handle, stream.handle, rt.cudaEventRecordExternal)
        cu.clear_error()
        event.record(stream, external=True)  # fusionrt's layer: a plain record outside a capture
        stream.synchronize()
    return True if int(err) != 0 else "the driver accepted an external record outside a capture"


def producers(cu, torch, folder) -> dict:
    """A frame written after a slow kernel on the producer's stream must be read only once written."""
    rng, out = np.random.default_rng(3), {}
    fusion, backends = _fusion(cu, folder)
    try:
        streams = {"torch legacy": torch.cuda.default_stream(), "torch non-blocking": torch.cuda.Stream()}
        for name, stream in streams.items():
            pixels, tokens = _inputs(rng, 8)
            frame = torch.zeros((8, 12), device="cuda")
            with torch.cuda.stream(stream):
                torch.cuda._sleep(SPIN_NS)
                frame.copy_(torch.from_numpy(pixels).cuda(non_blocking=True))
                out[name] = _right(fusion.run(frame, tokens), pixels, tokens)
        out.update(_cupy_producers(fusion, rng))
    finally:
        _close(fusion, backends)
    return out


def _cupy_producers(fusion, rng) -> dict:
    try:
        import cupy
    except ImportError:
        return {"cupy": "cupy not installed"}
    spin = cupy.RawKernel(r'''extern "C" __global__ void spin(long long cycles) {
        long long start = clock64(); while (clock64() - start < cycles) {} }''', "spin")
    out = {}
    for name, stream in (("cupy legacy", cupy.cuda.Stream.null), ("cupy per-thread", cupy.cuda.Stream.ptds),
                         ("cupy non-blocking", cupy.cuda.Stream(non_blocking=True))):
        pixels, tokens = _inputs(rng, 8)
        with stream:
            frame = cupy.zeros((8, 12), cupy.float32)
            spin((1,), (1,), (np.int64(SPIN_NS * 2),))
            frame[...] = cupy.asarray(pixels)
            out[name] = _right(fusion.run(frame, tokens), pixels, tokens)
    return out


def sleeping_engines(cu, torch, folder) -> dict:
    def sleep(stream):
        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            torch.cuda._sleep(SPIN_NS)

    rng = np.random.default_rng(4)
    fusion, backends = _fusion(cu, folder, sleep=sleep)
    try:
        right, overlap = True, []
        for _ in range(10):
            pixels, tokens = _inputs(rng, 8)
            result = fusion.run(pixels, tokens)
            right &= _right(result, pixels, tokens)
            t = result.timings
            overlap.append(t.branches_ms < 0.8 * (t.image_ms + t.text_ms))
    finally:
        _close(fusion, backends)
    return {"results_equal": right, "branches_overlap": all(overlap[2:])}


def graph_replays(cu, folder) -> object:
    rng = np.random.default_rng(5)
    fusion, backends = _fusion(cu, folder, graphs=True)
    try:
        right = True
        for batch in (2, 2, 2, 8, 8, 8, 2, 8, 2, 2, 2):
            pixels, tokens = _inputs(rng, batch)
            right &= _right(fusion.run(pixels, tokens), pixels, tokens)
    finally:
        _close(fusion, backends)
    return right or "a graph replay differed from the eager answer"


def failed_capture(cu, folder) -> object:
    from fusionrt.runtime.errors import BackendUnavailable

    rng = np.random.default_rng(6)
    fusion, backends = _fusion(cu, folder, graphs=True)
    text, real = fusion.text, fusion.text.enqueue_run

    def refuse():
        if fusion._capturing:
            raise BackendUnavailable("CUDA call failed: a capture refused (test)")
        real()

    text.enqueue_run = refuse
    try:
        right = True
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            for _ in range(4):
                pixels, tokens = _inputs(rng, 4)
                right &= _right(fusion.run(pixels, tokens), pixels, tokens)
        err, = cu.cudart().cudaGetLastError()
        clean = int(err) == 0
    finally:
        _close(fusion, backends)
    return True if right and clean else f"results right: {right}, no error pending: {clean}"


def clones_and_close(cu) -> object:
    """sync=False then close(); a pipeline and a clone, each on its own thread, 200 calls each."""
    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory() as folder:
        fusion, backends = _fusion(cu, folder)
        pixels, tokens = _inputs(rng, 4)
        fusion.run(pixels, tokens, device_output=True, sync=False)
        _close(fusion, backends)  # waits for the head before freeing what it reads
        fusion, backends = _fusion(cu, folder)
        clones = {c: b.clone() for c, b in backends.items()}
        from fusionrt.runtime.backends.tensorrt import TensorRTBackend, TensorRTOptions
        from tests.gpu.copy_engine import WIRING

        twin = TensorRTBackend.executor(clones, WIRING, TensorRTOptions(), True)
        results = []

        def work(executor, seed):
            local = np.random.default_rng(seed)
            ok = True
            for _ in range(200):
                p, t = _inputs(local, 4)
                ok &= _right(executor.run(p, t), p, t)
            results.append(ok)

        threads = [threading.Thread(target=work, args=(e, i)) for i, e in enumerate((fusion, twin))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        _close(twin, clones)
        _close(fusion, backends)
    return all(results) and len(results) == 2


def under_sanitizer(out_dir) -> object:
    """clones_and_close in a process of its own under compute-sanitizer's memcheck (where it is installed)."""
    tool = shutil.which("compute-sanitizer")
    if tool is None:
        return "compute-sanitizer not found (ran without it)"
    root = Path(__file__).resolve().parents[2]
    code = ("import sys; sys.path.insert(0, %r); from tests.gpu.gpu_check import _use_checkout; _use_checkout(); "
            "from fusionrt.runtime import cuda; from tests.gpu.gpu_contracts import clones_and_close; "
            "sys.exit(0 if clones_and_close(cuda) is True else 3)") % str(root)
    done = subprocess.run([tool, "--tool", "memcheck", "--error-exitcode", "9", sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=240)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "sanitizer.log").write_text(done.stdout + done.stderr)
    return True if done.returncode == 0 else f"exit {done.returncode}: {(done.stdout + done.stderr)[-300:]}"


def check_contracts(cu, torch, out_dir) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        steps = {"external_record_outside_capture_refused": lambda: external_record(cu),
                 "producers_waited_for": lambda: producers(cu, torch, folder),
                 "sleeping_engines": lambda: sleeping_engines(cu, torch, folder),
                 "graph_replays_A_A_B_B_A_B": lambda: graph_replays(cu, folder),
                 "failed_capture_then_clean": lambda: failed_capture(cu, folder),
                 "sync_false_close_and_two_clones": lambda: clones_and_close(cu),
                 "compute_sanitizer": lambda: under_sanitizer(out_dir)}
        for name, step in steps.items():
            try:
                out[name] = step()
            except Exception as exc:  # noqa: BLE001 - each contract reported on its own
                out[name] = f"{type(exc).__name__}: {exc}"
    return out
