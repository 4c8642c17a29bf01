"""Issue 9 figures: ingest time and peak memory at 10^5 and 10^6 Hamiltonians, SQLite and PostgreSQL.

Each ingest runs in its own process (``python -m bench.ingest_child``) so that its peak resident
memory (``ru_maxrss`` from ``wait4``) is the ingest's alone: interpreter, imports and all.

10^5 is the seed sweep (100,000 Hamiltonians, 2 artifacts each: 300,000 nodes). 10^6 repeats its
rows ten times under new keys (3,000,000 nodes), each pointing at the same written arrays, so every
file the ingest opens to verify exists and holds what the manifest says.

With ``SWEEPCAT_BASELINE_SRC=/path/to/older/src``, the same ingests run on that source tree too, in
the same run (how the "before" figures in BENCHMARKS.md were taken).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .bench_catalog import seed_manifests
from .common import DATA, Figure, Run

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support: real PostgreSQL
from tests.support.servers import PostgresCluster  # noqa: E402

REPEAT_10X = 10


def manifests_1m() -> Path:
    """The seed manifests, their rows repeated ten times under new keys (written once)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out = DATA / "manifests_1m"
    ham_out, art_out = out / "NiPS3_batched_hamiltonians.parquet", out / "NiPS3_batched_artifacts.parquet"
    if ham_out.exists() and art_out.exists():
        return out
    src = seed_manifests()
    tmp = Path(tempfile.mkdtemp(dir=DATA))
    for name in ("NiPS3_batched_hamiltonians.parquet", "NiPS3_batched_artifacts.parquet"):
        table = pq.read_table(src / name)
        with pq.ParquetWriter(tmp / name, table.schema) as writer:
            for copy in range(REPEAT_10X):
                part = table
                for col in ("huid", "key"):
                    if col in part.column_names:
                        i = part.column_names.index(col)
                        part = part.set_column(i, col, pc.binary_join_element_wise(part.column(col),
                                                                                   pa.scalar(f"_r{copy}"), ""))
                writer.write_table(part, row_group_size=65_536)
    out.mkdir(exist_ok=True)
    for name, target in (("NiPS3_batched_hamiltonians.parquet", ham_out), ("NiPS3_batched_artifacts.parquet", art_out)):
        os.replace(tmp / name, target)
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def measure(manifests: Path, catalog: str, src: str | None = None) -> tuple[float, float]:
    """(seconds, peak resident MB) of one ingest in a fresh process."""
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "bench.ingest_child", str(manifests), catalog], env=env,
                            cwd=Path(__file__).resolve().parents[1])
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"ingest of {manifests} into {catalog} failed ({proc.returncode})")
    return seconds, usage.ru_maxrss / 1024


def run(repeat: int = 1) -> Run:
    from sweepcat.catalog.schema import ensure_catalog, parse_catalog

    sizes = {"10^5": seed_manifests, "10^6": manifests_1m}
    only = os.environ.get("SWEEPCAT_BENCH_SIZES")  # e.g. "10^5": one size only
    baseline = os.environ.get("SWEEPCAT_BASELINE_SRC")
    trees = [("", None)] + ([(" (baseline source)", baseline)] if baseline else [])
    result = Run("ingest" + (f"-{only}" if only else ""))
    work = Path(tempfile.mkdtemp(prefix="sweepcat-bench-ingest-"))
    pg = PostgresCluster(durable=True).start()
    try:
        n = 0
        for label, make in sizes.items():
            if only and label not in only.split(","):
                continue
            manifests = make()
            for backend in ("SQLite", "PostgreSQL"):
                secs: dict[str, list[float]] = {suffix: [] for suffix, _ in trees}
                peaks: dict[str, list[float]] = {suffix: [] for suffix, _ in trees}
                for _ in range(repeat):
                    for suffix, src in trees:  # trees alternate, so drift on a shared machine hits both alike
                        n += 1
                        catalog = str(work / f"c{n}.db") if backend == "SQLite" else pg.create_database(f"c{n}")
                        ensure_catalog(parse_catalog(catalog))  # Tiled's initializer: not timed
                        s, mb = measure(manifests, catalog, src)
                        secs[suffix].append(s)
                        peaks[suffix].append(mb)
                        if backend == "SQLite":
                            for f in work.glob(f"c{n}.db*"):
                                f.unlink()
                for suffix, _ in trees:
                    what = f"{label} Hamiltonians into {backend}{suffix}"
                    result.figures.append(Figure(f"ingest time, {what}", "s", secs[suffix],
                                                 target="<= 11.3 s (10^5, SQLite)" if label == "10^5"
                                                 and backend == "SQLite" else ""))
                    result.figures.append(Figure(f"ingest peak RSS, {what}", "MB", peaks[suffix],
                                                 target="<= 1024 MB, flat" if label == "10^6" else ""))
    finally:
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    return result
