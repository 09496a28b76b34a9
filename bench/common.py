"""What every benchmark shares: timing with peak memory, a printed table, and JSON under bench/results/."""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

RESULTS = Path(__file__).parent / "results"


@dataclass
class Measurement:
    case: str
    role: str  # "shoplake" or "baseline"
    seconds: float
    rows: int
    peak_python_rss_mb: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else float("inf")


def measure(case: str, role: str, rows: int, work: Callable[[], Any], repeat: int = 2) -> Measurement:
    """Best time of ``repeat`` runs (the first one also warms the JVM); peak memory over all runs."""
    runs = [_measure_once(case, role, rows, work) for _ in range(repeat)]
    best = min(runs, key=lambda m: m.seconds)
    best.peak_python_rss_mb = max(m.peak_python_rss_mb for m in runs)
    return best


def _measure_once(case: str, role: str, rows: int, work: Callable[[], Any]) -> Measurement:
    """Run ``work`` once; sample this Python process's resident memory every 20 ms for the peak above the start."""
    process = psutil.Process(os.getpid())
    start_rss = process.memory_info().rss
    peak = [start_rss]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    began = time.perf_counter()
    try:
        work()
    finally:
        seconds = time.perf_counter() - began
        done.set()
        sampler.join()
    return Measurement(case, role, seconds, rows, (peak[0] - start_rss) / 2**20)


def report(
    name: str, measurements: list[Measurement], reference: str, context: dict[str, Any], *, by_rate: bool = False
) -> Path:
    """Print the table and write bench/results/<name>.json. The ratio is case time / reference time, or with
    ``by_rate`` case rows/s ÷ reference rows/s (a speed-up; for cases that measure different numbers of rows)."""
    by_case = {m.case: m for m in measurements}
    base = by_case[reference]
    label = ("speed ÷ " if by_rate else "x ") + reference
    print(f"\n{name}  ({', '.join(f'{k}={v}' for k, v in context.items())})")
    print(f"{'case':<44} {'role':<9} {'seconds':>8} {'rows/s':>12} {label:>16} {'py peak MB':>11}")
    for m in measurements:
        ratio = m.rows_per_second / base.rows_per_second if by_rate else m.seconds / base.seconds
        print(f"{m.case:<44} {m.role:<9} {m.seconds:>8.2f} {m.rows_per_second:>12,.0f} {ratio:>16.2f} "
              f"{m.peak_python_rss_mb:>11.0f}")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        "benchmark": name,
        "reference": reference,
        "context": context,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "measurements": [asdict(m) | {"rows_per_second": m.rows_per_second} for m in measurements],
    }
    path.write_text(json.dumps(payload, indent=2))
    print(f"results: {path}")
    return path
