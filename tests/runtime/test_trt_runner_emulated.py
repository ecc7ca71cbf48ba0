"""The TensorRT runner's data path, run without a GPU, on the emulated GPU of tests/runtime/trt_emulation.py (whose
TensorRT stand-ins accept only the real classes' API: TensorRT-RTX's and TensorRT 11's runtime). What this checks:
buffers sized once for the profile's largest shapes and used for smaller ones, copies of the right byte counts,
outputs that follow the input shapes, the fused path's head reading the encoders' device outputs, CUDA graph
replay on new inputs, and `close()`. Real CUDA semantics still need a GPU (tests/runtime/test_cuda_layer.py's GPU
test and benchmarks/gpu_check.py)."""

import contextlib
from types import SimpleNamespace

import numpy as np
import pytest
from packaging.version import Version

from fusionrt.runtime.errors import InputError
from fusionrt.runtime.manifest import TensorSpec
from fusionrt.runtime.optional import is_available
from fusionrt.runtime.wiring import Wiring
from tests.hardware import needs_rtx
from fusionrt.bundling import save_manifest
from fusionrt.runtime.pipeline import Pipeline
from tests.runtime.trt_emulation import Gpu, emulate_tensorrt, emulated_trt, install_emulated_cuda, view

# The runner's calls are checked against each installed TensorRT's real classes: TensorRT-RTX, and TensorRT 11's
# runtime (tensorrt-lean: the same runtime API as the full tensorrt package, which cannot be installed here).
CLASS_APIS = {"tensorrt_rtx": "tensorrt_rtx", "tensorrt_lean": "tensorrt"}  # module -> the product it stands for

W_IMAGE = np.arange(18, dtype=np.float32).reshape(3, 6) / 10
W_HEAD = np.linspace(-1, 1, 30, dtype=np.float32).reshape(10, 3)


def image_model(pixel_values):
    return {"image_features": pixel_values.mean(axis=(2, 3)) @ W_IMAGE}


def text_model(input_ids, attention_mask):
    summed = (input_ids * attention_mask).sum(axis=1, keepdims=True).astype(np.float32)
    return {"text_features": summed * np.array([1, 2, 3, 4], np.float32)}


def head_model(image_features, text_features):
    return {"logits": np.concatenate([image_features, text_features], axis=1) @ W_HEAD}


WIRING = Wiring(image_input="pixel_values", image_output="image_features", text_inputs=("input_ids", "attention_mask"),
                text_output="text_features", head_inputs=("image_features", "text_features"), logits="logits")

# name -> (inputs {name: (dtype, min shape, max shape)}, outputs {name: (dtype, width)}, function)
MODELS = {
    "image": ({"pixel_values": ("float32", (1, 3, 4, 4), (4, 3, 4, 4))}, {"image_features": ("float32", 6)},
              image_model),
    "text": ({"input_ids": ("int64", (1, 1), (4, 8)), "attention_mask": ("int64", (1, 1), (4, 8))},
             {"text_features": ("float32", 4)}, text_model),
    "head": ({"image_features": ("float32", (1, 6), (4, 6)), "text_features": ("float32", (1, 4), (4, 4))},
             {"logits": ("float32", 3)}, head_model),
}


@pytest.fixture(params=sorted(CLASS_APIS))
def emulated(request, monkeypatch, tmp_path):
    import importlib

    from fusionrt.runtime.backends import tensorrt as trt_backend
    from fusionrt.runtime.backends.trt_compat import TrtApi

    if not is_available(request.param):
        pytest.skip(f"{request.param} is not installed (make install adds it)")
    trt = importlib.import_module(request.param)

    gpu = Gpu()
    cu = install_emulated_cuda(monkeypatch, gpu)

    def open_backend(model):
        api = TrtApi(CLASS_APIS[request.param], emulated_trt(trt, gpu, lambda plan: MODELS[model]),
                     Version(trt.__version__))
        path = tmp_path / f"{model}.engine"
        path.write_bytes(b"plan")
        inputs, outputs, _ = MODELS[model]
        specs = tuple(TensorSpec(n, dt, ["batch", "seq"] if model == "text" else ["batch", *hi[1:]])
                      for n, (dt, _, hi) in inputs.items())
        out_specs = tuple(TensorSpec(n, dt, ["batch", w]) for n, (dt, w) in outputs.items())
        return trt_backend.TensorRTBackend(api, path, SimpleNamespace(path=str(path)), specs, out_specs, cu.Stream())

    @contextlib.contextmanager
    def fused(graphs: bool):
        """The three components fused; on exit everything closed, and every buffer, event and graph released."""
        backends = {c: open_backend(m) for c, m in (("image_encoder", "image"), ("text_encoder", "text"),
                                                     ("fusion_head", "head"))}
        fusion = trt_backend.TensorRTBackend.executor(backends, WIRING, trt_backend.TensorRTOptions(cuda_graphs=graphs), True)
        yield fusion, backends
        fusion.close()
        for backend in backends.values():
            backend.close()
        assert not gpu.open

    # fusionrt captures CUDA graphs itself on TensorRT; TensorRT-RTX captures its own (its built-in strategy)
    return SimpleNamespace(open=open_backend, fused=fused, gpu=gpu, trt_backend=trt_backend, trt=trt,
                           own_graphs=CLASS_APIS[request.param] != "tensorrt_rtx")


def trt_module():
    import tensorrt_rtx

    return tensorrt_rtx


def _inputs(batch, seq, seed=0):
    rng = np.random.default_rng(seed)
    pixels = rng.standard_normal((batch, 3, 4, 4), dtype=np.float32)
    tokens = {"input_ids": rng.integers(1, 100, (batch, seq), dtype=np.int64),
              "attention_mask": (rng.random((batch, seq)) < 0.8).astype(np.int64)}
    return pixels, tokens


def _expected(pixels, tokens):
    return head_model(**image_model(pixels), **text_model(**tokens))["logits"]


def test_one_backend_runs_every_shape_in_its_profile_in_buffers_sized_once(emulated):
    image = emulated.open("image")
    sizes = image.io.buffer_bytes()
    assert sizes == {"pixel_values": 4 * 3 * 4 * 4 * 4, "image_features": 4 * 6 * 4}  # the profile's largest
    for batch in (2, 4, 1):
        pixels, _ = _inputs(batch, 1, seed=batch)
        out = image.infer({"pixel_values": pixels})
        assert out["image_features"].shape == (batch, 6)
        np.testing.assert_allclose(out["image_features"], image_model(pixels)["image_features"], rtol=1e-6)
    assert image.io.buffer_bytes() == sizes  # no allocation per call
    with pytest.raises(InputError, match="exceeds the engine's profile maximum"):
        image.infer({"pixel_values": _inputs(5, 1)[0]})
    image.close()
    assert not emulated.gpu.open  # every buffer released


def test_fused_path_feeds_the_head_from_the_encoders_device_outputs(emulated):
    with emulated.fused(False) as (fusion, backends):
        for batch, seq in ((2, 5), (3, 8), (1, 1)):
            pixels, tokens = _inputs(batch, seq, seed=batch)
            logits = fusion.run(pixels, tokens).logits
            np.testing.assert_allclose(logits, _expected(pixels, tokens), rtol=1e-5)
        head = backends["fusion_head"]
        assert not head.io._tensors["image_features"].host.array.any()  # white-box: never copied through the host
        pixels, tokens = _inputs(2, 5, seed=9)  # the head alone still runs from its own input buffers
        features = {**image_model(pixels), **text_model(**tokens)}
        np.testing.assert_allclose(head.infer(features)["logits"], _expected(pixels, tokens), rtol=1e-5)


@pytest.mark.parametrize("graphs", [False, True])
def test_with_the_text_given_the_head_reads_those_features(emulated, graphs):
    with emulated.fused(graphs) as (fusion, backends):
        pixels, tokens = _inputs(2, 5)
        result = fusion.run(pixels, tokens)
        np.testing.assert_allclose(result.logits, _expected(pixels, tokens), rtol=1e-5)
        features = result.text_features
        np.testing.assert_allclose(features, text_model(**tokens)["text_features"])
        for seed in range(3):  # a new frame, the same text: with graphs eager, captured, then replayed
            frame, _ = _inputs(2, 5, seed=100 + seed)
            np.testing.assert_allclose(fusion.run(frame, tokens, features).logits, _expected(frame, tokens), rtol=1e-5)
        graphs = graphs and emulated.own_graphs
        assert fusion.graph_key == (("text given", 2) if graphs else None) and (fusion.graph is not None) == graphs


def test_a_context_replays_only_the_graph_of_its_current_shape(emulated):
    """Shapes A, A, B, B, A, B, A, A, A: one graph is kept, of the contexts' current shape; a change of shape drops it
    (the emulated context refuses a graph replayed after it ran another shape), and each shape is captured again
    after one eager call at it. Every answer equals the eager one, on new data each call."""
    shapes = [(2, 5), (2, 5), (4, 3), (4, 3), (2, 5), (4, 3), (2, 5), (2, 5), (2, 5)]
    with emulated.fused(True) as (fusion, backends):
        captured = []
        for i, (batch, seq) in enumerate(shapes):
            pixels, tokens = _inputs(batch, seq, seed=i)
            np.testing.assert_allclose(fusion.run(pixels, tokens).logits, _expected(pixels, tokens), rtol=1e-5)
            captured.append(fusion.graph is not None)
        if not emulated.own_graphs:  # TensorRT-RTX: never a capture of fusionrt's own
            assert not any(captured) and not fusion.use_graphs
            return
        assert captured == [False, True, False, True, False, False, False, True, True]
        assert fusion.graph_key == (2, 5)


@needs_rtx
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8", None])  # None: the calibrated int8-trt policy
def test_pipeline_on_tensorrt_engines_matches_onnxruntime(precision, built, calibrated, monkeypatch, tmp_path):
    """Pipeline.load(backend='tensorrt_rtx') end to end: the real engine files, records and checks, engine choice
    per precision and policy, the fused path (eager and CUDA graphs), a caller's stream for the head, the
    cached-text path, close; TensorRT's compute emulated by ONNX Runtime on the ONNX each engine was built from.
    The reference is ONNX Runtime on those same files (run on the CPU)."""
    import dataclasses
    import shutil

    from fusionrt.data.dataset import LabeledDataset
    from fusionrt.runtime.bundle import Bundle
    from fusionrt.runtime.pipeline import Pipeline
    from fusionrt.runtime.text_cache import TextFeatureCache

    bundle = tmp_path / "bundle"
    shutil.copytree(built[0], bundle)
    gpu = emulate_tensorrt(monkeypatch, bundle, precisions=("fp32", "fp16", "int8"))

    samples = LabeledDataset.read(calibrated[3])
    images, texts = [s.image for s in samples], [s.text for s in samples]
    # TensorRT-RTX builds INT8 from the FP16-base Q/DQ graph; ONNX Runtime's TensorRT EP flavour is the FP32-base
    # one. The reference runs on the files the engines were built from: a copy whose int8-trt entries name those.
    reference = tmp_path / "reference"
    shutil.copytree(bundle, reference)
    ref_bundle = Bundle.open(reference)
    m = ref_bundle.manifest
    save_manifest(ref_bundle, dataclasses.replace(m, components={c: dataclasses.replace(
        comp, files={**comp.files, "int8-trt": comp.files["int8-trt-fp16"]}) for c, comp in m.components.items()}))
    with pytest.warns(UserWarning, match="TensorrtExecutionProvider"), Pipeline.load(
            reference, backend="onnxruntime", precision=precision, device="tensorrt", allow_fallback=True) as ref:
        expected = {n: ref.logits(*ref.prepare(images[:n], texts[:n])) for n in (8, 3)}
        labels = [p.label for p in ref.classify_batch(images[:8], texts[:8])]
        chosen = ref.precision
    for graphs in (False, True):
        with Pipeline.load(bundle, backend="tensorrt_rtx", precision=precision, cuda_graphs=graphs, stream=4321) as pipe:
            assert pipe.precision == chosen, (pipe.precision, chosen)  # the same policy (int8-trt), the same engines
            assert pipe.backends["fusion_head"].stream.ptr == 4321 and not pipe.backends["fusion_head"].stream.owned
            for _ in range(2):  # per bucket: eager, then (with graphs) captured and replayed, in two buckets
                for n, want in expected.items():
                    for _ in range(2):
                        np.testing.assert_allclose(pipe.logits(*pipe.prepare(images[:n], texts[:n])), want,
                                                   rtol=1e-5, atol=1e-6)
            assert pipe.timings.image_ms > 0 and pipe.timings.head_ms >= 0
            # TensorRT-RTX runs its own CUDA graphs (each context made with them on), so none of fusionrt's own
            strategies = {b.context.runtime_config.cuda_graph_strategy if b.context.runtime_config else None
                          for b in pipe.backends.values()}
            assert strategies == ({trt_module().CudaGraphStrategy.WHOLE_GRAPH_CAPTURE} if graphs else {None})
            assert pipe._executor.graph is None and not pipe._executor.use_graphs
            pipe.text_cache = TextFeatureCache(8)
            for _ in range(2):  # text cache miss (both branches), then hit (the image branch and the head only)
                np.testing.assert_allclose(pipe.cached_logits(*pipe.prepare(images[:8], texts[:8])), expected[8],
                                           rtol=1e-5, atol=1e-6)
            assert (pipe.text_cache.misses, pipe.text_cache.hits) == (8, 8)
            assert [p.label for p in pipe.classify_batch(images[:8], texts[:8])] == labels
        assert not gpu.open  # every buffer, event and graph released by close()


def test_shape_and_feed_errors_are_input_errors(emulated):
    image = emulated.open("image")
    with pytest.raises(InputError, match=r"shape \[1, 3, 2, 4\] is below the engine's profile minimum \[1, 3, 4, 4\]"):
        image.io.set_shapes({"pixel_values": (1, 3, 2, 4)})
    with pytest.raises(InputError, match=r"expected 4 dimensions, found shape \[1, 3, 4\]"):
        image.io.set_shapes({"pixel_values": (1, 3, 4)})
    with pytest.raises(InputError, match=r"'image_features' is not an input"):
        image.io.set_shapes({"image_features": (1, 6)})
    real = image.io.context
    image.io.context = SimpleNamespace(set_input_shape=lambda name, shape: False)  # TensorRT says no
    with pytest.raises(InputError, match=r"TensorRT refused shape \[2, 3, 4, 4\]"):
        image.io.set_shapes({"pixel_values": (2, 3, 4, 4)})
    image.io.context = real
    image.close()
    with emulated.fused(False) as (fusion, backends):  # the fused path runs the shared input checks too
        pixels, tokens = _inputs(2, 5)
        with pytest.raises(InputError, match="expected dtype float32, found float64"):
            fusion.run(pixels.astype(np.float64), tokens)
        with pytest.raises(InputError, match=r"the text encoder takes \['input_ids', 'attention_mask'\], found "
                                             r"\['input_ids'\]"):
            fusion.run(pixels, {"input_ids": tokens["input_ids"]})


def test_one_logger_per_product_and_the_device_is_checked(emulated, monkeypatch):
    image, head = emulated.open("image"), emulated.open("head")
    assert image.shared.logger is head.shared.logger  # TensorRT warns when a second, different logger comes
    image.close()
    head.close()
    from fusionrt.runtime.errors import BackendUnavailable

    trt_backend = emulated.trt_backend
    monkeypatch.setattr(trt_backend.cuda, "cudart", lambda: None)
    monkeypatch.setattr(trt_backend.cuda, "device_count", lambda: 1)
    with pytest.raises(BackendUnavailable, match=r"CUDA device 3 asked for: expected 0\.\.0 on this machine"):
        trt_backend._gpu(3)


def test_without_cuda_bindings_the_error_says_what_to_install(built, monkeypatch):
    import sys

    from fusionrt.runtime.errors import BackendUnavailable
    from fusionrt.runtime.pipeline import Pipeline

    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)  # as if cuda-bindings were not installed
    with pytest.raises(BackendUnavailable, match=r"cuda-bindings.*pip install 'fusionrt\[tensorrt\]'"):
        Pipeline.load(built[0], backend="tensorrt_rtx", precision="fp32")


def test_a_context_that_says_it_cannot_be_captured_runs_eagerly(emulated):
    """Before a capture of its own, fusionrt asks each context (where TensorRT has the call)."""
    emulated.gpu.capturable = False
    asks = hasattr(emulated.trt.IExecutionContext, "is_stream_capturable")
    if not emulated.own_graphs:
        pytest.skip("TensorRT-RTX captures its CUDA graphs itself: fusionrt asks no context (tested above)")
    with emulated.fused(True) as (fusion, backends):
        pixels, tokens = _inputs(2, 5)
        fusion.run(pixels, tokens)
        if asks:
            with pytest.warns(RuntimeWarning, match="cannot be stream-captured .*`fusionrt build --cuda-graphs`"):
                fusion.run(pixels, tokens)
            assert fusion.graph_key == (2, 5) and fusion.graph is None  # refused: eager at this shape
        else:  # TensorRT 11's lean runtime has no such call: the capture is tried
            fusion.run(pixels, tokens)
            assert fusion.graph is not None


@needs_rtx
def test_engines_for_cuda_graphs_are_built_capturable_on_rtx(built, tmp_path, monkeypatch):
    import shutil

    from fusionrt.runtime.backends import trt_compat
    from fusionrt.engines.build import build_engines
    from tests.conftest import RTX_CC

    bundle = tmp_path / "bundle"
    shutil.copytree(built[0], bundle)
    flags, real = [], trt_compat.TrtApi.set_capturable

    def spy(self, config):
        real(self, config)
        flags.append(config.get_flag(self.trt.BuilderFlag.REQUIRE_USER_ALLOCATION))

    monkeypatch.setattr(trt_compat.TrtApi, "set_capturable", spy)
    plain = build_engines(bundle, "tensorrt_rtx", "fp32", compute_capability=RTX_CC)
    assert all(r.skipped for r in plain) and not flags  # the shared fixture's engines: no capture flag asked
    capturable = build_engines(bundle, "tensorrt_rtx", "fp32", compute_capability=RTX_CC, cuda_graphs=True)
    assert not any(r.skipped for r in capturable) and flags == [True, True, True]  # set on the real builder config
    assert {r.record.cache_key for r in capturable}.isdisjoint({r.record.cache_key for r in plain})


class HostBackedCudaArray:
    """On the emulated GPU host memory is device memory: a numpy array shown as a CUDA array interface."""

    def __init__(self, array):
        self.array = np.ascontiguousarray(array)
        self.__cuda_array_interface__ = {"data": (self.array.ctypes.data, False), "shape": self.array.shape,
                                         "typestr": self.array.dtype.str, "strides": None, "version": 3, "stream": None}


def test_device_arrays_in_and_out_skip_the_host(emulated):
    from fusionrt.runtime.device_array import DeviceArray
    from tests.runtime.trt_emulation import view

    with emulated.fused(True) as (fusion, backends):
        for seed in range(3):
            pixels, tokens = _inputs(2, 5, seed=seed)
            result = fusion.run(HostBackedCudaArray(pixels), tokens, device_output=True)
            assert isinstance(result.logits, DeviceArray) and result.logits.shape == (2, 3)
            logits = view(result.logits.ptr, result.logits.dtype, result.logits.shape).copy()
            np.testing.assert_allclose(logits, _expected(pixels, tokens), rtol=1e-5)
        image, head = backends["image_encoder"], backends["fusion_head"]
        assert not image.io._tensors["pixel_values"].host.array.any()  # white-box: the frame never went through the host
        assert not head.io._tensors["logits"].host.array.any()  # nor the logits
        assert fusion.graph is None  # device in or out: eager (a graph would bake in the caller's pointer)


def test_a_host_backend_refuses_device_arrays_clearly(tiny_bundle):
    from fusionrt.runtime.pipeline import Pipeline

    with Pipeline.load(tiny_bundle, backend="onnxruntime") as pipe:
        pixels, tokens = pipe.prepare([np.zeros((32, 32, 3), np.uint8)], ["a red circle"])
        with pytest.raises(InputError, match="a device array reached a backend that takes host arrays"):
            pipe.infer(HostBackedCudaArray(pixels), tokens)
        with pytest.raises(InputError, match=r"device_output=True \(and sync=False\): expected a backend that runs on"):
            pipe.infer(pixels, tokens, device_output=True)


@pytest.mark.parametrize("producer", [Gpu.LEGACY, Gpu.PER_THREAD, 777])
def test_a_device_frame_is_read_after_its_producers_stream_wrote_it(emulated, producer):
    """The producer's write is still queued on its stream (legacy, per-thread or its own) when fusionrt is called:
    the branch streams are non-blocking and wait for nothing but events, so only waiting on the producer's stream
    (as the CUDA Array Interface says) reads the frame rather than what was there before."""
    pixels, tokens = _inputs(2, 5, seed=4)
    frame = HostBackedCudaArray(np.zeros_like(pixels))
    frame.__cuda_array_interface__["stream"] = producer
    target = frame.array
    emulated.gpu.queue(producer).ops.append(lambda: target.__setitem__(Ellipsis, pixels))  # a slow kernel's write
    with emulated.fused(False) as (fusion, backends):
        np.testing.assert_allclose(fusion.run(frame, tokens).logits, _expected(pixels, tokens), rtol=1e-5)


def test_the_producer_does_not_overwrite_the_frame_before_the_read_without_sync(emulated):
    """With sync=False nothing waits for fusionrt's copy; the producer's next write (the next frame) is ordered after
    it because its stream waits for the copy."""
    pixels, tokens = _inputs(2, 5, seed=5)
    expected = _expected(pixels, tokens)
    frame = HostBackedCudaArray(pixels.copy())
    frame.__cuda_array_interface__["stream"] = 778
    with emulated.fused(False) as (fusion, backends):
        result = fusion.run(frame, tokens, device_output=True, sync=False)
        producer = emulated.gpu.queue(778)
        producer.ops.append(lambda: frame.array.__setitem__(Ellipsis, 0.0))  # the next frame, written over it
        producer.flush()  # the producer runs on first
        backends["fusion_head"].stream.synchronize()
        logits = view(result.logits.ptr, result.logits.dtype, result.logits.shape).copy()
        np.testing.assert_allclose(logits, _expected(pixels, tokens), rtol=1e-5)


@needs_rtx
def test_a_default_stream_for_the_head_is_refused(built, monkeypatch):
    emulate_tensorrt(monkeypatch, built[0])
    with pytest.raises(InputError, match=r"stream=0: a default CUDA stream .* torch.cuda.Stream\(\)"):
        Pipeline.load(built[0], backend="tensorrt_rtx", precision="fp32", stream=0)


def test_close_right_after_a_call_that_did_not_wait_waits_first(emulated):
    """sync=False, then close(): the head may still be reading the encoders' buffers, so close waits before freeing
    them (on the emulated GPU the queued work would read freed memory, and fail)."""
    pixels, tokens = _inputs(2, 5, seed=6)
    with emulated.fused(False) as (fusion, backends):
        fusion.run(HostBackedCudaArray(pixels), tokens, device_output=True, sync=False)
        fusion.close()
        assert not emulated.gpu.queue(backends["fusion_head"].stream.handle).ops  # everything ran before the frees


def test_unchecked_tensorrt_results_are_checked(emulated, monkeypatch):
    """A context TensorRT could not make (None: out of memory), an address it refuses or one not 256-byte aligned, and
    shapes it cannot infer are clear errors, not a crash later."""
    from fusionrt.runtime.errors import BackendUnavailable

    image = emulated.open("image")
    with pytest.raises(InputError, match=r"refused address 0x[0-9a-f]+: expected one aligned to 256 bytes"):
        image.io.bind("pixel_values", image.io.device_address("pixel_values") + 4)
    real = image.io.context
    image.io.context = SimpleNamespace(infer_shapes=lambda: ["pixel_values"], set_input_shape=lambda n, s: True)
    with pytest.raises(InputError, match=r"cannot infer the shapes of \['pixel_values'\]"):
        image.io.set_shapes({"pixel_values": (1, 3, 4, 4)})
    image.io.context = real
    image.close()
    monkeypatch.setattr(type(image.api), "create_context", lambda self, engine, graphs=False, cache=None: None)
    with pytest.raises(BackendUnavailable, match="could not create an execution context .* expected free GPU memory"):
        emulated.open("image")
    assert not emulated.gpu.open  # nothing left allocated by the failed open


def test_close_frees_every_buffer_even_when_one_fails(emulated):
    image = emulated.open("image")
    tensors = list(image.io._tensors.values())
    real = tensors[0].device.close
    tensors[0].device.close = lambda: (real(), (_ for _ in ()).throw(RuntimeError("cudaFree failed")))
    with pytest.raises(RuntimeError, match="cudaFree failed"):
        image.close()
    assert not emulated.gpu.open  # every other buffer (and the failing one's host half) freed all the same


def test_a_pinned_buffer_is_freed_when_its_device_buffer_cannot_be_made(emulated, monkeypatch):
    from fusionrt.runtime.backends import trt_io

    def out_of_memory(nbytes):
        raise BackendUnavailable("CUDA call failed: cudaErrorMemoryAllocation")

    from fusionrt.runtime.errors import BackendUnavailable

    monkeypatch.setattr(trt_io.cuda, "DeviceBuffer", out_of_memory)
    with pytest.raises(BackendUnavailable, match="cudaErrorMemoryAllocation"):
        emulated.open("image")
    assert not emulated.gpu.open


def test_tensorrt_rtx_cuda_graphs_need_1_2_and_capturable_engines_and_its_runtime_cache_is_kept(tmp_path, monkeypatch):
    """CUDA graphs on TensorRT-RTX: its own, from 1.2 on, of engines built stream-capturable (recorded in the
    manifest); the runtime cache of JIT-compiled kernels is read at load and written back at close, per engine."""
    import tensorrt_rtx

    from fusionrt.runtime.backends.trt_compat import TrtApi, runtime_cache_path, save_runtime_cache

    old, new = (TrtApi("tensorrt_rtx", tensorrt_rtx, Version(v)) for v in ("1.1", "1.7"))
    assert not old.builtin_cuda_graphs and new.builtin_cuda_graphs
    with pytest.warns(RuntimeWarning, match="TensorRT-RTX 1.1 has no CUDA graphs"):
        old.check_cuda_graphs([])
    plain = SimpleNamespace(path="image.plan", capturable=False)
    with pytest.warns(RuntimeWarning, match="image.plan were not built stream-capturable"):
        new.check_cuda_graphs([plain])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    record = SimpleNamespace(sha256="ab" * 32)
    save_runtime_cache(SimpleNamespace(serialize=lambda: b"kernels"), record)
    assert runtime_cache_path(record).read_bytes() == b"kernels" and str(tmp_path) in str(runtime_cache_path(record))
    loaded = []
    engine = SimpleNamespace(create_runtime_config=lambda: SimpleNamespace(create_runtime_cache=lambda: SimpleNamespace(
        deserialize=lambda blob: loaded.append(bytes(blob)) or True)))
    assert new.runtime_cache(engine, record) is not None and loaded == [b"kernels"]
