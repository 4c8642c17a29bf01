"""Synthetic sweeps shaped like the NiPS3 seed data, in layouts A, B and C.

Values are smooth functions of the parameters (peaks that move with tenDq,
widths set by Gam_c ...), so a wrong row or a wrong slice is visible in tests.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import h5py
import numpy as np

from .atomic import output_directory, replacing

PARAM_RANGES: dict[str, tuple[float, float]] = {
    "F2_dd": (2.0, 15.0), "F2_dp": (1.0, 7.0), "F4_dd": (1.0, 9.0), "G1_dp": (1.0, 5.0),
    "G3_dp": (1.0, 4.0), "Gam_c": (0.2, 0.8), "sigma": (0.005, 0.03), "soc_c": (1.0, 13.0),
    "soc_v_i": (0.1, 0.2), "soc_v_n": (0.01, 0.12), "tenDq": (0.5, 3.5), "xoffset": (-2.0, 12.0),
}
PARAM_NAMES = list(PARAM_RANGES)
N_ELOSS, N_EIN, N_XPS = 151, 40, 5000

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Scale:
    batched_files: int
    rows_per_file: int
    filled_files: int
    per_artifact_entities: int
    per_entity_entities: int


SCALES = {
    "small": Scale(batched_files=4, rows_per_file=64, filled_files=4, per_artifact_entities=24, per_entity_entities=24),
    # 32 x 3,125 = 100,000 Hamiltonians as in the seed, every array written (~8.8 GB).
    "seed": Scale(batched_files=32, rows_per_file=3125, filled_files=32, per_artifact_entities=500,
                  per_entity_entities=500),
}
SPARSE_FILLED = 4  # --sparse: arrays written in this many batched files only (quick tests, never benchmarks)
DATASET_DIRS = {"B": "NiPS3_batched", "A": "NiPS3_per_artifact", "C": "NiPS3_per_entity"}


def axes() -> dict[str, np.ndarray]:
    return {
        "eloss_RIXS": np.linspace(-1.0, 14.0, N_ELOSS),
        "ein_RIXS": np.linspace(852.0, 858.0, N_EIN),
        "w_xps": np.linspace(840.0, 880.0, N_XPS),
        "field": np.linspace(0.0, 30.0, 64),
        "freq": np.linspace(-5.0, 5.0, 32),
    }


def random_params(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {k: rng.uniform(lo, hi, n) for k, (lo, hi) in PARAM_RANGES.items()}


def rixs_maps(p: dict[str, np.ndarray], ax: dict[str, np.ndarray]) -> np.ndarray:
    """(n, 151, 40): a d-d peak at tenDq and an elastic line, resonant in ein around xoffset."""
    eloss = ax["eloss_RIXS"][None, :, None]
    ein = ax["ein_RIXS"][None, None, :]
    center = p["tenDq"][:, None, None]
    width = p["Gam_c"][:, None, None]
    res = np.exp(-((ein - 855.0 - 0.1 * p["xoffset"][:, None, None]) ** 2) / 2.0)
    dd = np.exp(-((eloss - center) ** 2) / (2 * width**2))
    elastic = 0.3 * np.exp(-(eloss**2) / (2 * (p["sigma"][:, None, None] * 10) ** 2))
    return (dd + elastic) * res


def xps_spectra(p: dict[str, np.ndarray], ax: dict[str, np.ndarray]) -> np.ndarray:
    w = ax["w_xps"][None, :]
    c = 850.0 + p["xoffset"][:, None]
    g = p["Gam_c"][:, None]
    main = g**2 / ((w - c) ** 2 + g**2)
    sat = 0.4 * g**2 / ((w - c - p["soc_c"][:, None]) ** 2 + g**2)
    return 0.005 * (main + sat)


@contextlib.contextmanager
def _h5_atomic(path: Path) -> Iterator[h5py.File]:
    """Write an HDF5 file under a temporary name and rename it into place when complete: a reader of
    the old file (a running server) keeps reading it, and no file is ever left half-written."""
    with replacing(path) as tmp, h5py.File(tmp, "w") as f:
        yield f


def write_batched(out: Path, scale: Scale, seed: int = 0, progress: Progress | None = None) -> Path:
    """Layout B: NiPS3_random_rankNNNN.h5 with /RIXS (n,151,40), /XPS (n,5000), /params/* (n)."""
    out.mkdir(parents=True, exist_ok=True)
    ax = axes()
    n = scale.rows_per_file
    for rank in range(scale.batched_files):
        rng = np.random.default_rng(seed * 1000 + rank)
        p = random_params(rng, n)
        with _h5_atomic(out / f"NiPS3_random_rank{rank:04d}.h5") as f:
            for k in ("eloss_RIXS", "ein_RIXS", "w_xps"):
                f[k] = ax[k]
            g = f.create_group("params")
            for k, v in p.items():
                g[k] = v
            # Chunked per row, as simulation codes write them (unwritten chunks, --sparse, cost no disk).
            rixs = f.create_dataset("RIXS", (n, N_ELOSS, N_EIN), dtype="f8", chunks=(1, N_ELOSS, N_EIN))
            xps = f.create_dataset("XPS", (n, N_XPS), dtype="f8", chunks=(1, N_XPS))
            if rank < scale.filled_files:
                for start in range(0, n, 512):
                    sl = slice(start, min(n, start + 512))
                    part = {k: v[sl] for k, v in p.items()}
                    rixs[sl] = rixs_maps(part, ax)
                    xps[sl] = xps_spectra(part, ax)
        if progress:
            progress(1)
    return out


def write_per_artifact(out: Path, n_entities: int, seed: int = 1, progress: Progress | None = None) -> Path:
    """Layout A: NiPS3_NNNNN_rixs.h5 (/RIXS float32) and NiPS3_NNNNN_xps.h5 (/XPS float32); params as attributes."""
    out.mkdir(parents=True, exist_ok=True)
    ax = axes()
    rng = np.random.default_rng(seed)
    p = random_params(rng, n_entities)
    rixs = rixs_maps(p, ax).astype("f4")
    xps = xps_spectra(p, ax).astype("f4")
    for i in range(n_entities):
        for kind, data, axis_names in (("rixs", rixs[i], ("eloss_RIXS", "ein_RIXS")), ("xps", xps[i], ("w_xps",))):
            with _h5_atomic(out / f"NiPS3_{i:05d}_{kind}.h5") as f:
                f[kind.upper()] = data
                for a in axis_names:
                    f[a] = ax[a]
                for k, v in p.items():
                    f.attrs[k] = v[i]
        if progress:
            progress(1)
    return out


def write_per_entity(out: Path, n_entities: int, seed: int = 2, progress: Progress | None = None) -> Path:
    """Layout C: one file per entity with /RIXS f8, /XPS f8, /MH int32, /GF complex128 and /params scalars."""
    out.mkdir(parents=True, exist_ok=True)
    ax = axes()
    rng = np.random.default_rng(seed)
    p = random_params(rng, n_entities)
    rixs = rixs_maps(p, ax)
    xps = xps_spectra(p, ax)
    for i in range(n_entities):
        with _h5_atomic(out / f"sim_{i:05d}.h5") as f:
            for k in ("eloss_RIXS", "ein_RIXS", "w_xps", "field", "freq"):
                f[k] = ax[k]
            g = f.create_group("params")
            for k, v in p.items():
                g[k] = v[i]
            f["RIXS"] = rixs[i]
            f["XPS"] = xps[i]
            counts = 1000 * np.tanh(ax["field"] / (1 + p["tenDq"][i])) + rng.integers(-20, 20, ax["field"].size)
            f["MH"] = counts.astype("i4")
            f["GF"] = (1.0 / (ax["freq"] - p["xoffset"][i] / 3 + 1j * p["Gam_c"][i])).astype("c16")
        if progress:
            progress(1)
    return out


def work_units(scale: Scale) -> int:
    return scale.batched_files + scale.per_artifact_entities + scale.per_entity_entities


def write_demo(out: str | Path, scale_name: str = "small", progress: Progress | None = None,
               sparse: bool = False) -> dict[str, Path]:
    """The three demo datasets under ``out``. ``sparse`` writes arrays into the first few batched files
    only (the rest read as fill values without touching the disk): for quick tests, never benchmarks."""
    scale = SCALES[scale_name]
    if sparse:
        scale = replace(scale, filled_files=min(scale.filled_files, SPARSE_FILLED))
    root = output_directory(out)
    return {
        "B": write_batched(root / DATASET_DIRS["B"], scale, progress=progress),
        "A": write_per_artifact(root / DATASET_DIRS["A"], scale.per_artifact_entities, progress=progress),
        "C": write_per_entity(root / DATASET_DIRS["C"], scale.per_entity_entities, progress=progress),
    }
