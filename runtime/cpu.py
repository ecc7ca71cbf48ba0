"""What kind of CPU this is, as far as INT8 and 16-bit float kernels care: ONNX Runtime and OpenVINO pick different
kernels on AMX, AVX-512 VNNI and AVX2-only machines, so every figure and every tuning result names the kind."""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
from dataclasses import asdict, dataclass

from fusionrt.runtime.environment import isa_limit

__all__ = ["CpuKind", "cpu_kind", "cpu_info"]

# /proc/cpuinfo flag -> what it means to the kernels
_FLAGS = {"avx2": ("avx2",), "avx512": ("avx512f",), "vnni": ("avx512_vnni", "avx_vnni"),
          "bf16": ("avx512_bf16", "amx_bf16"), "amx": ("amx_int8", "amx_tile")}
# oneDNN's ISA levels (ONEDNN_MAX_CPU_ISA) as its bit masks (dnnl_cpu_isa_t): under a limit it uses an ISA only where
# the limit's mask holds the ISA's; AVX512_CORE (0x27) holds no VNNI. An unknown value oneDNN ignores: no limit.
_ONEDNN_MASKS = {"SSE41": 0x1, "AVX": 0x3, "AVX2": 0x7, "AVX2_VNNI": 0xf, "AVX2_VNNI_2": 0x1f, "AVX512_CORE": 0x27,
                 "AVX512_CORE_VNNI": 0x67, "AVX512_CORE_BF16": 0xe7, "AVX10_1_512": 0x1ef, "AVX512_CORE_FP16": 0x1ef,
                 "AVX10_1_512_AMX": 0xfef, "AVX512_CORE_AMX": 0xfef, "AVX10_1_512_AMX_FP16": 0x1fef,
                 "AVX512_CORE_AMX_FP16": 0x1fef}
# the ISA masks a flag of ours needs one of (VNNI: AVX2's or AVX-512's)
_NEEDS = {"avx2": (0x7,), "avx512": (0x27,), "vnni": (0xf, 0x67), "bf16": (0xe7,), "amx": (0xfef,)}


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

    @classmethod
    def from_dict(cls, d) -> "CpuKind":
        """The kind `to_dict` wrote (a manifest's measured_on); a field it lacks is unknown (None), the limit none."""
        return cls(d.get("vendor", ""), d.get("model", ""), d.get("cores", 0), isa_limit=d.get("isa_limit") or "",
                   **{n: d.get(n) for n in _FLAGS})

    def for_onednn(self) -> "CpuKind":
        """This kind as oneDNN, OpenVINO's CPU kernels, sees it: the flags its ISA limit leaves on (an AMX Xeon under
        ONEDNN_MAX_CPU_ISA=AVX2: no AVX-512, VNNI, BF16 or AMX), which decide OpenVINO's INT8 kernels and its float."""
        mask = _ONEDNN_MASKS.get(self.isa_limit.upper())
        if mask is None:
            return self
        return dataclasses.replace(self, **{n: any(need & mask == need for need in needs)
                                            for n, needs in _NEEDS.items() if getattr(self, n)})

    def same_kernels(self, other: "CpuKind") -> bool:
        """OpenVINO's kernels are alike on both kinds: each flag oneDNN may use, under each one's ISA limit, is the same
        where both kinds know it."""
        mine, theirs = self.for_onednn(), other.for_onednn()
        return all(getattr(mine, n) == getattr(theirs, n) for n in _FLAGS
                   if getattr(mine, n) is not None and getattr(theirs, n) is not None)


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
