"""Shared pieces of the benchmarks: seed-scale data, timing, result records."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("SWEEPCAT_BENCH_DATA", HERE / "_data"))
RESULTS = HERE / "results"


@dataclass
class Figure:
    name: str
    unit: str
    samples: list[float]
    target: str = ""
    baseline: str = ""
    notes: str = ""

    @property
    def p50(self) -> float:
        return statistics.median(self.samples)

    @property
    def best(self) -> float:
        return min(self.samples)

    def row(self) -> str:
        return (f"| {self.name} | {self.p50:.3f} {self.unit} | {self.best:.3f} {self.unit} | {len(self.samples)} "
                f"| {self.target} | {self.baseline} |")


@dataclass
class Run:
    bench: str
    figures: list[Figure] = field(default_factory=list)
    machine: dict = field(default_factory=lambda: {
        "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
    })
    when: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S"))

    def save(self) -> Path:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"{self.bench}.json"
        path.write_text(json.dumps(asdict(self), indent=1, default=str))
        return path

    def table(self) -> str:
        head = "| figure | p50 | best | n | target | baseline (same run) |\n|---|---|---|---|---|---|"
        return "\n".join([head] + [f.row() for f in self.figures])


def timeit(func: Callable[[], object], repeat: int = 5, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        func()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        func()
        samples.append(time.perf_counter() - t0)
    return samples


def wall(cmd: list[str], repeat: int = 5, warmup: int = 1) -> list[float]:
    """Wall time of a whole command (interpreter start and imports included)."""
    def once() -> None:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return timeit(once, repeat=repeat, warmup=warmup)


def sweepcat_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "sweepcat.cli", *args]


def seed_data() -> Path:
    """The seed-scale demo data (100,000 batched Hamiltonians), made once and reused."""
    marker = DATA / ".complete-seed-v3"  # v3: every array written (unwritten chunks would "read" for free)
    if not marker.exists():
        from sweepcat import demodata

        print(f"writing seed-scale demo data into {DATA} (once) ...", flush=True)
        demodata.write_demo(DATA, "seed")
        marker.write_text("ok")
    return DATA
