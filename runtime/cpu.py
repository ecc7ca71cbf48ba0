"""What this CPU offers for INT8: ONNX Runtime's U8S8 kernels are exact with VNNI and saturate 16-bit pair sums
without it (AVX2/AVX-512 `vpmaddubsw`), so a CPU INT8 fidelity figure holds for CPUs of the same kind."""

from __future__ import annotations

import functools
import platform

__all__ = ["cpu_info"]


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict:
    """{'model', 'vnni', 'amx'}; vnni/amx are None where /proc/cpuinfo cannot be read (not Linux)."""
    model, flags = platform.processor(), None
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    if flags is None:
        return {"model": model, "vnni": None, "amx": None}
    return {"model": model, "vnni": bool({"avx512_vnni", "avx_vnni"} & flags), "amx": "amx_int8" in flags}
