"""The PyTorch eager baseline: the same weights and the same prepared inputs as the bundle rows."""

from __future__ import annotations

import time

from fusionrt.runtime.optional import require
from fusionrt.runtime.execution import Timings

__all__ = ["TorchRunner"]


class TorchRunner:
    """Runs a FusionClassifier branch by branch (sequentially: eager PyTorch as users run it), timing each."""

    backend_name = "torch"

    def __init__(self, model, precision: str = "fp32", device: str = "cpu"):
        self.torch = require("torch", "the PyTorch baseline")
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"the PyTorch baseline runs fp32 or fp16, found '{precision}'")
        if precision == "fp16" and device == "cpu":
            raise ValueError("PyTorch FP16 is a GPU precision: pass device='cuda'")
        self.dtype = self.torch.float16 if precision == "fp16" else self.torch.float32
        self.device = self.torch.device(device)
        self.model = model.eval().to(self.device, self.dtype)
        self.timings = Timings()

    def _sync(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def _timed(self, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        self._sync()
        return out, (time.perf_counter() - t0) * 1e3

    def logits(self, pixels, tokens):
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(pixels).to(self.device, self.dtype)
            ids = torch.from_numpy(tokens["input_ids"]).to(self.device)
            mask = torch.from_numpy(tokens["attention_mask"]).to(self.device)
            image, self.timings.image_ms = self._timed(self.model.image_encoder, x)
            text, self.timings.text_ms = self._timed(self.model.text_encoder, ids, mask)
            logits, self.timings.head_ms = self._timed(self.model.head, image, text)
        return logits.float().cpu().numpy()

    def close(self):
        self.model = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
