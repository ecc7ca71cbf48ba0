"""The CPU kind as oneDNN (OpenVINO's CPU kernels) sees it under ONEDNN_MAX_CPU_ISA: what decides OpenVINO's float,
its INT8 linear form and whether an int8-ov policy judged on one kind holds on another."""

import dataclasses

import pytest

from fusionrt.runtime import cpu
from fusionrt.runtime.cpu import CpuKind
from fusionrt.runtime.manifest import Policy
from fusionrt.runtime.resolve import resolve
from fusionrt.runtime.tune import judged_elsewhere

XEON_AMX = CpuKind("GenuineIntel", "Xeon", 2, True, True, True, True, True)
EPYC_AVX2 = CpuKind("AuthenticAMD", "EPYC", 2, True, False, False, False, False)
FLAGS = ("avx2", "avx512", "vnni", "bf16", "amx")


def _flags(kind) -> tuple:
    return tuple(n for n in FLAGS if getattr(kind.for_onednn(), n))


@pytest.mark.parametrize("limit, left", [
    ("", FLAGS), ("DEFAULT", FLAGS), ("no-such-isa", FLAGS),  # oneDNN ignores a value it does not know
    ("SSE41", ()), ("AVX2", ("avx2",)), ("avx2", ("avx2",)), ("AVX2_VNNI", ("avx2", "vnni")),
    ("AVX512_CORE", ("avx2", "avx512")),  # AVX-512 without VNNI: its mask holds no VNNI level
    ("AVX512_CORE_VNNI", ("avx2", "avx512", "vnni")), ("AVX512_CORE_BF16", ("avx2", "avx512", "vnni", "bf16")),
    ("AVX512_CORE_AMX", FLAGS), ("AVX10_1_512_AMX_FP16", FLAGS)])
def test_the_isa_limit_turns_off_what_oneDNN_may_not_use(limit, left):
    assert _flags(dataclasses.replace(XEON_AMX, isa_limit=limit)) == left


def test_a_limit_never_turns_a_flag_on_and_an_unknown_stays_unknown():
    unknown = CpuKind("", "", 1, True, None, None, None, None, "AVX512_CORE_AMX")
    assert dataclasses.replace(EPYC_AVX2, isa_limit="AVX512_CORE_AMX").for_onednn() == dataclasses.replace(
        EPYC_AVX2, isa_limit="AVX512_CORE_AMX")
    assert unknown.for_onednn() == unknown


def test_a_kind_survives_the_manifest_and_an_old_record_reads_as_unknown():
    limited = dataclasses.replace(XEON_AMX, isa_limit="AVX2")
    assert CpuKind.from_dict(limited.to_dict()) == limited
    old = CpuKind.from_dict({"label": "Some Xeon", "vnni": True})  # a policy from before the kind was recorded
    assert old.vnni is True and old.amx is None and old.isa_limit == ""


@pytest.mark.parametrize("limit, half", [("", "bf16"), ("AVX512_CORE_BF16", "bf16"), ("AVX512_CORE_VNNI", "fp32"),
                                         ("AVX2", "fp32")])
def test_openvinos_cpu_float_is_bf16_only_where_onednn_may_use_it(monkeypatch, limit, half):
    monkeypatch.setattr(cpu, "cpu_kind", lambda: dataclasses.replace(XEON_AMX, isa_limit=limit))
    execution = resolve("openvino", "fp16", "CPU")
    assert execution.float_precision == half
    assert execution.hints == {"INFERENCE_PRECISION_HINT": {"bf16": "bf16", "fp32": "f32"}[half]}


def test_an_int8_ov_policy_holds_where_onednn_runs_the_same_kernels(monkeypatch):
    import fusionrt.runtime.tune as tune

    judged = Policy({"image_encoder": "int8"}, "", portable=False,
                    measured_on=dataclasses.replace(XEON_AMX, isa_limit="AVX2").to_dict())
    for here, holds in [(XEON_AMX, False),  # the limit lifted: AMX kernels, not the AVX2 ones judged
                        (dataclasses.replace(XEON_AMX, isa_limit="AVX2"), True),
                        (EPYC_AVX2, True),  # the same AVX2 kernels
                        (dataclasses.replace(XEON_AMX, isa_limit="AVX512_CORE_VNNI"), False)]:
        monkeypatch.setattr(tune, "cpu_kind", lambda here=here: here)
        assert (judged_elsewhere(judged) == "") == holds, here
    assert judged_elsewhere(dataclasses.replace(judged, portable=True)) == ""
