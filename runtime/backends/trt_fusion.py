"""The fused TensorRT call (`TensorRTFusion`): the image and text branches on their own CUDA streams at once, the head on
a third (the caller's, with `stream=`) after `cudaStreamWaitEvent` on both, reading the encoders' device outputs
directly; one host sync per call, or none (`sync=False`); optionally each shape captured as a CUDA graph. It drives
the three TensorRT backends through their public steps, by the manifest's tensor names (`wiring`)."""

from __future__ import annotations

import threading
import warnings
from typing import Mapping

import numpy as np

from fusionrt.runtime import cuda
from fusionrt.runtime.backends.base import check_spec
from fusionrt.runtime.device_array import DeviceArray, as_device_array
from fusionrt.runtime.errors import BackendUnavailable, EngineMismatch, InputError
from fusionrt.runtime.execution import Executor, Result, Timings

__all__ = ["TensorRTFusion"]


class TensorRTFusion(Executor):
    """Both branches at once on two streams, the head after both (events), one host sync; CUDA graphs optional.
    With the text's features given (the pipeline's text cache), the image branch and the head alone. Tensors are
    addressed by the manifest's names (`wiring`); the backends are driven through their public steps."""

    def __init__(self, image, text, head, wiring, graphs: bool = False):
        self.image, self.text, self.head, self.wiring, self.use_graphs = image, text, head, wiring, graphs
        for name, source in ((wiring.image_output, image), (wiring.text_output, text)):
            # The head reads these buffers as they are: element type and feature width must agree byte for byte.
            (out_dtype, out_shape), (in_dtype, in_shape) = source.io.layout(name), head.io.layout(name)
            if (out_dtype, out_shape) != (in_dtype, in_shape):
                raise EngineMismatch(f"{name}: the encoder's engine writes {out_dtype} {list(out_shape)} per sample but "
                                     f"the head's engine reads {in_dtype} {list(in_shape)}; rebuild the engines from "
                                     "one bundle with `fusionrt build`.")
        # Two kinds of event, because a CUDA graph treats them differently: joins order the streams (inside a
        # capture they become graph edges), marks time the steps (captured as event-record nodes, so they are
        # recorded again on every replay and can be read after it).
        self.joins = {k: cuda.Event(timing=False) for k in ("fork", "image_done", "text_done", "input_ready",
                                                            "input_read")}
        self._device_input: DeviceArray | None = None  # this call's image input, when a device array
        self._device_output = False
        self._pending = False  # a call returned without waiting for its work (sync=False)
        self.marks = {k: cuda.Event() for k in ("start", "image0", "image1", "text0", "text1", "head1")}
        # One CUDA graph, of the contexts' current shape (trtexec keeps one per context; Torch-TensorRT records again
        # on a shape change): nothing NVIDIA publishes makes a graph of shape A valid after the context ran shape B.
        self.graph_key, self.graph = None, None
        self._capturing = False  # external event records only while a capture records them (else invalid)
        self._enqueued: dict = {}  # backend -> the input shapes of its last eager enqueue
        self._lock = threading.Lock()  # the contexts, buffers and graphs serve one call at a time (clone for more)

    def _enqueue(self, with_text: bool = True) -> None:
        """Both branches (or the image branch alone, when the head's text features come from the pipeline's cache),
        then the head on the main stream."""
        joins, marks, main, w = self.joins, self.marks, self.head.stream, self.wiring
        branches = [(self.image, "image", w.image_output)]
        if with_text:
            branches.append((self.text, "text", w.text_output))
        joins["fork"].record(main)  # the branches start after the caller's earlier work on `main`
        marks["start"].record(main, external=self._capturing)
        source = self._device_input
        if source is not None and source.stream is not None:  # the producer's writes come first
            joins["input_ready"].record(cuda.Stream(source.stream))
            self.image.stream.wait(joins["input_ready"])
        for backend, branch, _ in branches:
            backend.stream.wait(joins["fork"])
            marks[f"{branch}0"].record(backend.stream, external=self._capturing)
            if backend is self.image and source is not None:
                backend.io.enqueue_copy_in_device(w.image_input, source)  # device to device: no host copy of the frame
                if source.stream is not None:  # the producer must not overwrite the frame before this copy read it
                    joins["input_read"].record(backend.stream)
                    cuda.Stream(source.stream).wait(joins["input_read"])
            else:
                backend.io.enqueue_copy_in()
            backend.enqueue_run()
            if branch == "text":
                backend.io.enqueue_copy_out()  # a few KiB: the features the pipeline's text cache keeps
            marks[f"{branch}1"].record(backend.stream, external=self._capturing)
            joins[f"{branch}_done"].record(backend.stream)
        if not with_text:  # cached features: uploaded to the head's own input while the image branch runs
            self.head.io.bind(w.text_output)
            self.head.io.enqueue_copy_in([w.text_output])
        for backend, branch, name in branches:
            main.wait(joins[f"{branch}_done"])
            self.head.io.bind(name, backend.io.device_address(name))  # no host round trip
        self.head.enqueue_run()
        if not self._device_output:
            self.head.io.enqueue_copy_out()
        marks["head1"].record(main, external=self._capturing)

    def run(self, pixels, tokens: Mapping[str, np.ndarray], text_features: np.ndarray | None = None,
            device_output: bool = False, sync: bool = True) -> Result:
        """Both branches at once, then the head; with `text_features` given, the image branch and the head.
        `pixels`: a numpy array, or a device array (`__cuda_array_interface__`: CuPy, torch), copied device to device
        after its producer's stream. device_output: the logits as a DeviceArray over the head's output buffer (valid
        until the next call; no copy to the host). Calls with either run without CUDA graphs. sync=False (with
        device_output): return without waiting for the head; its results are ordered on the head's stream (the
        caller's, with `stream=`); timings are not read, and the next call waits before reusing the buffers."""
        if not sync and not device_output:
            raise InputError("sync=False leaves the results on the GPU: expected device_output=True with it.")
        with self._lock:
            cuda.set_device(self.head.device)  # on this thread too: the current device is per thread
            if self._pending:  # the last call did not wait: its copies may still read our pinned buffers
                self.head.stream.synchronize()
                self._pending = False
            return self._run_locked(pixels, tokens, text_features, device_output, sync)

    def _run_locked(self, pixels, tokens, text_features, device_output: bool, sync: bool = True) -> Result:
        w, m, timings = self.wiring, self.marks, Timings()
        device = as_device_array(pixels)
        if device is not None:
            check_spec(next(s for s in self.image.input_specs if s.name == w.image_input), device.dtype, device.shape)
            self.image.io.set_shapes({w.image_input: device.shape})
        else:
            image_feeds = {w.image_input: pixels}
            self.image.check(image_feeds)
            self.image.io.set_inputs(image_feeds)
        self._device_input, self._device_output = device, device_output
        graphs = device is None and not device_output  # a graph would bake in the caller's pointer or the copy-out
        n = device.shape[0] if device is not None else len(pixels)
        with_text = text_features is None  # else the pipeline's text cache gave them
        if with_text:
            text_feeds = w.text_feeds(tokens)
            self.text.check(text_feeds)
            self.text.io.set_inputs(text_feeds)
            self._head_shapes(n, self.text.io.layout(w.text_output)[1][0])
            self._run((n, tokens[w.text_inputs[0]].shape[1]), self._enqueue, (self.image, self.text, self.head), graphs,
                      sync)
            if not sync:
                self.text.stream.synchronize()  # the few KiB of text features the text cache keeps, not the head
            text_features = self.text.io.outputs()[w.text_output]
        else:
            self._head_shapes(n, text_features.shape[1])
            self.head.io.write_input(w.text_output, text_features)
            self._run(("text given", n), lambda: self._enqueue(with_text=False), (self.image, self.head), graphs, sync)
        if sync:
            if with_text:
                timings.text_ms = m["text1"].elapsed_ms(m["text0"])
                timings.branches_ms = max(m["image1"].elapsed_ms(m["start"]), m["text1"].elapsed_ms(m["start"]))
            else:
                timings.branches_ms = m["image1"].elapsed_ms(m["start"])
            timings.image_ms = m["image1"].elapsed_ms(m["image0"])
            timings.head_ms = m["head1"].elapsed_ms(m["start"]) - timings.branches_ms
        else:
            self._pending = True
        if device_output:
            logits = DeviceArray(self.head.io.device_address(w.logits), self.head.io.output_shape(w.logits),
                                 self.head.io.layout(w.logits)[0], self.head.stream.ptr, owner=self)
        else:
            logits = self.head.io.outputs()[w.logits]
        return Result(logits, text_features, timings)

    def _head_shapes(self, n: int, text_width: int) -> None:
        w = self.wiring
        self.head.io.set_shapes({w.image_output: (n, *self.image.io.layout(w.image_output)[1]),
                              w.text_output: (n, text_width)})

    def _run(self, key: tuple, enqueue, backends: tuple, graphs: bool = True, sync: bool = True) -> None:
        """Enqueue one call, eagerly or as the CUDA graph of its shape `key`, and wait for it (one host sync). The one
        graph kept is of the contexts' current shape: a call of another shape closes it and runs eagerly, and the
        next call of that shape, with every context having last enqueued eagerly at it (TensorRT's first enqueue at
        a new shape does set-up work a capture must not record), is captured."""
        shapes = {id(b): b.io.input_shapes() for b in backends}
        use = graphs and self.use_graphs
        if use and self.graph_key != key:
            self._drop_graph()  # of another shape: never replayed after the contexts ran this one
            if all(self._enqueued.get(k) == v for k, v in shapes.items()):
                self.graph_key, self.graph = key, self._capture(key, enqueue, backends)
        if use and self.graph is not None and self.graph_key == key:
            self.graph.launch()
        else:
            if not use:
                self._drop_graph()  # an eager call of its own kind (device input or output) moved the contexts too
            enqueue()
            self._enqueued.update(shapes)
        if sync:
            self.head.stream.synchronize()

    def _drop_graph(self) -> None:
        if self.graph is not None:
            self.graph.close()
        self.graph_key, self.graph = None, None

    def _capture(self, key: tuple, enqueue, backends: tuple):
        """A CUDA graph of the whole call for this shape, or None (run eagerly) where the engines cannot be
        captured: some TensorRT engines refuse stream capture, and the pipeline must still run. Each context is
        asked first whether it can be captured."""
        shape = f"batch {key[1]} with text features given" if key[0] == "text given" else \
            f"batch {key[0]}, sequence {key[1]}"
        refusing = [b.record.path for b in backends if not b.capturable()]
        if refusing:
            warnings.warn(f"CUDA graphs: {', '.join(refusing)} cannot be stream-captured (TensorRT says so); {shape} "
                          "runs without a graph. Rebuild with `fusionrt build --cuda-graphs`.", RuntimeWarning,
                          stacklevel=4)
            return None
        self._capturing = True
        try:
            return cuda.Graph(self.head.stream, enqueue, forked=(self.image.stream, self.text.stream))
        except BackendUnavailable as exc:
            warnings.warn(f"CUDA graph capture failed for {shape} ({exc}); this shape runs without a graph.",
                          RuntimeWarning, stacklevel=4)
            return None
        finally:
            self._capturing = False

    def close(self) -> None:
        """Wait for a call that returned without waiting (sync=False: the head may still read the encoders'
        buffers), then free the graph and the events, all of them even if one fails (the first error raised)."""
        errors = []
        for step in ([self.head.stream.synchronize] if self._pending else []) + [self._drop_graph] + \
                [e.close for e in (*self.joins.values(), *self.marks.values())]:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - free the rest, then raise the first
                errors.append(exc)
        self._pending, self.joins, self.marks = False, {}, {}
        if errors:
            raise errors[0]
