"""The fused TensorRT path's ordering, checked on a recording stand-in for CUDA (no GPU here): what is enqueued on
which stream, which waits come first, when a CUDA graph is captured and replayed, and what `close` releases.
The same path runs on real streams in the GPU test and in tests/gpu/gpu_check.py."""

import numpy as np
import pytest

from fusionrt.runtime.backends import tensorrt as trt_backend
from fusionrt.runtime.manifest import TensorSpec
from fusionrt.runtime.wiring import Wiring

# Names unlike the exported bundles' ones: the fused path must take every name from the wiring (the manifest).
WIRING = Wiring(image_input="img", image_output="img_vec", text_inputs=("ids", "mask"), text_output="txt_vec",
                head_inputs=("txt_vec", "img_vec"), logits="scores")


class Recorder:
    def __init__(self):
        self.log, self.clock, self.capturing = [], 0.0, False

    def __call__(self, *entry):
        self.log.append(entry)


class FakeStream:
    def __init__(self, name, rec):
        self.name, self.rec, self.ptr = name, rec, f"stream:{name}"

    def wait(self, event):
        # Inside a capture, a stream joins the graph only by waiting on an event recorded plainly inside it.
        assert event.captured or not self.rec.capturing, f"wait on {event.name}, which is not a graph edge"
        self.rec("wait", self.name, event.name)

    def synchronize(self):
        self.rec("sync", self.name)


class FakeEvent:
    def __init__(self, rec, timing=True):
        self.rec, self.timing, self.name, self.at, self.closed = rec, timing, None, None, False
        self.captured = False  # last recorded as a plain record inside a capture: a graph edge, not a timestamp

    def record(self, stream, external=False):
        self.rec.clock += 1.0
        self.at = self.rec.clock
        self.captured = self.rec.capturing and not external
        self.rec("record", stream.name, self.name)

    def elapsed_ms(self, start):
        # What CUDA refuses: timing an event created without timing, or one a capture turned into a graph edge.
        assert self.timing and start.timing, "elapsed time of an event created with timing disabled"
        assert not (self.captured or start.captured), "elapsed time of an event that a capture made a graph edge"
        return self.at - start.at

    def close(self):
        self.closed = True


class FakeGraph:
    """Capture = run the enqueue function once with the log marked; launch = replay what it logged."""

    def __init__(self, stream, enqueue, rec):
        self.rec, self.closed = rec, False
        rec("capture-begin", stream.name)
        start, rec.capturing = len(rec.log), True
        enqueue()
        self.ops, rec.capturing = rec.log[start:], False
        rec("capture-end", stream.name)

    def launch(self):
        self.rec("launch")
        for op in self.ops:
            if op[0] == "record":  # replayed event records move the clock like real ones
                self.rec.clock += 1.0
        self.rec.log.extend(self.ops)

    def close(self):
        self.closed = True


class FakeBackend:
    """The public steps of a TensorRTBackend that the fused path drives, logged; nothing private is there to use."""

    def __init__(self, name, rec, inputs, outputs):
        self.name, self.rec = name, rec
        self.stream = FakeStream(name, rec)
        self.dims = {**inputs, **outputs}
        self.dtypes = {n: np.dtype(np.float32) for n in self.dims}
        self.inputs, self.outputs_ = inputs, outputs
        self.input_specs = tuple(TensorSpec(n, "float32", ("batch", d)) for n, d in inputs.items())
        self.addresses, self.shapes, self.written, self.checked = {}, {}, {}, []
        self.io = self  # the buffers' steps (EngineIO) and the backend's, on one double
        self.device = 0

    def layout(self, name):
        return self.dtypes[name], (self.dims[name],)

    def capturable(self):
        self.rec("capturable?", self.name)
        return True

    def device_address(self, name):
        return f"{self.name}:{name}"

    def bind(self, name, address=None):
        self.addresses[name] = self.device_address(name) if address is None else address

    def check(self, feeds):
        assert set(feeds) == set(self.inputs), (self.name, sorted(feeds))
        self.checked.append(sorted(feeds))

    def write_input(self, name, array):
        assert self.shapes[name] == array.shape
        self.written[name] = array

    def set_inputs(self, feeds):
        self.set_shapes({k: v.shape for k, v in feeds.items()})
        self.written.update(feeds)

    def set_shapes(self, shapes):
        assert set(shapes) <= set(self.inputs), shapes
        self.shapes.update(shapes)
        self.rec("shape", self.name, *sorted(shapes.items()))

    def input_shapes(self):
        return tuple(sorted(self.shapes.items()))

    def enqueue_copy_in_device(self, name, source):
        self.rec("copy-in-device", self.stream.name, name, source.ptr)

    def output_shape(self, name):
        return (next(iter(self.shapes.values()))[0], self.dims[name])

    def enqueue_copy_in(self, names=None):
        self.rec("copy-in", self.stream.name, *(names or ()))

    def enqueue_run(self):
        self.rec("run", self.stream.name)

    def enqueue_copy_out(self):
        self.rec("copy-out", self.stream.name)

    def outputs(self):
        batch = next(iter(self.shapes.values()))[0]
        return {name: np.zeros((batch, dim), np.float32) for name, dim in self.outputs_.items()}


@pytest.fixture()
def fused(monkeypatch):
    rec = Recorder()
    monkeypatch.setattr(trt_backend.cuda, "Event", lambda timing=True: FakeEvent(rec, timing))
    monkeypatch.setattr(trt_backend.cuda, "Graph", lambda stream, enqueue, forked=(): FakeGraph(stream, enqueue, rec))
    monkeypatch.setattr(trt_backend.cuda, "set_device", lambda device: rec("set-device", device))
    monkeypatch.setattr(trt_backend.cuda, "Stream", lambda handle=None: FakeStream(f"caller:{handle}", rec))
    image = FakeBackend("image", rec, {"img": 3}, {"img_vec": 16})
    text = FakeBackend("text", rec, {"ids": 8, "mask": 8}, {"txt_vec": 8})
    head = FakeBackend("head", rec, {"img_vec": 16, "txt_vec": 8}, {"scores": 3})

    def make(graphs, head=head):
        fusion = trt_backend.TensorRTFusion(image, text, head, WIRING, graphs=graphs)
        for name, event in {**fusion.joins, **fusion.marks}.items():
            event.name = name
        return fusion, rec, head

    return make


def _call(fusion, batch=2, seq=5):
    tokens = {"ids": np.zeros((batch, seq), np.int64), "mask": np.ones((batch, seq), np.int64),
              "token_type_ids": np.zeros((batch, seq), np.int64)}  # a tokenizer output the text encoder does not take
    result = fusion.run(np.zeros((batch, 3), np.float32), tokens)
    return result.logits, result.timings


def test_branches_fork_from_the_head_stream_and_the_head_waits_for_both(fused):
    fusion, rec, head = fused(graphs=False)
    logits, timings = _call(fusion)
    log = rec.log
    fork = log.index(("record", "head", "fork"))
    for branch in ("image", "text"):
        wait = log.index(("wait", branch, "fork"))
        assert fork < wait < log.index(("copy-in", branch)) < log.index(("run", branch))
        run = log.index(("run", branch))
        assert run < log.index(("record", branch, f"{branch}1")) < log.index(("record", branch, f"{branch}_done"))
    head_run = log.index(("run", "head"))
    assert log.index(("wait", "head", "image_done")) < head_run and log.index(("wait", "head", "text_done")) < head_run
    assert not any(e.timing for e in fusion.joins.values())  # joins only order streams: no timestamps to take
    assert ("copy-in", "head") not in log  # the head reads the encoders' device outputs: no host round trip
    assert head.addresses == {"img_vec": "image:img_vec", "txt_vec": "text:txt_vec"}
    assert head_run < log.index(("copy-out", "head")) < log.index(("record", "head", "head1")) < log.index(("sync", "head"))
    assert [e for e in log if e[0] == "sync"] == [("sync", "head")]  # one host sync per call
    assert head.shapes == {"img_vec": (2, 16), "txt_vec": (2, 8)}
    assert fusion.image.checked == [["img"]] and fusion.text.checked == [["ids", "mask"]]  # the shared input checks
    assert logits.shape == (2, 3)
    assert timings.image_ms > 0 and timings.text_ms > 0 and timings.head_ms > 0


def test_cuda_graph_is_captured_on_the_second_call_per_shape_and_replayed_after(fused):
    fusion, rec, _ = fused(graphs=True)
    _call(fusion)  # first call: eager (TensorRT does lazy set-up on its first enqueue)
    assert fusion.graph is None and not any(e[0] == "capture-begin" for e in rec.log)
    _call(fusion)  # second: captured on the head stream, then launched
    assert fusion.graph_key == (2, 5) and ("capture-begin", "head") in rec.log
    captured, graph = len(rec.log), fusion.graph
    _, timings = _call(fusion)  # third: replayed, nothing re-captured; the timing marks still read after a replay
    assert rec.log.count(("capture-begin", "head")) == 1 and ("launch",) in rec.log[captured:]
    assert timings.image_ms > 0 and timings.text_ms > 0 and timings.head_ms > 0
    _call(fusion, batch=4, seq=7)  # a new shape: the graph of the old one is dropped, the new one runs eagerly
    assert graph.closed and fusion.graph is None
    events = [*fusion.joins.values(), *fusion.marks.values()]
    fusion.close()
    assert all(e.closed for e in events)


def test_capture_waits_for_an_eager_enqueue_at_the_same_shapes(fused):
    """Shapes A, B, A, A: the second A comes after B's enqueue, so it runs eagerly (TensorRT's first enqueue after a
    shape change does set-up work); the third A, right after an eager A, is captured."""
    fusion, rec, _ = fused(graphs=True)
    for batch in (2, 4, 2):
        _call(fusion, batch=batch)
    assert fusion.graph is None and not any(e[0] == "capture-begin" for e in rec.log)
    _call(fusion, batch=2)
    assert fusion.graph_key == (2, 5) and fusion.graph is not None
    begin = rec.log.index(("capture-begin", "head"))
    last_run = max(i for i, e in enumerate(rec.log[:begin]) if e == ("run", "head"))
    shapes_then = [e for e in rec.log[:last_run] if e[0] == "shape" and e[1] == "image"]
    assert shapes_then[-1][2] == ("img", (2, 3))  # the last eager enqueue before the capture was at A
    assert all(e[2][1][0] == 2 for e in rec.log[last_run:begin] if e[0] == "shape")  # and no other shape since


def test_a_shape_whose_capture_fails_runs_without_a_graph(fused, monkeypatch):
    from fusionrt.runtime.errors import BackendUnavailable

    fusion, rec, _ = fused(graphs=True)

    def refuse(stream, enqueue, forked=()):
        rec("capture-refused", stream.name)
        raise BackendUnavailable("CUDA call failed: cudaErrorStreamCaptureUnsupported")

    monkeypatch.setattr(trt_backend.cuda, "Graph", refuse)
    _call(fusion)
    with pytest.warns(RuntimeWarning, match=r"capture failed for batch 2, sequence 5 .* runs without a graph"):
        logits, timings = _call(fusion)
    assert logits.shape == (2, 3) and timings.head_ms > 0  # the call still ran, eagerly
    runs = len(rec.log)
    _call(fusion)  # no second attempt for that shape: eager from now on
    assert rec.log.count(("capture-refused", "head")) == 1 and ("run", "head") in rec.log[runs:]
    fusion.close()


def test_encoders_and_head_that_disagree_on_features_are_refused(fused):
    from fusionrt.runtime.errors import EngineMismatch

    rec = Recorder()
    head = FakeBackend("head", rec, {"img_vec": 16, "txt_vec": 8}, {"scores": 3})
    head.dtypes["txt_vec"] = np.dtype(np.float16)
    with pytest.raises(EngineMismatch, match=r"txt_vec: the encoder's engine writes float32 \[8\] .* reads "
                                             r"float16 \[8\]"):
        fused(graphs=False, head=head)


def test_with_the_text_given_only_the_image_branch_runs_and_the_head_uploads_the_features(fused):
    fusion, rec, head = fused(graphs=False)
    _call(fusion)
    assert ("copy-out", "text") in rec.log  # the full path hands the text features to the pipeline's cache
    start = len(rec.log)
    given = np.ones((2, 8), np.float32)
    result = fusion.run(np.zeros((2, 3), np.float32), {}, given)
    logits, timings = result.logits, result.timings
    assert result.text_features is given and head.written["txt_vec"] is given
    log = rec.log[start:]
    assert not [e for e in log if "text" in e[1:2]]  # nothing on the text stream
    upload, head_run = log.index(("copy-in", "head", "txt_vec")), log.index(("run", "head"))
    assert log.index(("record", "head", "fork")) < upload < head_run  # the upload overlaps the image branch
    assert log.index(("wait", "head", "image_done")) < head_run and ("wait", "head", "text_done") not in log
    assert head.addresses == {"img_vec": "image:img_vec", "txt_vec": "head:txt_vec"}
    assert logits.shape == (2, 3) and timings.text_ms == 0 and timings.image_ms > 0 and timings.head_ms > 0
    _call(fusion)  # the full path points the head back at the text encoder's output
    assert head.addresses["txt_vec"] == "text:txt_vec"


class CudaArray:
    """What CuPy or a torch CUDA tensor shows of itself: a pointer, a shape, a dtype and its stream."""

    def __init__(self, ptr, shape, dtype="<f4", stream=None):
        self.__cuda_array_interface__ = {"data": (ptr, False), "shape": shape, "typestr": dtype, "strides": None,
                                         "version": 3, "stream": stream}


def test_a_device_array_input_is_copied_device_to_device_after_its_producer(fused):
    fusion, rec, head = fused(graphs=True)
    tokens = {"ids": np.zeros((2, 5), np.int64), "mask": np.ones((2, 5), np.int64)}
    for _ in range(3):  # with graphs on: still eager (a graph would bake in the caller's pointer)
        start = len(rec.log)
        result = fusion.run(CudaArray(0xBEEF, (2, 3), stream=555), tokens)
        log = rec.log[start:]
        copy = log.index(("copy-in-device", "image", "img", 0xBEEF))
        assert log.index(("record", "caller:555", "input_ready")) < log.index(("wait", "image", "input_ready")) < copy
        assert ("copy-in", "image") not in log and copy < log.index(("run", "image"))  # no host copy of the frame
        assert result.logits.shape == (2, 3)
    assert fusion.graph is None and not any(e[0] == "capture-begin" for e in rec.log)


def test_the_producer_waits_for_fusionrts_read_before_it_overwrites_the_frame(fused):
    """CUDA Array Interface v3: the consumer orders its reads after the producer's stream; and so that the producer
    (with sync=False, not waited for) does not overwrite the frame before the copy read it, its stream waits for the
    copy."""
    fusion, rec, head = fused(graphs=False)
    tokens = {"ids": np.zeros((2, 5), np.int64), "mask": np.ones((2, 5), np.int64)}
    fusion.run(CudaArray(0xBEEF, (2, 3), stream=555), tokens, device_output=True, sync=False)
    log = rec.log
    copy = log.index(("copy-in-device", "image", "img", 0xBEEF))
    assert copy < log.index(("record", "image", "input_read")) < log.index(("wait", "caller:555", "input_read"))


@pytest.mark.parametrize("cai_stream, waited", [(1, "caller:1"), (2, "caller:2"), (None, None)])
def test_the_legacy_and_per_thread_streams_are_waited_on_and_none_means_no_wait(fused, cai_stream, waited):
    fusion, rec, head = fused(graphs=False)
    tokens = {"ids": np.zeros((2, 5), np.int64), "mask": np.ones((2, 5), np.int64)}
    fusion.run(CudaArray(0xBEEF, (2, 3), stream=cai_stream), tokens)
    recorded = [e for e in rec.log if e[0] == "record" and e[2] == "input_ready"]
    assert recorded == ([("record", waited, "input_ready")] if waited else [])


def test_an_export_without_a_stream_entry_is_ordered_after_the_legacy_stream_and_0_is_refused(fused):
    """A v2 export (torch's) names no stream: the legacy default stream, which orders every blocking stream's work,
    is waited on. Stream 0 is forbidden by the interface (ambiguous)."""
    from fusionrt.runtime.errors import InputError

    fusion, rec, head = fused(graphs=False)
    tokens = {"ids": np.zeros((2, 5), np.int64), "mask": np.ones((2, 5), np.int64)}
    v2 = CudaArray(0xBEEF, (2, 3))
    del v2.__cuda_array_interface__["stream"]
    v2.__cuda_array_interface__["version"] = 2
    fusion.run(v2, tokens)
    assert ("record", "caller:1", "input_ready") in rec.log
    with pytest.raises(InputError, match="names stream 0: the interface forbids it"):
        fusion.run(CudaArray(0xBEEF, (2, 3), stream=0), tokens)


def test_device_output_leaves_the_logits_in_the_heads_buffer(fused):
    from fusionrt.runtime.device_array import DeviceArray

    fusion, rec, head = fused(graphs=False)
    tokens = {"ids": np.zeros((2, 5), np.int64), "mask": np.ones((2, 5), np.int64)}
    start = len(rec.log)
    result = fusion.run(np.zeros((2, 3), np.float32), tokens, device_output=True)
    assert isinstance(result.logits, DeviceArray) and result.logits.ptr == "head:scores"
    assert result.logits.shape == (2, 3) and ("copy-out", "head") not in rec.log[start:]


def test_a_device_array_with_the_wrong_dtype_or_shape_is_an_input_error(fused):
    from fusionrt.runtime.errors import InputError

    fusion, _, _ = fused(graphs=False)
    tokens = {"ids": np.zeros((2, 5), np.int64), "mask": np.ones((2, 5), np.int64)}
    with pytest.raises(InputError, match="expected dtype float32, found float16"):
        fusion.run(CudaArray(1, (2, 3), "<f2"), tokens)
    with pytest.raises(InputError, match="expected a C-contiguous one"):
        array = CudaArray(1, (2, 3))
        array.__cuda_array_interface__["strides"] = (4, 8)
        fusion.run(array, tokens)


def test_without_sync_the_results_stay_on_the_heads_stream_until_the_next_call(fused):
    from fusionrt.runtime.errors import InputError

    fusion, rec, head = fused(graphs=False)
    tokens = {"ids": np.zeros((2, 5), np.int64), "mask": np.ones((2, 5), np.int64)}
    start = len(rec.log)
    result = fusion.run(CudaArray(0xF00D, (2, 3)), tokens, device_output=True, sync=False)
    log = rec.log[start:]
    assert ("sync", "head") not in log and ("sync", "text") in log  # only the cached text features were waited on
    assert result.logits.stream == "stream:head" and result.timings.head_ms == 0  # not measured: nothing waited
    start = len(rec.log)
    fusion.run(np.zeros((2, 3), np.float32), tokens)
    assert rec.log[start:start + 2] == [("set-device", 0), ("sync", "head")]  # waits before reusing the buffers
    with pytest.raises(InputError, match="expected device_output=True with it"):
        fusion.run(np.zeros((2, 3), np.float32), tokens, sync=False)
