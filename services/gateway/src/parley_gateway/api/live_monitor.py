"""What the monitor page shows: recent turns' stage timings, recent errors, and the machine's load.

The gateway's outboxes show it every event they send to a client (`observe`); it keeps the
last turns' `response.done` timings and the last `error` events, bounded. `snapshot` adds
the service registry, CPU and memory (psutil) and, where NVML finds NVIDIA GPUs, their
utilisation and memory; `/v1/monitor/stream` pushes one snapshot a second to the page.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import psutil

TURNS_KEPT = 50
ERRORS_KEPT = 20


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Monitor:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.turns: deque[dict[str, Any]] = deque(maxlen=TURNS_KEPT)
        self.errors: deque[dict[str, Any]] = deque(maxlen=ERRORS_KEPT)
        self._gpus = _Gpus()

    def observe(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "response.done":
            timings = {k: v for k, v in (message.get("timings") or {}).items() if isinstance(v, int | float)}
            self.turns.append({"at": self.clock(), "status": message.get("status"), "timings": timings})
        elif kind == "error":
            self.errors.append(
                {"at": self.clock(), "code": message.get("code"), "message": str(message.get("message", ""))[:300]}
            )

    def stage_summary(self) -> dict[str, dict[str, float]]:
        """p50/p95 of each stage over the kept turns that have it."""
        summary: dict[str, dict[str, float]] = {}
        names = {name for turn in self.turns for name in turn["timings"]}
        for name in sorted(names):
            values = [float(t["timings"][name]) for t in self.turns if name in t["timings"]]
            summary[name] = {
                "p50": round(statistics.median(values), 1),
                "p95": round(_percentile(values, 0.95), 1),
                "n": len(values),
            }
        return summary

    def snapshot(self, services: dict[str, Any], sessions: int) -> dict[str, Any]:
        memory = psutil.virtual_memory()
        return {
            "at": self.clock(),
            "services": services,
            "sessions": sessions,
            "turns": list(self.turns)[-20:],
            "stages": self.stage_summary(),
            "errors": list(self.errors),
            "system": {
                "cpu_percent": psutil.cpu_percent(interval=None),
                "cpus": psutil.cpu_count(),
                "memory_used_bytes": memory.total - memory.available,
                "memory_total_bytes": memory.total,
            },
            "gpus": self._gpus.read(),
        }


class _Gpus:
    """NVIDIA GPUs through NVML, if there are any (nvidia-ml-py; no NVML library means none)."""

    def __init__(self) -> None:
        self._nvml: Any = None
        with contextlib.suppress(Exception):
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml

    def read(self) -> list[dict[str, Any]]:
        nvml = self._nvml
        if nvml is None:
            return []
        found = []
        with contextlib.suppress(Exception):
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                found.append(
                    {
                        "index": index,
                        "name": str(nvml.nvmlDeviceGetName(handle)),
                        "utilization_percent": nvml.nvmlDeviceGetUtilizationRates(handle).gpu,
                        "memory_used_bytes": memory.used,
                        "memory_total_bytes": memory.total,
                    }
                )
        return found
