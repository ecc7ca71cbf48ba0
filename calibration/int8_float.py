"""The float under int8-ov's INT8 parts. OpenVINO computes what is not INT8 (the layers kept float, softmax, norms,
the requantizing around them) in BF16 by default on a CPU that has BF16: faster on AMX, but its rounding adds to the
INT8 error and may flip samples that INT8 over FP32 does not. So where the CPU has BF16, calibration judges every
int8-ov configuration under both floats, and the policy keeps BF16 under its INT8 parts only where its choice passes
and runs faster here; it says which, and why (`Policy.int8_float`, read by the resolver wherever the policy runs)."""

from __future__ import annotations

from fusionrt.runtime.precision import format_precision
from fusionrt.runtime.manifest import COMPONENTS
from fusionrt.runtime.resolve import resolve

__all__ = ["int8_floats", "pick_int8_float", "MARGIN"]

MARGIN = 0.95  # BF16 under INT8 is taken only where more than 5 % faster: a smaller gain reads as timing noise


def int8_floats() -> tuple:
    """The floats under INT8 parts to judge on this CPU: ('fp32', 'bf16') where OpenVINO may use BF16 kernels here
    (under ONEDNN_MAX_CPU_ISA too), else ('fp32',)."""
    return ("fp32", "bf16") if resolve("openvino", "int8", "CPU").float_precision == "bf16" else ("fp32",)


def pick_int8_float(chosen: dict, judged: dict) -> tuple:
    """(float, why): 'bf16' where the configuration chosen with BF16 under the INT8 parts passed and ran more than
    5 % faster than the one chosen with FP32 under them (both timed here), else 'fp32'. chosen: float -> the Judged
    its policy chose (None where nothing passed); judged: float -> every Judged under it."""
    mine = chosen.get("fp32")
    if "bf16" not in chosen:
        return "fp32", ("FP32 under the INT8 parts: this CPU has no BF16 kernels for OpenVINO, so FP32 is what was "
                        "judged, and what runs on CPUs that have them")
    other = chosen["bf16"]
    faster = mine is None or other is not None and other.seconds < MARGIN * mine.seconds
    if other is not None and other.passed and _has_int8(other) and faster:
        against = f" against {_name(mine)}'s {_ms(mine)} with FP32 under them" if mine is not None else (
            "; nothing passed with FP32 under them")
        return "bf16", f"BF16 under the INT8 parts: {_name(other)} passed with it and ran {_ms(other)}{against}"
    if mine is None or not _has_int8(mine):
        return "fp32", "FP32 under the INT8 parts: no configuration with an INT8 part was chosen under either float"
    twin = next((j for j in judged["bf16"] if j.precision == mine.precision), None)
    if twin is not None and not twin.passed:
        split = "report" if not twin.passed_report else "selection"
        outcome = getattr(twin, split)
        return "fp32", (f"FP32 under the INT8 parts: with BF16 under them {_name(twin)} flipped {outcome['flips']} of "
                        f"{outcome.get('n', '?')} {split} samples ({outcome['rule']}), so they keep FP32")
    theirs = f": {_name(other)} {_ms(other)}" if other is not None else ""
    margin = f"{(1 - MARGIN) * 100:.0f} %"
    return "fp32", (f"FP32 under the INT8 parts: BF16 under them passed but was not more than {margin} faster "
                    f"here{theirs} against {_name(mine)} {_ms(mine)}")


def _has_int8(judged) -> bool:
    return "int8" in judged.precision


def _name(judged) -> str:
    return format_precision(dict(zip(COMPONENTS, judged.precision)))


def _ms(judged) -> str:
    return f"{1e3 * judged.seconds:.1f} ms" if judged.seconds is not None else "(not timed)"
