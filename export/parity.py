"""Compare ONNX Runtime outputs with PyTorch's on the same real inputs; report every failure at once."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusionrt.runtime.errors import ParityError

__all__ = ["ParityCheck", "check_parity"]


@dataclass(frozen=True)
class ParityCheck:
    component: str
    output: str
    max_abs_diff: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.max_abs_diff)) and self.max_abs_diff <= self.tolerance


def check_parity(references: dict, candidates: dict, tolerances: dict) -> list:
    """references/candidates: (component, output) -> array. Raises ParityError naming every failed output."""
    checks = []
    for key, ref in references.items():
        diff = float(np.max(np.abs(np.asarray(candidates[key], dtype=np.float64) - np.asarray(ref, dtype=np.float64))))
        checks.append(ParityCheck(key[0], key[1], diff, tolerances[key]))
    failed = [c for c in checks if not c.ok]
    if failed:
        lines = "; ".join(f"{c.component}.{c.output}: max |diff| {c.max_abs_diff:.3g} > {c.tolerance:.1g}" for c in failed)
        raise ParityError(
            f"ONNX export disagrees with PyTorch on {len(failed)} output(s): {lines}. "
            "Try the other exporter (--exporter torchscript) or report the model; the bundle was not written."
        )
    return checks
