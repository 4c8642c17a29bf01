"""Explore a directory of HDF5 files: schema tree, layout, draft spec, data-provider report.

Reads structure of every file and the parameters (small), never the artifact arrays.
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import Problem, SweepcatError
from .h5open import session
from .h5scan import H5_SUFFIXES, FileScan, list_files, read_parameters, scan_file
from .spec import ArtifactSpec, DatasetSpec, SourceSpec

Progress = Callable[[int], None]


@dataclass
class SourceReport:
    spec: SourceSpec
    files: list[str]
    entities: int
    params: list[str]


@dataclass
class InspectReport:
    root: Path
    spec: DatasetSpec | None
    sources: list[SourceReport] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)  # constraints that fail: fix before ingest
    notes: list[str] = field(default_factory=list)  # worth knowing, not blocking
    representative: FileScan | None = None
    n_files: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


# --------------------------------------------------------------------------- classification


@dataclass
class _Group:
    kind: str  # "batched" | "scalar" | "attrs"
    params: tuple[str, ...]
    files: list[FileScan]


def _param_kind(scan: FileScan) -> tuple[str, tuple[str, ...], int | None]:
    params = {p: d for p, d in scan.datasets.items() if p.startswith("/params/") and p.count("/") == 2}
    if params:
        shapes = {d.shape for d in params.values()}
        names = tuple(sorted(p.rsplit("/", 1)[1] for p in params))
        if shapes == {()}:
            return "scalar", names, None
        if all(len(s) == 1 for s in shapes) and len({s[0] for s in shapes}) == 1:
            return "batched", names, next(iter(shapes))[0]
        return "inconsistent", names, None
    if scan.attrs:
        return "attrs", tuple(sorted(scan.attrs)), None
    return "none", (), None


def _non_param(scan: FileScan) -> dict[str, tuple[int, ...]]:
    return {p: d.shape for p, d in scan.datasets.items() if not p.startswith("/params/")}


def _read_1d(root: Path, rel: str, path: str, limit: int = 1_000_000) -> np.ndarray | None:
    try:
        with session([root]).dataset(str(root / rel), path) as ds:
            if ds.ndim != 1 or ds.shape[0] > limit or ds.dtype.kind not in "iuf":
                return None
            return ds[()]
    except (SweepcatError, OSError, KeyError, RuntimeError):
        return None


def _strictly_monotonic(values: np.ndarray) -> bool:
    if values.size < 2 or not np.all(np.isfinite(values)):
        return False
    d = np.diff(values.astype("float64"))
    return bool(np.all(d > 0) or np.all(d < 0))


def _find_axes(root: Path, group: _Group, row_count: dict[str, int | None]) -> set[str]:
    """Shared axes: 1-D, strictly monotonic, identical in two files of the group."""
    candidates: Counter[str] = Counter()
    for scan in group.files:
        n = row_count.get(scan.rel)
        for p, shape in _non_param(scan).items():
            if len(shape) == 1 and (n is None or shape[0] != n):
                candidates[p] += 1
    axes = set()
    for p in candidates:
        holders = [s for s in group.files if p in s.datasets]
        first = _read_1d(root, holders[0].rel, p)
        if first is None or not _strictly_monotonic(first):
            continue
        if len(holders) > 1:
            second = _read_1d(root, holders[-1].rel, p)
            if second is None or second.shape != first.shape or not np.array_equal(first, second):
                continue
        axes.add(p)
    return axes


def _glob_for(rels: list[str], everything: list[str]) -> list[str]:
    """The most general glob patterns that match exactly ``rels`` among ``everything``."""
    by_dir: dict[str, list[str]] = defaultdict(list)
    for r in rels:
        by_dir[os.path.dirname(r)].append(os.path.basename(r))
    patterns = []
    wanted = set(rels)
    for d, names in sorted(by_dir.items()):
        prefix = os.path.commonprefix(names)
        suffix = os.path.commonprefix([n[::-1] for n in names])[::-1]
        ext = os.path.splitext(names[0])[1]
        chosen = None
        for cand in (f"*{ext}", f"*{suffix}", f"{prefix}*", f"{prefix}*{suffix}"):
            full = f"{d}/{cand}" if d else cand
            matched = {e for e in everything if os.path.dirname(e) == d and fnmatch(os.path.basename(e), cand)}
            if matched and matched <= wanted and len(matched) == len(names):
                chosen = full
                break
        if chosen:
            patterns.append(chosen)
        else:
            patterns.extend(f"{d}/{n}" if d else n for n in sorted(names))
    return patterns


def _axis_names(shape: tuple[int, ...], art_path: str, axes: dict[str, int]) -> list[str | None] | None:
    token = art_path.rsplit("/", 1)[-1].lower()
    names: list[str | None] = []
    for dim in shape:
        hits = [name for name, length in axes.items() if length == dim]
        if len(hits) > 1:
            hits = [h for h in hits if token in h.lower()] or hits
        names.append(hits[0] if len(hits) == 1 else None)
    return names if any(names) else None


# --------------------------------------------------------------------------- main entry


def inspect_directory(root: str | os.PathLike, progress: Progress | None = None) -> InspectReport:
    root_path = Path(root).resolve()
    if not root_path.is_dir():
        raise SweepcatError(f"{root}: not a directory", "pass the directory that holds the HDF5 files")
    every = list_files(root_path)
    opener = session([root_path])
    report = InspectReport(root=root_path, spec=None)
    scans: list[FileScan] = []
    for rel in every:
        is_h5_name = rel.lower().endswith(H5_SUFFIXES)
        if not is_h5_name:
            if not rel.lower().endswith((".yml", ".yaml", ".parquet", ".md", ".txt", ".json")):
                report.notes.append(
                    f"{rel}: not an HDF5 file name; ignored (ask the provider for HDF5 if it holds data)")
            continue
        scan = scan_file(root_path, rel, opener)
        if progress:
            progress(1)
        if scan.error:
            report.problems.append(Problem(rel, scan.error,
                                           "re-copy or regenerate the file, or move it out of the directory"))
            continue
        for name, why in scan.refused:
            report.problems.append(Problem(f"{rel}#{name}", why, "write the data into the file, or into files "
                                           "inside the dataset root (links and external storage may not leave it)"))
        scans.append(scan)
    report.n_files = len(scans)
    if not scans:
        if not report.problems:
            report.problems.append(Problem(str(root_path), "holds no readable HDF5 files",
                                           "point inspect at the directory with the .h5 files"))
        return report

    groups: dict[tuple[str, tuple[str, ...]], _Group] = {}
    row_count: dict[str, int | None] = {}
    for scan in scans:
        kind, names, n = _param_kind(scan)
        row_count[scan.rel] = n
        if kind == "inconsistent":
            report.problems.append(Problem(scan.rel, "parameters under /params have different lengths",
                                           "every /params dataset needs one value per entity"))
            continue
        if kind == "none":
            report.notes.append(f"{scan.rel}: no parameters (/params group or numeric root attributes); ignored")
            continue
        groups.setdefault((kind, names), _Group(kind, names, [])).files.append(scan)

    shared_axes: dict[str, dict[str, str]] = {}
    for group in groups.values():
        _add_sources(root_path, group, row_count, every, report, shared_axes)

    report.representative = max(groups.values(), key=lambda g: len(g.files)).files[0] if groups else scans[0]
    if report.sources:
        _check_parameters(root_path, report)
        _check_duplicate_ids(report)
        _check_types_across_sources(report)
        label = root_path.name
        report.spec = DatasetSpec(label=label, root=str(root_path), sources=[s.spec for s in report.sources],
                                  shared_axes=shared_axes)
    return report


def _add_sources(root: Path, group: _Group, row_count: dict[str, int | None], every: list[str],
                 report: InspectReport, shared_axes: dict[str, dict[str, str]]) -> None:
    axes = _find_axes(root, group, row_count)
    axis_len = {}
    for p in sorted(axes):
        name = p.rsplit("/", 1)[-1]
        holder = next(s for s in group.files if p in s.datasets)
        shared_axes.setdefault(name, {"file": holder.rel, "dataset": p})
        axis_len[name] = holder.datasets[p].shape[0]

    per_file_arts = {s.rel: {p: sh for p, sh in _non_param(s).items() if p not in axes} for s in group.files}
    params_group = "/params" if group.kind != "attrs" else None
    single = all(len(a) == 1 for a in per_file_arts.values())

    if group.kind != "batched" and single:
        # Layout A: one artifact per file; one source per artifact dataset.
        by_ds: dict[str, list[FileScan]] = defaultdict(list)
        for s in group.files:
            by_ds[next(iter(per_file_arts[s.rel]))].append(s)
        for ds_path, files in sorted(by_ds.items()):
            stems = [f.stem for f in files]
            suffix = os.path.commonprefix([st[::-1] for st in stems])[::-1]
            m = re.search(r"_([A-Za-z0-9]+)$", suffix)
            if m and all(len(st) > len(m.group(0)) for st in stems):
                art_type = m.group(1).lower()
                stem_pattern = f"(?P<stem>.+){re.escape(m.group(0))}"
            else:
                art_type, stem_pattern = ds_path.rsplit("/", 1)[-1].lower(), None
            spec = _artifact_spec(report, files, ds_path, None, axis_len, row_count)
            src = SourceSpec(layout="A", files=_glob_for([f.rel for f in files], every),
                             artifacts={art_type: spec}, params_group=params_group,
                             params=list(group.params), stem_pattern=stem_pattern)
            report.sources.append(SourceReport(src, [f.rel for f in files], len(files), list(group.params)))
        return

    # Layouts B and C: every file should hold the same artifact datasets.
    presence = Counter(p for arts in per_file_arts.values() for p in arts)
    expected = sorted(presence)
    for s in group.files:
        missing = [p for p in expected if p not in per_file_arts[s.rel]]
        if missing:
            report.problems.append(Problem(s.rel, f"missing dataset(s) {', '.join(missing)} that "
                                           f"{presence[missing[0]]} other file(s) have",
                                           "regenerate the file, or remove it from the directory"))
    if group.kind == "batched":
        for s in group.files:
            n = row_count[s.rel]
            for p, shape in per_file_arts[s.rel].items():
                if not shape or shape[0] != n:
                    report.problems.append(Problem(
                        s.rel, f"row counts disagree: /params has {n} rows but {p} has shape {shape}",
                        "every batched dataset needs one row per entity along axis 0"))
    artifacts = {}
    for p in expected:
        art_type = p.rsplit("/", 1)[-1].lower()
        artifacts[art_type] = _artifact_spec(report, group.files, p, group.kind == "batched", axis_len, row_count)
    layout = "B" if group.kind == "batched" else "C"
    entities = sum(row_count[s.rel] or 0 for s in group.files) if layout == "B" else len(group.files)
    src = SourceSpec(layout=layout, files=_glob_for([s.rel for s in group.files], every),
                     artifacts=artifacts, params_group=params_group, params=list(group.params))
    report.sources.append(SourceReport(src, [s.rel for s in group.files], entities, list(group.params)))


def _artifact_spec(report: InspectReport, files: list[FileScan], path: str, batched: bool | None,
                   axis_len: dict[str, int], row_count: dict[str, int | None]) -> ArtifactSpec:
    shapes: dict[tuple[int, ...], list[str]] = defaultdict(list)
    dtypes: dict[str, list[str]] = defaultdict(list)
    for s in files:
        info = s.datasets.get(path)
        if info is None:
            continue
        shape = info.shape[1:] if batched else info.shape
        shapes[shape].append(s.rel)
        dtypes[info.dtype].append(s.rel)
    common_shape = max(shapes, key=lambda k: len(shapes[k]))
    common_dtype = max(dtypes, key=lambda k: len(dtypes[k]))
    for shape, rels in shapes.items():
        if shape != common_shape:
            report.problems.append(Problem(
                ", ".join(rels[:5]) + (f" (+{len(rels) - 5} more)" if len(rels) > 5 else ""),
                f"ragged: {path} has entity shape {list(shape)} where {len(shapes[common_shape])} file(s) "
                f"have {list(common_shape)}",
                "arrays must be rectangular: zero-pad to a common shape, or split into another type"))
    for dtype, rels in dtypes.items():
        if dtype != common_dtype:
            report.problems.append(Problem(", ".join(rels[:5]), f"{path} has dtype {dtype}, others {common_dtype}",
                                           "write one dtype per artifact across files"))
    return ArtifactSpec(dataset=path, shape=list(common_shape), dtype=common_dtype,
                        axes=_axis_names(common_shape, path, axis_len))


def _check_parameters(root: Path, report: InspectReport) -> None:
    """NaN or inf parameters, read vectorised: one read per parameter dataset per file."""
    for src in report.sources:
        for rel in src.files:
            opener = session([root])
            try:
                handle = opener.acquire(str(root / rel))
                try:
                    values, _ = read_parameters(opener, handle, src.spec.params_group, src.params)
                finally:
                    opener.release(handle)
            except (SweepcatError, OSError, KeyError, RuntimeError) as exc:
                report.problems.append(Problem(rel, f"parameters cannot be read ({exc})", "regenerate the file"))
                continue
            for name, arr in values.items():
                if arr.dtype.kind not in "fc":
                    continue
                bad = np.flatnonzero(~np.isfinite(arr))
                if bad.size:
                    where = f"{rel} index {int(bad[0])}" if src.spec.layout == "B" else rel
                    more = f" ({bad.size} rows)" if bad.size > 1 else ""
                    report.problems.append(Problem(
                        where, f"parameter {name} is {arr[bad[0]]}{more}",
                        "fix the simulation output, or use `sweepcat manifest --nan-policy null|skip`"))


def _check_types_across_sources(report: InspectReport) -> None:
    """An artifact type is one array shape and dtype across the whole dataset (the contract): sources of
    a mixed directory that disagree are reported here, before `manifest` refuses them."""
    seen: dict[str, tuple[SourceReport, list[int] | None, str | None]] = {}
    for src in report.sources:
        for name, art in src.spec.artifacts.items():
            if name not in seen:
                seen[name] = (src, art.shape, art.dtype)
                continue
            first, shape, dtype = seen[name]
            for what, mine, theirs in (("shape", art.shape, shape), ("dtype", art.dtype, dtype)):
                if mine is not None and theirs is not None and mine != theirs:
                    report.problems.append(Problem(
                        f"{', '.join(src.files[:3])} (layout {src.spec.layout})",
                        f"artifact {name!r} has {what} {mine} here and {theirs} in {', '.join(first.files[:3])} "
                        f"(layout {first.spec.layout})",
                        "write one shape and dtype per artifact type across files, or name the types apart "
                        "in the spec (e.g. rixs_f32)"))


def _check_duplicate_ids(report: InspectReport) -> None:
    """Default huids must be unique: the same stem in two folders collides."""
    seen: dict[tuple[str, str], str] = {}
    for src in report.sources:
        types = tuple(src.spec.artifacts)
        if src.spec.layout == "B":
            continue  # stem_index is unique when stems are
        pattern = re.compile(src.spec.stem_pattern) if src.spec.stem_pattern else None
        for rel in src.files:
            stem = Path(rel).stem
            if pattern and (m := pattern.fullmatch(stem)):
                stem = m.group("stem")
            key = (stem, ",".join(types))
            if key in seen:
                report.problems.append(Problem(f"{seen[key]}, {rel}", f"duplicate ID: both give huid {stem!r}",
                                               "rename one, or set a huid template such as '{parent}_{stem}'"))
            else:
                seen[key] = rel
    stems_b = Counter(Path(rel).stem for src in report.sources if src.spec.layout == "B" for rel in src.files)
    for stem, count in stems_b.items():
        if count > 1:
            report.problems.append(Problem(stem, f"duplicate ID: {count} batched files share the stem {stem!r}",
                                           "rename them, or set a huid template such as '{parent}_{stem}_{index:04d}'"))


# --------------------------------------------------------------------------- text output


def schema_tree(scan: FileScan) -> str:
    """Like ``h5ls -r``: one line per group and dataset."""
    lines = ["/                        Group"]
    groups = sorted({"/".join(p.split("/")[:i]) for p in scan.datasets for i in range(2, p.count("/") + 1)})
    entries = [(g, "Group") for g in groups] + [
        (p, f"Dataset {{{', '.join(map(str, d.shape)) or 'SCALAR'}}} {d.dtype}") for p, d in scan.datasets.items()
    ]
    for path, what in sorted(entries):
        lines.append(f"{path:<24} {what}")
    for k, v in scan.attrs.items():
        lines.append(f"@{k:<23} Attribute {v!r}")
    return "\n".join(lines)


def summary(report: InspectReport) -> str:
    lines = [f"{report.n_files} HDF5 file(s) under {report.root}"]
    if report.spec:
        lines.append(f"layout: {report.spec.layout}")
    for src in report.sources:
        s = src.spec
        lines.append(f"  source layout {s.layout} ({_layout_text(s.layout)}): {len(src.files)} file(s), "
                     f"{src.entities} entities, files {', '.join(s.files[:3])}"
                     + (" ..." if len(s.files) > 3 else ""))
        lines.append(f"    parameters ({len(src.params)}): {', '.join(src.params)}"
                     + ("  [file attributes]" if s.params_group is None else f"  [{s.params_group}]"))
        for t, a in s.artifacts.items():
            axes = f" axes {a.axes}" if a.axes else ""
            lines.append(f"    artifact {t}: {a.dataset} shape {a.shape} {a.dtype}{axes}")
    if report.spec and report.spec.shared_axes:
        lines.append("  shared axes: " + ", ".join(f"{k} ({v['dataset']})" for k, v in report.spec.shared_axes.items()))
    return "\n".join(lines)


def _layout_text(layout: str) -> str:
    from .spec import LAYOUTS

    return LAYOUTS[layout]


def provider_report(report: InspectReport) -> str:
    """The note a data steward would send the provider: what fails, where, and what to do."""
    if not report.problems:
        return "data-provider report: every constraint holds (HDF5, readable, rectangular, finite, unique IDs)."
    lines = [f"data-provider report: {len(report.problems)} problem(s) to fix before ingesting"]
    lines += [f"  - {p.where}: {p.what}\n      suggestion: {p.fix}" for p in report.problems]
    return "\n".join(lines)
