"""Dataset spec (or a plug-in generator) -> validated manifest tables.

Spec-driven generation reads each parameter dataset once per file (vectorised)
and reads the shape and dtype of artifact datasets from their headers; it never
reads an artifact array and never loops over entities through HDF5.
"""

from __future__ import annotations

import datetime as dt
import importlib
import importlib.util
import os
import re
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import __version__
from .contract import DatasetDescription, Manifests, normalize_strings, path_problem, to_key
from .errors import ContractError, Problem, SweepcatError
from .h5open import DatasetMissing, FileRefused, H5Handle, Opener, session
from .h5scan import describe_open_error, dtype_name, read_parameters
from .spec import DatasetSpec, SourceSpec

Progress = Callable[[int], None]


@dataclass
class _Chunk:
    """Rows from one file: parameters (one array per name) and artifact structure per type."""

    rel: str
    huids: pa.Array
    params: dict[str, np.ndarray]
    null_mask: np.ndarray | None  # True where a parameter row is NaN and turned null
    indexed: bool  # batched: artifacts carry an index
    types: list[tuple[str, str, list[int], str, list[str | None] | None]]  # type, dataset, shape, dtype, axes


@dataclass
class _Build:
    chunks: list[_Chunk] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    skipped: int = 0


def source_files(root: Path, source: SourceSpec, problems: list[Problem]) -> list[str]:
    """Files matched by a source's patterns, relative to the root; any that would leave it are problems."""
    found: set[str] = set()
    for pattern in source.files:
        matched = [p for p in root.glob(pattern) if not p.is_dir()]  # FIFOs too: refused by name when read
        if not matched:
            problems.append(Problem(f"spec files {pattern!r}", f"matches no file under {root}",
                                    "fix the glob pattern (relative to root), or remove it"))
        for p in matched:
            rel = p.relative_to(root).as_posix()
            why = path_problem(rel, root)
            if why:
                problems.append(Problem(f"spec files {pattern!r}", f"matches {rel!r}, which {why}",
                                        "list files inside the dataset root only"))
            else:
                found.add(rel)
    return sorted(found)


def format_column(template: str, n: int, fields: dict[str, Any]) -> pa.Array:
    """``template.format(**fields)`` for n rows at once; a field is a scalar or a length-n array.

    ``{index:04d}``-style integer fields are formatted with numpy, so 100,000
    huids cost milliseconds, not a Python loop.
    """
    pieces: list[Any] = []
    for literal, name, fmt, conv in string.Formatter().parse(template):
        if literal:
            pieces.append(literal)
        if name is None:
            continue
        if name not in fields:
            raise SweepcatError(f"template {template!r} uses unknown field {{{name}}}",
                                f"available fields: {', '.join('{' + f + '}' for f in fields)}")
        value = fields[name]
        if conv:
            raise SweepcatError(f"template {template!r}: conversions such as !{conv} are not supported",
                                "use plain fields like {stem} or {index:04d}")
        if isinstance(value, np.ndarray) and value.dtype.kind in "iu":
            m = re.fullmatch(r"(0?)(\d*)d?", fmt or "")
            if m is None:
                pieces.append(pa.array([format(int(v), fmt) for v in value], pa.string()))
            else:
                text = pc.cast(pa.array(value), pa.string())
                if m.group(2):
                    text = pc.utf8_lpad(text, width=int(m.group(2)), padding="0" if m.group(1) else " ")
                pieces.append(text)
        elif isinstance(value, (pa.Array, pa.ChunkedArray)):
            if fmt:
                raise SweepcatError(f"template {template!r}: field {{{name}}} takes no format spec", "drop the ':...'")
            pieces.append(value)
        else:
            pieces.append(format(value, fmt) if fmt else str(value))
    arrays = [p for p in pieces if not isinstance(p, str)]
    if not arrays:
        text = "".join(pieces)
        return pa.array([text], pa.string()).take(np.zeros(n, dtype=np.int32))
    return pc.binary_join_element_wise(*pieces, "")


def _stem(rel: str, pattern: re.Pattern[str] | None) -> str | None:
    """The entity part of a file's stem; None when the source's stem_pattern does not match it."""
    stem = Path(rel).stem
    if pattern is None:
        return stem
    m = pattern.fullmatch(stem)
    return m.group("stem") if m else None


def _read_params(opener: Opener, handle: H5Handle, source: SourceSpec, rel: str,
                 build: _Build) -> dict[str, np.ndarray] | None:
    try:
        values, missing = read_parameters(opener, handle, source.params_group, source.params)
    except DatasetMissing:
        build.problems.append(Problem(rel, f"missing parameter group {source.params_group}",
                                      "regenerate the file, or exclude it from the spec's files"))
        return None
    except FileRefused as exc:
        build.problems.append(Problem(f"{rel}#{source.params_group}", exc.reason,
                                      "keep parameters in the file (links and external storage may not leave it)"))
        return None
    if missing:
        where = source.params_group or "root attributes"
        build.problems.append(Problem(rel, f"missing parameter(s) {', '.join(missing)} in {where}",
                                      "regenerate the file, or drop the names from the spec's params"))
        return None
    return values


def _read_file(root: Path, rel: str, source: SourceSpec, build: _Build, pattern: re.Pattern[str] | None,
               nan_policy: str, opener: Opener) -> None:
    try:
        handle = opener.acquire(str(root / rel))
    except FileRefused as exc:
        build.problems.append(Problem(rel, exc.reason, "keep data files as regular files inside the dataset root"))
        return
    except FileNotFoundError:
        build.problems.append(Problem(rel, "disappeared while being read", "check what else writes the directory"))
        return
    except (OSError, RuntimeError) as exc:
        build.problems.append(Problem(rel, describe_open_error(exc), "re-copy or regenerate the file"))
        return
    try:
        try:
            params = _read_params(opener, handle, source, rel, build)
        except (OSError, RuntimeError) as exc:
            build.problems.append(Problem(rel, f"parameters cannot be read ({exc})", "regenerate the file"))
            return
        if params is None:
            return
        lengths = {len(v) for v in params.values()}
        batched = source.layout == "B"
        if len(lengths) > 1 or (not batched and lengths != {1}):
            build.problems.append(Problem(rel, f"parameters have lengths {sorted(lengths)}",
                                          "one value per entity for every parameter"))
            return
        n = lengths.pop() if lengths else 1
        types = []
        for art_type, art in source.artifacts.items():
            held: list[H5Handle] = []
            try:
                ds = opener.resolve(handle, art.dataset, held)
                shape, dtype = list(ds.shape), dtype_name(ds.dtype)
            except FileRefused as exc:
                build.problems.append(Problem(f"{rel}#{art.dataset}", exc.reason,
                                              "write the data into files inside the dataset root (links and "
                                              "external storage may not leave it)"))
                continue
            except DatasetMissing:
                build.problems.append(Problem(rel, f"missing dataset {art.dataset} (artifact {art_type!r})",
                                              "regenerate the file, or exclude it from the spec's files"))
                continue
            finally:
                for h in held:
                    opener.release(h)
            if batched:
                if not shape or shape[0] != n:
                    build.problems.append(Problem(
                        rel, f"row counts disagree: parameters have {n} rows but {art.dataset} has shape {shape}",
                        "a batched dataset needs one row per entity along axis 0"))
                    continue
                shape = shape[1:]
            if art.shape is not None and list(art.shape) != shape:
                build.problems.append(Problem(rel, f"ragged: {art.dataset} has entity shape {shape}, "
                                              f"the spec says {list(art.shape)}",
                                              "arrays must be rectangular: zero-pad, or fix the spec"))
                continue
            if art.dtype is not None and art.dtype != dtype:
                build.problems.append(Problem(rel, f"{art.dataset} has dtype {dtype}, the spec says {art.dtype}",
                                              "write one dtype per artifact type, or fix the spec"))
                continue
            types.append((art_type, art.dataset, shape, dtype, art.axes))
    finally:
        opener.release(handle)

    null_mask = None
    keep = np.ones(n, dtype=bool)
    for name, values in params.items():
        if values.dtype.kind in "fc":
            bad = ~np.isfinite(values)
            if bad.any():
                rows = np.flatnonzero(bad)
                if nan_policy == "error":
                    where = f"{rel} index {rows[0]}" if batched else rel
                    more = f" and {rows.size - 1} more row(s)" if rows.size > 1 else ""
                    build.problems.append(Problem(where, f"parameter {name} is {values[rows[0]]}{more}",
                                                  "fix the data, or pass --nan-policy null (store null) "
                                                  "or --nan-policy skip (drop the entity)"))
                elif nan_policy == "skip":
                    keep &= ~bad
                else:
                    null_mask = bad if null_mask is None else (null_mask | bad)
    parent = Path(rel).parent.name
    stem = _stem(rel, pattern)
    if stem is None:
        build.problems.append(Problem(rel, f"its stem {Path(rel).stem!r} does not match stem_pattern "
                                      f"{pattern.pattern if pattern else ''!r}",
                                      "fix stem_pattern in the spec (it must match every file's whole stem), "
                                      "or narrow 'files'"))
        return
    template = source.huid_template()
    try:
        huids = format_column(template, n, {"stem": stem, "parent": parent, "index": np.arange(n)})
    except ValueError as exc:
        raise SweepcatError(f"huid template {template!r} is invalid ({exc})",
                            "use the fields {stem}, {parent} and {index}") from None
    if not keep.all():
        build.skipped += int((~keep).sum())
        huids = huids.filter(pa.array(keep))
        params = {k: v[keep] for k, v in params.items()}
        # Skipped rows keep their original index: remember which survive.
        params["__index__"] = np.flatnonzero(keep)
        if null_mask is not None:
            null_mask = null_mask[keep]
    build.chunks.append(_Chunk(rel, huids, params, null_mask, batched, types))


def _params_table(chunks: list[_Chunk]) -> pa.Table:
    names: list[str] = []
    for c in chunks:
        names.extend(k for k in c.params if k != "__index__" and k not in names)
    columns: dict[str, pa.Array] = {"huid": pa.concat_arrays([c.huids for c in chunks]) if chunks
                                    else pa.array([], pa.string())}
    for name in names:
        pieces = []
        for c in chunks:
            n = len(c.huids)
            if name in c.params:
                values = c.params[name]
                mask = None
                if c.null_mask is not None and values.dtype.kind in "fc":
                    mask = ~np.isfinite(values)
                pieces.append(pa.array(values, mask=mask))
            else:
                pieces.append(pa.nulls(n))
        types = {p.type for p in pieces if not pa.types.is_null(p.type)}
        target = types.pop() if len(types) == 1 else pa.float64()
        columns[name] = pa.concat_arrays([p.cast(target) for p in pieces])
    return pa.table(columns)


def _list_column(per_row: list[list[Any]], value_type: pa.DataType) -> pa.Array:
    offsets = np.zeros(len(per_row) + 1, dtype=np.int32)
    np.cumsum([len(r) for r in per_row], out=offsets[1:])
    flat = [v for r in per_row for v in r]
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, value_type))


def _artifacts_table(chunks: list[_Chunk]) -> pa.Table:
    """One row per (entity, type), entity-major; per-type values spread with vectorised ``take``."""
    parts = []
    for c in chunks:
        n, t = len(c.huids), len(c.types)
        if n == 0 or t == 0:
            continue
        per_type = np.tile(np.arange(t, dtype=np.int32), n)  # row -> type position
        per_entity = np.repeat(np.arange(n, dtype=np.int32), t)  # row -> entity position
        if c.indexed:
            rows = np.asarray(c.params.get("__index__", np.arange(n)), dtype=np.int64)
            index = pa.array(rows[per_entity])
        else:
            index = pa.nulls(n * t, pa.int64())
        axes = [list(x[4]) if x[4] else [None] * len(x[2]) for x in c.types]
        parts.append(pa.table({
            "huid": c.huids.take(per_entity),
            "type": pa.array([x[0] for x in c.types], pa.string()).take(per_type),
            "file": pa.array([c.rel], pa.string()).take(np.zeros(n * t, dtype=np.int32)),
            "dataset": pa.array([x[1] for x in c.types], pa.string()).take(per_type),
            "index": index,
            "shape": _list_column([x[2] for x in c.types], pa.int64()).take(per_type),
            "dtype": pa.array([x[3] for x in c.types], pa.string()).take(per_type),
            "axes": _list_column(axes, pa.string()).take(per_type),
        }))
    if not parts:
        raise SweepcatError("no artifacts were found", "check the spec's artifacts and files")
    return pa.concat_tables(parts)


def _merge_hamiltonians(ham: pa.Table, n_sources: int) -> pa.Table:
    """Layout A lists an entity once per artifact file: identical rows collapse into one."""
    if n_sources < 2:
        return ham
    df = ham.to_pandas()
    df = df.drop_duplicates(keep="first")
    return pa.Table.from_pandas(df, preserve_index=False, schema=ham.schema)


def build_manifests(spec: DatasetSpec, *, limit: int | None = None, nan_policy: str | None = None,
                    progress: Progress | None = None, spec_path: str | None = None) -> Manifests:
    """Read the files a spec names; return validated tables, or raise ContractError listing every problem."""
    root = Path(spec.root)
    if not root.is_dir():
        raise SweepcatError(f"spec root {root} is not a directory", "fix 'root' in the spec")
    policy = nan_policy or spec.nan_policy
    build = _Build()
    opener = session([root])
    for source in spec.sources:
        pattern = re.compile(source.stem_pattern) if source.stem_pattern else None
        files = source_files(root, source, build.problems)
        count = 0
        for rel in files:
            if limit is not None and count >= limit:
                break
            before = len(build.chunks)
            _read_file(root, rel, source, build, pattern, policy, opener)
            if len(build.chunks) > before:
                count += len(build.chunks[-1].huids)
            if progress:
                progress(1)
    if build.problems:
        raise ContractError(build.problems, subject=f"dataset {spec.label!r}")
    ham = _merge_hamiltonians(_params_table(build.chunks), len(spec.sources))
    keys = format_column(spec.key_template, ham.num_rows, {"huid": ham.column("huid").combine_chunks()})
    ham = ham.add_column(1, "key", keys)
    art = _artifacts_table(build.chunks)
    if limit is not None and ham.num_rows > limit:
        ham = ham.slice(0, limit)
        art = art.filter(pc.is_in(art.column("huid"), value_set=ham.column("huid")))
    description = DatasetDescription(
        label=spec.label, key=spec.catalog_key, root=str(root), metadata=spec.metadata,
        shared_axes=spec.shared_axes, nan_policy=policy,
        provenance={
            "generator": "spec", "spec": spec_path, "sweepcat": __version__,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "files": sum(1 for _ in {c.rel for c in build.chunks}), "skipped_nan": build.skipped,
            "layout": spec.layout,
        },
    )
    return Manifests(ham, art, description)  # validated by write_manifests, before writing


# --------------------------------------------------------------------------- plug-in generators


def load_generator(ref: str) -> Callable[..., Any]:
    """``module:function`` or ``path/to/file.py:function``."""
    if ":" not in ref:
        raise SweepcatError(f"generator {ref!r} is not module:function", "e.g. --generator mygen:generate")
    mod_name, func_name = ref.rsplit(":", 1)
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name).resolve()
            spec = importlib.util.spec_from_file_location(path.stem, path)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module
            spec.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(mod_name)
    except (ImportError, FileNotFoundError) as exc:
        raise SweepcatError(f"cannot import generator module {mod_name!r} ({exc})",
                            "check the name; run from the directory that holds it, or give a path to the .py") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise SweepcatError(f"{mod_name} has no function {func_name!r}",
                            "the plug-in must define generate(output_dir, n_hamiltonians) -> (ham_df, art_df)")
    return func


def _frame_to_table(df: Any, name: str, nan_policy: str, problems: list[Problem]) -> tuple[pa.Table, np.ndarray]:
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        raise SweepcatError(f"the generator returned {type(df).__name__} for {name}, not a pandas DataFrame",
                            "return (ham_df, art_df) as DataFrames")
    drop = np.zeros(len(df), dtype=bool)
    if name == "hamiltonians":
        for col in df.columns:
            if col in ("huid", "key") or not pd.api.types.is_float_dtype(df[col]):
                continue
            bad = ~np.isfinite(df[col].to_numpy(dtype="float64", na_value=np.nan))
            if bad.any():
                rows = np.flatnonzero(bad)
                if nan_policy == "error":
                    problems.append(Problem(f"hamiltonians rows {', '.join(map(str, rows[:5]))} column {col!r}",
                                            f"parameter is {df[col].iloc[rows[0]]}",
                                            "fix the generator, or pass --nan-policy null|skip"))
                elif nan_policy == "skip":
                    drop |= bad
                else:  # null: NaN becomes null on conversion; inf must be nulled here
                    df = df.assign(**{col: df[col].where(~bad)})
    table = normalize_strings(pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False))  # NaN -> null
    return table, drop


def _fill_from_headers(art: pa.Table, root: Path, problems: list[Problem]) -> pa.Table:
    """Artifacts without ``shape``/``dtype`` (a generator may leave them out): taken from the HDF5 headers,
    one open per (file, dataset), under the file rule; rows that give them keep theirs (the contract
    check then compares). A file or dataset that cannot be read is a problem naming it."""
    need = [c for c in ("shape", "dtype") if c not in art.column_names or art.column(c).null_count]
    if not need or not {"file", "dataset"} <= set(art.column_names) or not root.is_dir():
        return art  # the contract check names what is missing
    files = art.column("file").to_pylist()
    datasets = art.column("dataset").to_pylist()
    indexed = ("index" in art.column_names and art.column("index").to_numpy(zero_copy_only=False))
    headers: dict[tuple[str, str], tuple[list[int], str] | None] = {}
    opener = session([root])
    for pair in dict.fromkeys(zip(files, datasets, strict=True)):
        headers[pair] = _header(opener, root, *pair, problems)
    shapes, dtypes = [], []
    for i, pair in enumerate(zip(files, datasets, strict=True)):
        found = headers[pair]
        if found is None:
            shapes.append(None)
            dtypes.append(None)
            continue
        shape, dtype = found
        batched = indexed is not False and not np.isnan(np.asarray(indexed[i], dtype="float64"))
        shapes.append(shape[1:] if batched else shape)
        dtypes.append(dtype)
    for name, values, typ in (("shape", shapes, pa.list_(pa.int64())), ("dtype", dtypes, pa.string())):
        given = art.column(name).to_pylist() if name in art.column_names else [None] * art.num_rows
        merged = pa.array([g if g is not None else f for g, f in zip(given, values, strict=True)], typ)
        if name in art.column_names:
            art = art.set_column(art.column_names.index(name), name, merged)
        else:
            art = art.append_column(name, merged)
    return art


def _header(opener: Opener, root: Path, rel: Any, dataset: Any, problems: list[Problem]) \
        -> tuple[list[int], str] | None:
    if not isinstance(rel, str) or not isinstance(dataset, str) or path_problem(rel, root):
        return None  # the contract check names a missing or escaping path
    held: list[H5Handle] = []
    try:
        handle = opener.acquire(str(root / rel))
        held.append(handle)
        ds = opener.resolve(handle, dataset, held)
        return [int(n) for n in ds.shape], dtype_name(ds.dtype)
    except (FileRefused, DatasetMissing) as exc:
        problems.append(Problem(f"{rel}#{dataset}", exc.message, exc.hint or "fix the generator's output"))
    except (OSError, ValueError) as exc:
        problems.append(Problem(rel, f"cannot read its header to fill shape/dtype ({describe_open_error(exc)})",
                                "fix the file, or give shape and dtype in the generator's output"))
    finally:
        for h in held:
            opener.release(h)
    return None


def run_generator(ref: str, output_dir: str | os.PathLike, *, root: str | os.PathLike, label: str | None,
                  limit: int | None, nan_policy: str = "error") -> Manifests:
    func = load_generator(ref)
    ham_df, art_df = func(str(output_dir), limit)
    problems: list[Problem] = []
    ham, drop = _frame_to_table(ham_df, "hamiltonians", nan_policy, problems)
    art, _ = _frame_to_table(art_df, "artifacts", nan_policy, problems)
    if problems:
        raise ContractError(problems, subject=f"generator {ref}")
    if drop.any():
        dropped = ham.filter(pa.array(drop)).column("huid")
        ham = ham.filter(pa.array(~drop))
        art = art.filter(pc.invert(pc.is_in(art.column("huid"), value_set=dropped)))
    art = _fill_from_headers(art, Path(root).resolve(), problems)
    if problems:
        raise ContractError(problems, subject=f"generator {ref}")
    if "key" not in ham.column_names and "huid" in ham.column_names:
        ham = ham.add_column(1, "key", pa.array([f"H_{h}" for h in ham.column("huid").to_pylist()], pa.string()))
    name = label or Path(root).resolve().name
    description = DatasetDescription(
        label=name, key=to_key(name), root=str(Path(root).resolve()), nan_policy=nan_policy,
        provenance={"generator": ref, "sweepcat": __version__,
                    "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    "skipped_nan": int(drop.sum())},
    )
    return Manifests(ham, art, description)  # validated by write_manifests, before writing
