"""Energy of one evaluation, measured where the hardware reports it and estimated otherwise,
always saying which (docs/evaluation.md, "Energy and carbon"):

- `nvml`: NVIDIA GPUs, the driver's energy counter (nvmlDeviceGetTotalEnergyConsumption, in
  mJ, since the driver loaded) read before and after, summed over the GPUs in use (pynvml, from
  the `nvidia-ml-py` package, when it is installed and a driver answers);
- `rapl`: CPUs whose Running Average Power Limit counters are readable under
  /sys/class/powercap (intel-rapl:N package domains, in µJ, wrapping at max_energy_range_uj);
  counts the whole package, other processes included;
- `estimate`: duration x the device's rated power, TRELLIS_RATED_POWER_WATTS (default 65 W on
  a CPU, 300 W on a GPU), when neither counter can be read.

The worker reports watt-hours and the method; the web side turns them into CO2 with its
TRELLIS_CARBON_INTENSITY. Importing this module imports neither torch nor pynvml."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

POWERCAP = Path("/sys/class/powercap")
RATED_WATTS = {"cpu": 65.0, "cuda": 300.0}
METHODS = ("nvml", "rapl", "estimate")


def rated_watts(device: str) -> float:
    raw = os.environ.get("TRELLIS_RATED_POWER_WATTS", "")
    if raw:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"TRELLIS_RATED_POWER_WATTS={raw!r} is not a number") from None
        if value <= 0:
            raise ValueError(f"TRELLIS_RATED_POWER_WATTS={raw!r} must be above 0")
        return value
    return RATED_WATTS.get(device, RATED_WATTS["cpu"])


def _rapl_domains(root: Path) -> list[Path]:
    """Top-level package domains (intel-rapl:0, intel-rapl:1, ...) whose counter is readable."""
    found = []
    for domain in sorted(root.glob("intel-rapl:*")):
        if domain.name.count(":") != 1:  # a sub-domain (core, dram) is inside its package
            continue
        try:
            int((domain / "energy_uj").read_text())
        except (OSError, ValueError):
            continue
        found.append(domain)
    return found


def _read_uj(domain: Path) -> int:
    return int((domain / "energy_uj").read_text())


def _nvml_handles() -> tuple[Any, list[Any]] | None:
    try:
        import pynvml  # type: ignore[import-not-found,import-untyped,unused-ignore]

        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        for handle in handles:
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except Exception:
        return None
    return (pynvml, handles) if handles else None


@dataclass
class EnergyMeter:
    """Started before the evaluation, read after it: `reading(device)` is the payload's
    `energy` object."""

    powercap: Path = POWERCAP
    started: float = field(default_factory=time.monotonic)
    _nvml: tuple[Any, list[Any]] | None = None
    _nvml_start: list[int] = field(default_factory=list)
    _rapl: list[tuple[Path, int]] = field(default_factory=list)

    def start(self) -> EnergyMeter:
        self.started = time.monotonic()
        self._nvml = _nvml_handles()
        if self._nvml is not None:
            pynvml, handles = self._nvml
            self._nvml_start = [pynvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in handles]
        self._rapl = [(domain, _read_uj(domain)) for domain in _rapl_domains(self.powercap)]
        return self

    def reading(self, device: str) -> dict[str, Any]:
        seconds = max(time.monotonic() - self.started, 0.0)
        base = {"duration_seconds": round(seconds, 3), "device": device}
        if device == "cuda" and self._nvml is not None:
            pynvml, handles = self._nvml
            ends = [pynvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in handles]
            millijoules = sum(e - s for e, s in zip(ends, self._nvml_start, strict=True))
            return base | {
                "wh": round(millijoules / 3.6e6, 6),
                "method": "nvml",
                "detail": f"NVML energy counters of {len(handles)} GPU(s)",
            }
        if self._rapl:
            microjoules = 0
            for domain, start in self._rapl:
                end = _read_uj(domain)
                if end < start:  # the counter wrapped
                    end += int((domain / "max_energy_range_uj").read_text())
                microjoules += end - start
            return base | {
                "wh": round(microjoules / 3.6e9, 6),
                "method": "rapl",
                "detail": f"RAPL package counters ({len(self._rapl)} package(s), whole package)",
            }
        watts = rated_watts(device)
        return base | {
            "wh": round(watts * seconds / 3600, 6),
            "method": "estimate",
            "detail": f"{seconds:.1f} s x {watts:g} W rated power of the {device} "
            "(no readable NVML or RAPL counter)",
        }
