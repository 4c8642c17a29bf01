"""Issue 2 figures: manifest generation and inspect on the seed-scale dataset.

Baseline in the same run: the ingestion guide's generator template (a Python
loop that builds one dict per Hamiltonian and per artifact, reading parameters
through h5py per entity), which is how manifests are written by hand today.
"""

from __future__ import annotations

import glob
import shutil
import tempfile
from pathlib import Path

from .common import Figure, Run, seed_data, sweepcat_cmd, timeit, wall

PARAMS = ["F2_dd", "F2_dp", "F4_dd", "G1_dp", "G3_dp", "Gam_c", "sigma", "soc_c",
          "soc_v_i", "soc_v_n", "tenDq", "xoffset"]


def guide_template_generate(data_dir: Path, output_dir: Path) -> None:
    """What the guide's template does for layout B (one dict per row, per-entity h5py reads)."""
    import h5py
    import pandas as pd

    ham_rows, art_rows = [], []
    for filepath in sorted(glob.glob(f"{data_dir}/*.h5")):
        stem = Path(filepath).stem
        with h5py.File(filepath, "r") as f:
            n = f["params/tenDq"].shape[0]
            params = {p: f[f"params/{p}"] for p in PARAMS}
            for i in range(n):
                huid = f"{stem}_{i:04d}"
                ham_rows.append({"huid": huid, "key": f"H_{huid}", **{p: float(params[p][i]) for p in PARAMS}})
                for art_type, ds in (("rixs", "/RIXS"), ("xps", "/XPS")):
                    art_rows.append({"huid": huid, "type": art_type, "file": Path(filepath).name,
                                     "dataset": ds, "index": i})
    pd.DataFrame(ham_rows).to_parquet(output_dir / "g_hamiltonians.parquet", index=False)
    pd.DataFrame(art_rows).to_parquet(output_dir / "g_artifacts.parquet", index=False)


def run(repeat: int = 5) -> Run:
    from sweepcat.contract import write_manifests
    from sweepcat.inspect import inspect_directory
    from sweepcat.manifest import build_manifests
    from sweepcat.spec import dump_spec

    data = seed_data() / "NiPS3_batched"
    work = Path(tempfile.mkdtemp(prefix="sweepcat-bench-"))
    try:
        report = inspect_directory(data)
        assert report.ok and report.spec is not None, report.problems
        spec_path = work / "spec.yml"
        dump_spec(report.spec, spec_path)
        out = work / "manifests"

        def generate() -> None:
            write_manifests(out, build_manifests(report.spec))

        result = Run("manifest")
        result.figures.append(Figure(
            "manifest: build + validate + write, in-process (100k H, 200k artifacts)", "s",
            timeit(generate, repeat=repeat), target="<= 1.0 s", baseline="see guide template row"))
        result.figures.append(Figure(
            "manifest: `sweepcat manifest` CLI wall (incl. ~0.5 s interpreter + imports)", "s",
            wall(sweepcat_cmd("manifest", str(spec_path), "-o", str(out)), repeat=repeat),
            target="<= 1.0 s (see notes)"))
        base = timeit(lambda: guide_template_generate(data, work), repeat=1, warmup=0)
        result.figures.append(Figure("baseline: guide's generator template, in-process", "s", base,
                                     notes="reference implementation: 6.1 s"))
        result.figures.append(Figure("inspect: in-process (32 files)", "s",
                                     timeit(lambda: inspect_directory(data), repeat=repeat), target="<= 2 s"))
        result.figures.append(Figure("inspect: `sweepcat inspect` CLI wall", "s",
                                     wall(sweepcat_cmd("inspect", str(data), "--no-tree"), repeat=repeat),
                                     target="<= 2 s"))
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)
