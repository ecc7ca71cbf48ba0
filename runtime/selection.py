"""Which backend, options and precision a `Pipeline.load` runs, and why: one decision, said in words.

- backend 'auto': the first GPU backend that runs here with the bundle's engines; else, with `tune`, the fastest of
  the installed CPU backends as measured here (`fusionrt.runtime.tune`); without `tune`, the first usable.
- precision None ('auto'): on a CPU backend running on the CPU, with `tune`, the fastest of the configurations
  calibration let pass, as measured here; else (a GPU device, TensorRT) calibration's choice for the backend's
  target. An explicit precision always wins.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Mapping

from fusionrt.runtime.backends import CPU_BACKENDS, backend_class, choose_backend, usable_backends
from fusionrt.runtime.errors import InputError
from fusionrt.runtime.precision import parse_precision

__all__ = ["Selection", "select"]


@dataclass(frozen=True)
class Selection:
    backend: str
    options: object  # the backend's typed options, resolved for how the branches run
    precision: Mapping[str, str]
    backend_reason: str
    precision_reason: str
    tuning: object = None  # the tune.Choice when it was measured (or read from the cache)


def select(bundle, backend: str, precision, concurrent: bool, tune: bool, options: Mapping) -> Selection:
    if backend == "auto":
        usable, skipped = usable_backends(bundle)
        cpu = [n for n in usable if n in CPU_BACKENDS]
        if tune and cpu and usable[0] in CPU_BACKENDS:
            return _measured(bundle, cpu, precision, concurrent, options, skipped)
    name, why = choose_backend(backend, bundle)
    opts = _options(name, backend, options, concurrent)
    backend_cls = backend_class(name)
    target = backend_cls.target(opts)
    if _asked(precision):
        return Selection(name, opts, parse_precision(precision, bundle.manifest.precision_for(target)), why,
                         "asked for")
    if tune and name in CPU_BACKENDS and backend_cls.device_of(opts) in ("cpu", "CPU"):
        from fusionrt.runtime.tune import tune as measure

        choice = measure(bundle, [(name, opts)])
        return Selection(name, opts, choice.precision, why, choice.why, choice)
    chosen = bundle.manifest.precision_for(target)
    _warn_if_judged_elsewhere(bundle, target, chosen)
    return Selection(name, opts, chosen, why, f"calibration's choice for {target}: {bundle.manifest.reason_for(target)}")


def _asked(precision) -> bool:
    return precision is not None and precision != "auto"


def _options(name: str, asked: str, options: Mapping, concurrent: bool):
    label = f"'{name}'" + (f" (what backend='{asked}' chose here)" if asked != name else "")
    return backend_class(name).Options.parse(label, options).for_branches(concurrent)


def _measured(bundle, names: list, precision, concurrent: bool, options: Mapping, skipped: list) -> Selection:
    """'auto' among the CPU backends: the fastest faithful configuration of any of them, measured here."""
    from fusionrt.runtime.tune import tune as measure

    backends, refused = [], []
    for name in names:
        try:
            backends.append((name, _options(name, "auto", options, concurrent)))
        except InputError as exc:  # an option this backend does not take: not a candidate
            refused.append(f"{name}: {exc}")
    if not backends:
        raise InputError("backend 'auto': no installed CPU backend takes these options: " + "; ".join(refused))
    asked = parse_precision(precision) if _asked(precision) else None
    choice = measure(bundle, backends, asked)
    opts = dict(backends)[choice.backend]
    notes = "; ".join(skipped + refused)
    why = f"auto: {choice.why}" + (f" ({notes})" if notes else "")
    return Selection(choice.backend, opts, choice.precision, why, "asked for" if asked else choice.why, choice)


def _warn_if_judged_elsewhere(bundle, target: str, chosen: Mapping[str, str]) -> None:
    from fusionrt.runtime.tune import judged_elsewhere

    policy = bundle.manifest.policies.get(target)
    reason = judged_elsewhere(policy) if policy is not None and "int8" in chosen.values() else ""
    if reason:
        warnings.warn(f"{bundle.root}: {reason}; its INT8 arithmetic may differ on this CPU. Re-run `fusionrt "
                      "calibrate` on this kind of CPU to judge it here, load with tune=True (which leaves it out), "
                      "or load with precision='fp32'.", RuntimeWarning, stacklevel=3)
