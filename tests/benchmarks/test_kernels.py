import json
import os
import subprocess
import sys

import pytest

from fusionrt.benchmarks.kernels import isas, kernels
from fusionrt.runtime.bundle import Bundle
from fusionrt.runtime.manifest import COMPONENTS

pytest.importorskip("openvino", reason="the kernel listing reads OpenVINO's profiling (fusionrt[openvino])")


def test_every_part_lists_the_kernels_that_ran(calibrated):
    listing = kernels(Bundle.open(calibrated[0]), "int8", seq=16)
    assert set(listing) == set(COMPONENTS)
    for part in listing.values():
        assert part["layers"] and all(sum(c.values()) > 0 for c in part["layers"].values())
    assert sum(isas(listing).values()) > 0


def test_an_isa_limit_shows_in_the_kernels_that_ran(calibrated):
    """oneDNN reads ONEDNN_MAX_CPU_ISA when it loads, so the limited listing runs in a process of its own: under AVX2
    no math layer (convolution, fully connected) may run an AVX-512 or AMX kernel, whatever this CPU has."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-m", "fusionrt.benchmarks.kernels", str(calibrated[0]), "--precision",
                          "int8", "--seq", "16", "--json"], env=env, capture_output=True, text=True, check=True)
    listing = json.loads(out.stdout)
    assert listing["cpu"]["isa_limit"] == "AVX2"
    assert not {"amx", "avx512"} & set(listing["math_isas"]), listing["math_isas"]
    assert "avx2" in listing["math_isas"], listing["math_isas"]
