"""What kind of CPU this is, as far as INT8 and 16-bit float kernels care: ONNX Runtime and OpenVINO pick different
kernels on AMX, AVX-512 VNNI and AVX2-only machines, so every figure and every tuning result names the kind."""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import asdict, dataclass

from fusionrt.runtime.environment import isa_limit

__all__ = ["CpuKind", "cpu_kind", "cpu_info"]

# /proc/cpuinfo flag -> what it means to the kernels
_FLAGS = {"avx2": ("avx2",), "avx512": ("avx512f",), "vnni": ("avx512_vnni", "avx_vnni"),
          "bf16": ("avx512_bf16", "amx_bf16"), "amx": ("amx_int8", "amx_tile")}


@dataclass(frozen=True)
class CpuKind:
    vendor: str  # "GenuineIntel", "AuthenticAMD", ...; "" where unknown
    model: str
    cores: int  # the cores this process may run on
    avx2: bool | None  # None: the OS does not say (not Linux)
    avx512: bool | None
    vnni: bool | None
    bf16: bool | None
    amx: bool | None
    isa_limit: str = ""  # ONEDNN_MAX_CPU_ISA when set: oneDNN (OpenVINO's CPU kernels) uses no ISA past it

    @property
    def label(self) -> str:
        """One line for reports: 'AuthenticAMD AMD EPYC, 2 cores, AVX2, no VNNI, no BF16, no AMX'."""
        def has(name):
            value = getattr(self, name)
            return name.upper() if value else f"no {name.upper()}" if value is False else f"{name.upper()} unknown"
        isa = "AVX-512" if self.avx512 else "AVX2" if self.avx2 else "no AVX2" if self.avx2 is False else "ISA unknown"
        limit = f", oneDNN ISA limited to {self.isa_limit}" if self.isa_limit else ""
        return (f"{self.vendor} {self.model}".strip() + f", {self.cores} cores, {isa}, "
                + ", ".join(has(n) for n in ("vnni", "bf16", "amx")) + limit)

    @property
    def key(self) -> str:
        """What distinguishes kernels: same key, same INT8 and float arithmetic and about the same speed."""
        flags = "".join(k[0] if getattr(self, k) else "-" for k in ("avx2", "avx512", "vnni", "bf16", "amx"))
        return f"{self.vendor}|{self.model}|{self.cores}|{flags}|{self.isa_limit}"

    def to_dict(self) -> dict:
        return {**asdict(self), "label": self.label}


@functools.lru_cache(maxsize=1)
def cpu_kind() -> CpuKind:
    vendor, model, flags = "", platform.processor(), None
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "vendor_id" and not vendor:
                    vendor = value
                elif key == "model name":
                    model = value
                elif key == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    found = {name: (None if flags is None else bool(set(names) & flags)) for name, names in _FLAGS.items()}
    return CpuKind(vendor, model, cores, isa_limit=isa_limit(), **found)


def cpu_info() -> dict:
    """The kind as a dict (model, vnni, amx, ... and label), for reports and the manifest."""
    return cpu_kind().to_dict()
