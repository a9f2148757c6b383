"""GPU readings from NVML, where a GPU and NVIDIA's ``pynvml`` (package nvidia-ml-py) are present.

Optional by design: the farm does not depend on pynvml. ``open_nvml()`` returns None when the module
is missing, NVML cannot start (no driver) or there is no GPU; otherwise a function that reads every
GPU now. farm.observe.metrics turns the readings into gauges at scrape time.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger("farm.nvml")


@dataclass(frozen=True)
class GpuReading:
    index: int
    name: str
    utilization: float  # 0..1, the share of the last sample period a kernel ran
    memory_used: int  # bytes
    memory_total: int  # bytes


def open_nvml() -> Callable[[], list[GpuReading]] | None:
    """A reader of this machine's GPUs, or None where there is no NVML or no GPU."""
    try:
        nvml = importlib.import_module("pynvml")
    except ImportError:
        return None
    try:
        nvml.nvmlInit()
        count = nvml.nvmlDeviceGetCount()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded...: no GPU here
        log.debug("nvml.unavailable", error=str(exc))
        return None
    if not count:
        return None

    def read() -> list[GpuReading]:
        out = []
        for i in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                name = nvml.nvmlDeviceGetName(handle)
                util = nvml.nvmlDeviceGetUtilizationRates(handle)
                mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception as exc:  # a GPU fell off the bus, or a MIG slice refuses: skip it this time
                log.debug("nvml.read_failed", gpu=i, error=str(exc))
                continue
            out.append(
                GpuReading(
                    i,
                    name.decode() if isinstance(name, bytes) else str(name),
                    util.gpu / 100.0,
                    int(mem.used),
                    int(mem.total),
                )
            )
        return out

    return read
