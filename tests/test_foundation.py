"""Foundation tests: the manifest contract, inspect, manifest generation and the CLI around them.

Data comes from ``sweepcat demo-data`` (small scale, written once per session by
``conftest.demo_root``) and from tiny HDF5 files made with h5py in ``tmp_path``.
Tests that mutate files work on copies.
"""

from __future__ import annotations

import os
import re
import shutil
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from sweepcat.cli import app
from sweepcat.contract import (
    ART_SUFFIX,
    HAM_SUFFIX,
    DatasetDescription,
    Locator,
    Manifests,
    check,
    locator_urls,
    read_manifests,
    validate,
    write_manifests,
)
from sweepcat.demodata import N_EIN, N_ELOSS, N_XPS, PARAM_NAMES
from sweepcat.errors import ContractError, SweepcatError
from sweepcat.inspect import inspect_directory
from sweepcat.spec import dump_spec, load_spec

B_DIR, A_DIR, C_DIR = "NiPS3_batched", "NiPS3_per_artifact", "NiPS3_per_entity"
B_FILES = [f"NiPS3_random_rank{r:04d}.h5" for r in range(4)]


# =========================================================================== helpers


def invoke(runner, *args):
    """Run the CLI; a Python exception (a traceback for users) fails the test with its cause."""
    result = runner.invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(
            f"`sweepcat {' '.join(map(str, args))}` crashed instead of printing an error: "
            f"{result.exception!r}\noutput:\n{result.output}"
        ) from result.exception
    return result


def assert_rejected(result, *needles, code=2):
    """Exit code ``code`` and every needle in the (mixed stdout+stderr) output."""
    out = result.output
    assert result.exit_code == code, f"exit code {result.exit_code}, expected {code}; output:\n{out}"
    for needle in needles:
        assert needle in out, f"{needle!r} not named in the output:\n{out}"
    assert "Traceback" not in out


def parquet_files(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*.parquet")) if directory.exists() else []


def assert_nothing_written(out_dir: Path) -> None:
    assert parquet_files(out_dir) == [], f"manifests were written despite the error: {parquet_files(out_dir)}"
    if out_dir.exists():
        assert list(out_dir.iterdir()) == [], f"left behind: {list(out_dir.iterdir())}"


def copy_files(src: Path, dst: Path, names) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for n in names:
        shutil.copy2(src / n, dst / n)
    return dst


def draft_spec(directory: Path, spec_path: Path) -> Path:
    """A spec for a clean directory, via the library (files are mutated afterwards)."""
    report = inspect_directory(directory)
    assert report.ok, [str(p) for p in report.problems]
    dump_spec(report.spec, spec_path)
    return spec_path


def read_pair(out_dir: Path, key: str) -> tuple[pa.Table, pa.Table]:
    return pq.read_table(out_dir / f"{key}{HAM_SUFFIX}"), pq.read_table(out_dir / f"{key}{ART_SUFFIX}")


def c_copy(demo_root: Path, dst: Path, n: int = 4) -> Path:
    return copy_files(demo_root / C_DIR, dst, [f"sim_{i:05d}.h5" for i in range(n)])


def b_copy(demo_root: Path, dst: Path, n: int = 2) -> Path:
    return copy_files(demo_root / B_DIR, dst, B_FILES[:n])


def write_generator(path: Path, body: str) -> str:
    path.write_text("import numpy as np\nimport pandas as pd\n\n" + textwrap.dedent(body))
    return f"{path}:generate"


# --------------------------------------------------------------------------- contract tables

SHAPES = {"rixs": [151, 40], "xps": [5000]}
AXES = {"rixs": ["eloss_RIXS", "ein_RIXS"], "xps": ["w_xps"]}
ART_TYPES = {"index": pa.int64(), "shape": pa.list_(pa.int64()), "axes": pa.list_(pa.string())}


def ham_table(huids=("h0", "h1", "h2"), keys=None, **params) -> pa.Table:
    keys = list(keys) if keys is not None else [f"H_{h}" for h in huids]
    cols = {"huid": pa.array(list(huids), pa.string()), "key": pa.array(keys, pa.string())}
    if not params:
        params = {"tenDq": [1.0 + i for i in range(len(huids))]}
    for name, values in params.items():
        cols[name] = values if isinstance(values, pa.Array) else pa.array(values)
    return pa.table(cols)


def art_rows(huids=("h0", "h1", "h2"), types=("rixs", "xps")) -> list[dict]:
    return [dict(huid=h, type=t, file="run.h5", dataset=f"/{t.upper()}", index=i, shape=list(SHAPES[t]),
                 dtype="float64", axes=list(AXES[t]))
            for i, h in enumerate(huids) for t in types]


def art_table(rows: list[dict], drop=(), types=None) -> pa.Table:
    types = {**ART_TYPES, **(types or {})}
    names = [k for k in rows[0] if k not in drop]
    return pa.table({k: pa.array([r[k] for r in rows], types.get(k, pa.string())) for k in names})


def problems_with(problems, *needles) -> list[str]:
    texts = [str(p) for p in problems]
    hits = [t for t in texts if all(n in t for n in needles)]
    assert hits, f"no problem names all of {needles}; problems: {texts}"
    return hits


# =========================================================================== 1. contract: locators


@pytest.mark.parametrize("index", [None, 0, 17])
@pytest.mark.parametrize("path", ["/data/NiPS3/run.h5", "/data/my runs/sim 01.h5", "/data/run#3/a%b?.h5",
                                  "/data/Ünïcode dir/x.h5"])
def test_locator_url_parse_round_trip(path, index):
    loc = Locator(path, "/RIXS", index)
    url = loc.url()
    assert url.startswith("file:///")
    assert " " not in url and url.count("#") == 1, url
    assert url.endswith("#/RIXS" if index is None else f"#/RIXS[{index}]")
    assert Locator.parse(url) == loc


def test_locator_url_exact_form_and_dataset_quoting():
    assert Locator("/d/a b.h5", "/RIXS", 17).url() == "file:///d/a%20b.h5#/RIXS[17]"
    # A dataset name that merely ends in "[3]" is not an index.
    odd = Locator("/d/x.h5", "/grp/odd name[3]", None)
    assert Locator.parse(odd.url()) == odd
    both = Locator("/d/x.h5", "/grp/odd name[3]", 4)
    assert Locator.parse(both.url()) == both


def test_locator_relative_needs_root(tmp_path):
    loc = Locator("sub dir/run 1.h5", "/XPS", 3)
    with pytest.raises(SweepcatError, match="relative"):
        loc.url()
    parsed = Locator.parse(loc.url(root=tmp_path))
    assert parsed == Locator(str(tmp_path / "sub dir" / "run 1.h5"), "/XPS", 3)


@pytest.mark.parametrize("url", [
    "http://example.org/data/run.h5#/RIXS[1]",
    "https://example.org/run.h5#/RIXS",
    "file://otherhost/data/run.h5#/RIXS",
    "/data/run.h5#/RIXS",
    "s3://bucket/run.h5#/RIXS",
    "file:///data/run.h5",  # no dataset
    "file:///data/run.h5#",
    "file:///data/run.h5#[3]",
])
def test_locator_parse_rejects_non_locators(url):
    with pytest.raises(SweepcatError):
        Locator.parse(url)


def test_locator_urls_matches_locator_url(tmp_path):
    files = pd.Series(["a b.h5", "sub/c#d.h5", "e.h5"])
    datasets = pd.Series(["/RIXS", "/XPS", "/grp/x y"])
    indices = pd.Series([3, None, 0], dtype="float64")
    urls = locator_urls(str(tmp_path), files, datasets, indices)
    for f, d, i, u in zip(files, datasets, indices, urls, strict=True):
        expected = Locator(f, d, None if pd.isna(i) else int(i)).url(root=tmp_path)
        assert u == expected
        assert Locator.parse(u).file == str(tmp_path / f)


# =========================================================================== 1. contract: validate


def test_validate_good_tables_is_empty(tmp_path):
    (tmp_path / "run.h5").write_bytes(b"")
    ham, art = ham_table(), art_table(art_rows())
    assert validate(ham, art) == []
    assert validate(ham, art, root=tmp_path, check_files_exist=True) == []
    check(ham, art, root=tmp_path)  # does not raise


def test_validate_accepts_large_string_columns():
    """pandas >= 3 turns text columns into Arrow large_string; the contract says those are strings too."""
    ham = ham_table()
    art = art_table(art_rows())
    large = lambda t: t.cast(pa.schema([  # noqa: E731
        pa.field(f.name, pa.large_string() if pa.types.is_string(f.type) else f.type) for f in t.schema]))
    assert validate(large(ham), large(art)) == []


def test_validate_missing_required_columns():
    ham = ham_table().drop_columns(["key"])
    art = art_table(art_rows(), drop=("dataset",))
    problems = validate(ham, art)
    problems_with(problems, "hamiltonians", "missing required column 'key'")
    problems_with(problems, "artifacts", "missing required column 'dataset'")


def test_validate_required_column_must_be_string():
    ham = ham_table().set_column(0, "huid", pa.array([1, 2, 3]))
    problems_with(validate(ham, art_table(art_rows())), "column 'huid'", "int64", "not string")


def test_validate_duplicate_huid():
    ham = ham_table(huids=["h0", "h1", "h0"], keys=["k0", "k1", "k2"])
    problems_with(validate(ham, art_table(art_rows(["h0", "h1"]))),
                  "hamiltonians rows 0, 2 column 'huid'", "duplicate huid", "'h0'")


def test_validate_duplicate_huid_next_to_a_null_huid():
    """Nulls are ignored by the duplicate check, so they must not hide a real duplicate."""
    ham = ham_table(huids=["h0", "h0", None], keys=["k0", "k1", "k2"])
    problems = validate(ham, art_table(art_rows(["h0"])))
    problems_with(problems, "rows 2 column 'huid'", "is empty")
    problems_with(problems, "rows 0, 1 column 'huid'", "duplicate huid", "'h0'")


def test_validate_duplicate_key():
    ham = ham_table(keys=["H_a", "H_b", "H_a"])
    problems_with(validate(ham, art_table(art_rows())), "hamiltonians rows 0, 2 column 'key'", "duplicate key",
                  "'H_a'")


@pytest.mark.parametrize("bad", ["H/h1", "H h1", "..", ""])
def test_validate_invalid_key(bad):
    ham = ham_table(keys=["H_h0", bad, "H_h2"])
    problems = validate(ham, art_table(art_rows()))
    if bad == "":
        problems_with(problems, "rows 1 column 'key'", "is empty")
    else:
        problems_with(problems, "hamiltonians rows 1 column 'key'", repr(bad), "not a valid catalog key")


@pytest.mark.parametrize("value,text", [(float("nan"), "nan"), (float("inf"), "inf"), (float("-inf"), "-inf")])
def test_validate_nonfinite_parameter_named(value, text):
    ham = ham_table(tenDq=[1.0, 2.0, value], Gam_c=[0.1, 0.2, 0.3])
    problems = validate(ham, art_table(art_rows()))
    hits = problems_with(problems, "hamiltonians rows 2 column 'tenDq'", "not finite", f"({text} at row 2)")
    assert len(problems) == 1, [str(p) for p in problems]
    assert "Gam_c" not in hits[0]


def test_validate_null_parameter_allowed():
    ham = ham_table(tenDq=pa.array([1.0, None, 3.0], pa.float64()), comment=["x", None, "z"],
                    n_sites=pa.array([4, None, 6], pa.int64()))
    assert validate(ham, art_table(art_rows())) == []


def test_validate_orphan_artifact():
    rows = art_rows() + art_rows(["ghost"])
    problems_with(validate(ham_table(), art_table(rows)), "artifacts rows 6, 7 column 'huid'", "'ghost'",
                  "not in hamiltonians")


def test_validate_duplicate_huid_type():
    rows = art_rows()
    rows.append(dict(rows[2], file="other.h5"))  # (h1, rixs) a second time
    problems_with(validate(ham_table(), art_table(rows)), "artifacts rows 2, 6 columns 'huid','type'",
                  "type 'rixs' appears more than once for huid 'h1'")


def test_validate_invalid_artifact_type():
    rows = art_rows()
    rows[3]["type"] = "x/ps"
    problems_with(validate(ham_table(), art_table(rows)), "artifacts rows 3 column 'type'", "'x/ps'")


@pytest.mark.parametrize("bad,why", [
    ("../x.h5", "contains '..'"),
    ("sub/../../x.h5", "contains '..'"),
    ("/abs/x.h5", "is absolute"),
    ("C:/data/x.h5", "is absolute"),
    ("sub\\x.h5", "backslash"),
])
def test_validate_bad_paths(bad, why):
    rows = art_rows()
    rows[4]["file"] = rows[5]["file"] = bad
    hits = problems_with(validate(ham_table(), art_table(rows)), "artifacts rows 4, 5 column 'file'", repr(bad), why)
    assert len(hits) == 1


def test_validate_symlink_escaping_root(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.h5").write_bytes(b"x")
    (root / "run.h5").write_bytes(b"x")
    (root / "escape.h5").symlink_to(outside / "secret.h5")
    (root / "inside.h5").symlink_to(root / "run.h5")  # a symlink that stays inside is fine
    rows = art_rows()
    rows[0]["file"] = "inside.h5"
    rows[2]["file"] = "escape.h5"
    problems = validate(ham_table(), art_table(rows), root=root)
    hits = problems_with(problems, "artifacts rows 2 column 'file'", "'escape.h5'", "outside the dataset root")
    assert len(problems) == 1, [str(p) for p in problems]
    assert str((outside / "secret.h5").resolve()) in hits[0]
    # Without a root there is nothing to resolve against: no complaint.
    assert validate(ham_table(), art_table(rows)) == []


def test_validate_check_files_exist(tmp_path):
    problems = validate(ham_table(), art_table(art_rows()), root=tmp_path, check_files_exist=True)
    problems_with(problems, "artifacts rows 0, 1, 2, 3, 4 (+1 more) column 'file'", "'run.h5'", "does not exist")


def test_validate_negative_index():
    rows = art_rows()
    rows[3]["index"] = -1
    problems_with(validate(ham_table(), art_table(rows)), "artifacts rows 3 column 'index'", "-1",
                  "not a non-negative integer")


def test_validate_float_index():
    rows = art_rows()
    for r in rows:
        r["index"] = float(r["index"])
    assert validate(ham_table(), art_table(rows, types={"index": pa.float64()})) == []  # whole numbers are fine
    rows[5]["index"] = 1.5
    problems_with(validate(ham_table(), art_table(rows, types={"index": pa.float64()})),
                  "artifacts rows 5 column 'index'", "1.5", "not a non-negative integer")


def test_validate_index_of_wrong_type():
    rows = art_rows()
    for r in rows:
        r["index"] = str(r["index"])
    problems_with(validate(ham_table(), art_table(rows, types={"index": pa.string()})),
                  "column 'index'", "not integer")


def test_validate_null_index_allowed():
    rows = art_rows()
    for r in rows:
        r["index"] = None
    assert validate(ham_table(), art_table(rows)) == []


def test_validate_ragged_shapes_per_type():
    rows = art_rows()
    rows[4]["shape"] = [150, 40]  # h2 rixs
    problems = validate(ham_table(), art_table(rows))
    hits = problems_with(problems, "artifacts rows 4 column 'shape'", "type 'rixs' is ragged", "[150,40]",
                         "most common [151,40]")
    assert len(problems) == 1 and "xps" not in hits[0]


def test_validate_several_dtypes_per_type():
    rows = art_rows()
    rows[1]["dtype"] = "float32"  # h0 xps
    problems = validate(ham_table(), art_table(rows))
    problems_with(problems, "artifacts rows 1 column 'dtype'", "type 'xps' has several dtypes", "float32",
                  "most common float64")
    assert len(problems) == 1


def test_validate_different_dtypes_across_types_are_fine():
    rows = art_rows()
    for r in rows:
        if r["type"] == "xps":
            r["dtype"] = "int32"
    assert validate(ham_table(), art_table(rows)) == []


@pytest.mark.parametrize("bad", ["floaty", "float64,,"])
def test_validate_invalid_dtype_string(bad):
    rows = art_rows()
    for r in rows:
        if r["type"] == "xps":
            r["dtype"] = bad
    problems = validate(ham_table(), art_table(rows))  # a Problem, never an exception
    problems_with(problems, "artifacts rows 1, 3, 5 column 'dtype'", repr(bad), "not a numpy dtype")


def test_check_raises_contract_error_listing_every_problem():
    rows = art_rows()
    rows[0]["file"] = "../x.h5"
    rows[3]["index"] = -2
    with pytest.raises(ContractError) as info:
        check(ham_table(keys=["H_h0", "H/h1", "H_h2"]), art_table(rows))
    err = info.value
    assert len(err.problems) == 3
    text = str(err)
    assert "3 problem(s); nothing was written" in text
    for needle in ("'H/h1'", "'../x.h5'", "-2"):
        assert needle in text


# =========================================================================== 2. read/write manifests


def _description(root: Path, key: str = "nips3_test") -> DatasetDescription:
    return DatasetDescription(
        label="NiPS3 test sweep", key=key, root=str(root),
        metadata={"material": "NiPS3", "edge": "Ni L3", "temperatures": [10, 300], "nested": {"a": 1}},
        shared_axes={"w_xps": {"file": "run.h5", "dataset": "/w_xps"}},
        nan_policy="null", provenance={"generator": "unit-test", "files": 1},
    )


def test_write_read_round_trip_with_description(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    ham, art = ham_table(), art_table(art_rows())
    desc = _description(root)
    ham_path, art_path = write_manifests(tmp_path / "out", Manifests(ham, art, desc))
    assert ham_path == tmp_path / "out" / f"nips3_test{HAM_SUFFIX}"
    assert art_path == tmp_path / "out" / f"nips3_test{ART_SUFFIX}"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([ham_path.name, art_path.name])

    # Each file alone carries the description.
    for p in (ham_path, art_path):
        raw = pq.read_schema(p).metadata[b"sweepcat.dataset"]
        assert DatasetDescription.from_json(raw) == desc

    m = read_manifests(ham_path, art_path)
    assert m.description == desc
    assert m.ham.equals(ham) and m.art.equals(art)
    # From the directory, too.
    m2 = read_manifests(tmp_path / "out")
    assert m2.description == desc and m2.ham_path == ham_path and m2.art_path == art_path
    # base_dir overrides the root; label overrides label and key.
    m3 = read_manifests(ham_path, art_path, base_dir=tmp_path, label="Other label!")
    assert m3.description.root == str(tmp_path.resolve())
    assert (m3.description.label, m3.description.key) == ("Other label!", "Other_label")


def test_read_legacy_manifests_needs_base_dir(tmp_path):
    ham, art = ham_table(), art_table(art_rows())
    pq.write_table(ham, tmp_path / f"legacy{HAM_SUFFIX}")
    pq.write_table(art, tmp_path / f"legacy{ART_SUFFIX}")
    with pytest.raises(SweepcatError) as info:
        read_manifests(tmp_path / f"legacy{HAM_SUFFIX}", tmp_path / f"legacy{ART_SUFFIX}")
    assert f"legacy{HAM_SUFFIX}" in str(info.value) and "base-dir" in str(info.value)
    with pytest.raises(SweepcatError):
        read_manifests(tmp_path)
    m = read_manifests(tmp_path, base_dir=tmp_path)
    assert m.description.root == str(tmp_path.resolve())
    assert (m.description.label, m.description.key) == ("legacy", "legacy")
    assert m.ham.num_rows == 3 and m.art.num_rows == 6


def test_read_manifests_reports_missing_and_unreadable(tmp_path):
    with pytest.raises(SweepcatError, match="no such file"):
        read_manifests(tmp_path / "nope.parquet", tmp_path / "nope2.parquet")
    (tmp_path / f"x{HAM_SUFFIX}").write_bytes(b"not parquet")
    (tmp_path / f"x{ART_SUFFIX}").write_bytes(b"not parquet")
    with pytest.raises(SweepcatError, match="not a readable Parquet file"):
        read_manifests(tmp_path)


def test_write_manifests_writes_nothing_when_invalid(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    out = tmp_path / "out"
    bad_ham = ham_table(tenDq=[1.0, float("nan"), 2.0])
    with pytest.raises(ContractError):
        write_manifests(out, Manifests(bad_ham, art_table(art_rows()), _description(root)))
    assert not out.exists() or list(out.iterdir()) == []


def test_write_manifests_invalid_leaves_old_files_untouched(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    out = tmp_path / "out"
    ham_path, art_path = write_manifests(out, Manifests(ham_table(), art_table(art_rows()), _description(root)))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    rows = art_rows(["h0", "h1", "h2", "h3"])
    rows[0]["file"] = "../escape.h5"
    bad = Manifests(ham_table(["h0", "h1", "h2", "h3"]), art_table(rows), _description(root))
    with pytest.raises(ContractError, match="escape.h5"):
        write_manifests(out, bad)
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before  # byte-identical, and no temporary files left behind


# =========================================================================== 3. inspect

LAYOUT_CASES = [
    ("B", B_DIR, {"rixs", "xps"}),
    ("A", A_DIR, {"rixs", "xps"}),
    ("C", C_DIR, {"gf", "mh", "rixs", "xps"}),
]
EXPECTED_AXES = {
    "rixs": ["eloss_RIXS", "ein_RIXS"], "xps": ["w_xps"], "mh": ["field"], "gf": ["freq"],
}


@pytest.fixture(scope="session")
def demo_specs(demo_root, tmp_path_factory, runner):
    """Draft specs written by `sweepcat inspect DIR -o SPEC.yml` for the three demo layouts."""
    specs_dir = tmp_path_factory.mktemp("specs")
    specs, outputs = {}, {}
    for layout, name, _ in LAYOUT_CASES:
        spec_path = specs_dir / f"{layout}.yml"
        result = invoke(runner, "inspect", demo_root / name, "-o", spec_path)
        assert result.exit_code == 0, result.output
        specs[layout], outputs[layout] = spec_path, result.output
    return specs, outputs


@pytest.mark.parametrize("layout,name,types", LAYOUT_CASES)
def test_inspect_detects_layout_and_artifacts(demo_root, demo_specs, layout, name, types):
    specs, outputs = demo_specs
    spec = load_spec(specs[layout])
    assert spec.layout == layout
    assert spec.root == str((demo_root / name).resolve())
    assert spec.label == name
    assert {t for s in spec.sources for t in s.artifacts} == types
    for s in spec.sources:
        assert s.layout == layout
        assert sorted(s.params) == sorted(PARAM_NAMES)
        for t, a in s.artifacts.items():
            assert a.axes == EXPECTED_AXES[t], (t, a)
    out = outputs[layout]
    assert f"layout: {layout}" in out
    assert "every constraint holds" in out
    assert "schema of" in out
    if layout != "A":
        assert "/params" in out
    assert f"draft spec written to {specs[layout]}" in out


def test_inspect_spec_details_per_layout(demo_root, demo_specs):
    specs, _ = demo_specs
    b = load_spec(specs["B"])
    (src,) = b.sources
    assert src.params_group == "/params" and src.files == ["*.h5"]
    assert src.artifacts["rixs"].dataset == "/RIXS" and src.artifacts["rixs"].shape == [N_ELOSS, N_EIN]
    assert src.artifacts["xps"].shape == [N_XPS] and src.artifacts["xps"].dtype == "float64"

    a = load_spec(specs["A"])
    assert len(a.sources) == 2
    by_type = {t: s for s in a.sources for t in s.artifacts}
    assert by_type["rixs"].files == ["*_rixs.h5"] and by_type["xps"].files == ["*_xps.h5"]
    assert by_type["rixs"].params_group is None  # parameters are file attributes
    assert by_type["rixs"].artifacts["rixs"].dtype == "float32"
    assert re.fullmatch(by_type["xps"].stem_pattern, "NiPS3_00007_xps").group("stem") == "NiPS3_00007"

    c = load_spec(specs["C"])
    arts = c.sources[0].artifacts
    assert (arts["mh"].dtype, arts["mh"].shape) == ("int32", [64])
    assert (arts["gf"].dtype, arts["gf"].shape) == ("complex128", [32])


@pytest.mark.parametrize("layout,axes", [
    ("B", {"eloss_RIXS", "ein_RIXS", "w_xps"}),
    ("A", {"eloss_RIXS", "ein_RIXS", "w_xps"}),
    ("C", {"eloss_RIXS", "ein_RIXS", "w_xps", "field", "freq"}),
])
def test_inspect_shared_axes(demo_root, demo_specs, layout, axes):
    spec = load_spec(demo_specs[0][layout])
    assert set(spec.shared_axes) == axes
    for name, where in spec.shared_axes.items():
        assert where["dataset"] == f"/{name}"
        with h5py.File(Path(spec.root) / where["file"], "r") as f:
            assert f[where["dataset"]].ndim == 1


def test_inspect_mixed_directory(demo_root, tmp_path, runner):
    mixed = tmp_path / "mixed"
    copy_files(demo_root / B_DIR, mixed, B_FILES[:2])
    copy_files(demo_root / C_DIR, mixed, [f"sim_{i:05d}.h5" for i in range(3)])
    spec_path = tmp_path / "mixed.yml"
    result = invoke(runner, "inspect", mixed, "-o", spec_path, "--no-tree")
    assert result.exit_code == 0, result.output
    assert "layout: mixed" in result.output
    spec = load_spec(spec_path)
    assert spec.layout == "mixed"
    assert sorted(s.layout for s in spec.sources) == ["B", "C"]
    files = {s.layout: [p for p in Path(spec.root).iterdir() if any(p.match(g) for g in s.files)]
             for s in spec.sources}
    assert sorted(p.name for p in files["B"]) == B_FILES[:2]
    assert len(files["C"]) == 3

    out = tmp_path / "out"
    result = invoke(runner, "manifest", spec_path, "-o", out)
    assert result.exit_code == 0, result.output
    ham, art = read_pair(out, "mixed")
    assert ham.num_rows == 2 * 64 + 3
    assert art.num_rows == 2 * 64 * 2 + 3 * 4
    assert ham.column("huid").to_pylist().count("sim_00002") == 1
    by_type = pc.value_counts(art.column("type")).to_pylist()
    assert {d["values"]: d["counts"] for d in by_type} == {"rixs": 131, "xps": 131, "mh": 3, "gf": 3}
    assert read_manifests(out).description.provenance["layout"] == "mixed"


# =========================================================================== 4. manifest end to end


@pytest.fixture(scope="session")
def built(demo_root, demo_specs, tmp_path_factory, runner):
    """`sweepcat manifest SPEC -o OUT` for each demo layout: {layout: (out_dir, key, ham, art)}."""
    specs, _ = demo_specs
    result = {}
    for layout, name, _ in LAYOUT_CASES:
        out = tmp_path_factory.mktemp(f"manifests_{layout}")
        r = invoke(runner, "manifest", specs[layout], "-o", out)
        assert r.exit_code == 0, r.output
        ham, art = read_pair(out, name)
        result[layout] = (out, name, ham, art)
    return result


@pytest.mark.parametrize("layout,n_ham,n_art", [("B", 256, 512), ("A", 24, 48), ("C", 24, 96)])
def test_manifest_counts(built, runner, layout, n_ham, n_art):
    out, key, ham, art = built[layout]
    assert (ham.num_rows, art.num_rows) == (n_ham, n_art)
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{key}{ART_SUFFIX}", f"{key}{HAM_SUFFIX}"])
    assert ham.column_names[:2] == ["huid", "key"]
    assert set(ham.column_names[2:]) == set(PARAM_NAMES)
    assert validate(ham, art) == []


def test_manifest_b_huids_keys_and_index(built, demo_root):
    _, _, ham, art = built["B"]
    huids = ham.column("huid").to_pylist()
    assert huids[0] == "NiPS3_random_rank0000_0000"
    assert huids == [f"NiPS3_random_rank{r:04d}_{i:04d}" for r in range(4) for i in range(64)]
    assert ham.column("key").to_pylist() == ["H_" + h for h in huids]
    df = art.to_pandas()
    types = df.groupby("huid")["type"].apply(sorted)
    assert len(types) == 256 and all(t == ["rixs", "xps"] for t in types)
    m = df["huid"].str.extract(r"^(NiPS3_random_rank\d{4})_(\d{4})$")
    assert m.notna().all().all()
    assert (df["file"] == m[0] + ".h5").all()
    assert (df["index"] == m[1].astype(int)).all()
    assert set(df["dataset"]) == {"/RIXS", "/XPS"}


@pytest.mark.parametrize("layout", ["B", "A", "C"])
def test_manifest_shape_dtype_axes_match_hdf5(built, demo_root, layout):
    _, key, _, art = built[layout]
    df = art.to_pandas()
    root = demo_root / key
    for (file, dataset), rows in df.groupby(["file", "dataset"]):
        with h5py.File(root / file, "r") as f:
            ds = f[dataset]
            shape = list(ds.shape[1:] if layout == "B" else ds.shape)
            dtype = ds.dtype.name
        for _, row in rows.iterrows():
            assert list(row["shape"]) == shape, (file, dataset)
            assert row["dtype"] == dtype, (file, dataset)
            assert list(row["axes"]) == EXPECTED_AXES[row["type"]]
            assert row["dataset"] == f"/{row['type'].upper()}"
        if layout == "B":
            assert sorted(rows["index"]) == list(range(64))
        else:
            assert rows["index"].isna().all()
            assert len(rows) == 1
    assert validate(*read_pair(built[layout][0], key), root=root, check_files_exist=True) == []


def test_manifest_parameters_equal_hdf5_b(built, demo_root):
    _, _, ham, _ = built["B"]
    df = ham.to_pandas().set_index("huid")
    for rank, row in [(0, 0), (1, 5), (2, 17), (3, 63)]:
        with h5py.File(demo_root / B_DIR / B_FILES[rank], "r") as f:
            for name in PARAM_NAMES:
                assert df.loc[f"NiPS3_random_rank{rank:04d}_{row:04d}", name] == f["params"][name][row], name


def test_manifest_parameters_equal_hdf5_a(built, demo_root):
    _, _, ham, art = built["A"]
    df = ham.to_pandas().set_index("huid")
    assert list(df.index) == [f"NiPS3_{i:05d}" for i in range(24)]
    for i in (0, 7, 23):
        for kind in ("rixs", "xps"):
            with h5py.File(demo_root / A_DIR / f"NiPS3_{i:05d}_{kind}.h5", "r") as f:
                for name in PARAM_NAMES:
                    assert df.loc[f"NiPS3_{i:05d}", name] == f.attrs[name], name
    files = art.to_pandas().groupby("huid")["file"].apply(sorted)
    assert files["NiPS3_00007"] == ["NiPS3_00007_rixs.h5", "NiPS3_00007_xps.h5"]


def test_manifest_parameters_equal_hdf5_c(built, demo_root):
    _, _, ham, art = built["C"]
    df = ham.to_pandas().set_index("huid")
    assert list(df.index) == [f"sim_{i:05d}" for i in range(24)]
    assert (ham.column("key").to_pylist() == [f"H_sim_{i:05d}" for i in range(24)])
    for i in (0, 11, 23):
        with h5py.File(demo_root / C_DIR / f"sim_{i:05d}.h5", "r") as f:
            for name in PARAM_NAMES:
                assert df.loc[f"sim_{i:05d}", name] == f["params"][name][()], name
    types = art.to_pandas().groupby("huid")["type"].apply(sorted)
    assert len(types) == 24 and all(t == ["gf", "mh", "rixs", "xps"] for t in types)


@pytest.mark.parametrize("layout", ["B", "A", "C"])
def test_manifest_description_travels(built, demo_root, demo_specs, layout):
    out, key, _, _ = built[layout]
    m = read_manifests(out)
    d = m.description
    spec = load_spec(demo_specs[0][layout])
    assert (d.key, d.label) == (key, key)
    assert d.root == str((demo_root / key).resolve())
    assert d.shared_axes == spec.shared_axes
    assert d.nan_policy == "error"
    assert d.provenance["layout"] == layout and d.provenance["generator"] == "spec"
    assert d.provenance["spec"] == str(demo_specs[0][layout])


@pytest.mark.parametrize("layout,n_art", [("B", 20), ("A", 20), ("C", 40)])
def test_manifest_limit(demo_specs, tmp_path, runner, layout, n_art):
    r = invoke(runner, "manifest", demo_specs[0][layout], "-o", tmp_path, "-n", 10)
    assert r.exit_code == 0, r.output
    assert "10 Hamiltonians" in r.output
    (ham_path,) = tmp_path.glob(f"*{HAM_SUFFIX}")
    m = read_manifests(tmp_path)
    assert m.ham.num_rows == 10 and m.art.num_rows == n_art
    assert set(m.art.column("huid").to_pylist()) == set(m.ham.column("huid").to_pylist())
    if layout == "B":
        assert m.ham.column("huid").to_pylist() == [f"NiPS3_random_rank0000_{i:04d}" for i in range(10)]
        assert sorted(set(m.art.column("index").to_pylist())) == list(range(10))


@pytest.mark.parametrize("layout", ["B", "A", "C"])
def test_manifest_is_idempotent(built, demo_specs, runner, layout):
    out, key, ham, art = built[layout]
    # Again into the same directory (replacing), and into a fresh one.
    for target in (out, out.parent / f"{out.name}_again"):
        r = invoke(runner, "manifest", demo_specs[0][layout], "-o", target)
        assert r.exit_code == 0, r.output
        ham2, art2 = read_pair(target, key)
        assert ham2.equals(ham) and art2.equals(art)
        assert sorted(p.name for p in target.iterdir()) == sorted([f"{key}{ART_SUFFIX}", f"{key}{HAM_SUFFIX}"])


# =========================================================================== 5. bad inputs (CLI)


def test_corrupt_file(demo_root, tmp_path, runner):
    data = c_copy(demo_root, tmp_path / "data")
    spec = draft_spec(data, tmp_path / "spec.yml")
    (data / "sim_00004.h5").write_bytes(np.random.default_rng(0).bytes(8192))
    out = tmp_path / "out"
    assert_rejected(invoke(runner, "manifest", spec, "-o", out), "sim_00004.h5", "not an HDF5 file")
    assert_nothing_written(out)
    r = invoke(runner, "inspect", data, "--no-tree")
    assert_rejected(r, "sim_00004.h5", "not an HDF5 file", code=1)


def test_corrupt_file_with_brackets_in_its_name_is_named_verbatim(demo_root, tmp_path, runner):
    """File names are data, not console markup: 'sim_[v2].h5' must not print as 'sim_.h5'."""
    data = c_copy(demo_root, tmp_path / "data", n=2)
    spec = draft_spec(data, tmp_path / "spec.yml")
    (data / "sim_[v2].h5").write_bytes(np.random.default_rng(1).bytes(4096))
    out = tmp_path / "out"
    assert_rejected(invoke(runner, "manifest", spec, "-o", out), "sim_[v2].h5")
    assert_nothing_written(out)


def test_truncated_file(demo_root, tmp_path, runner):
    data = b_copy(demo_root, tmp_path / "data")
    spec = draft_spec(data, tmp_path / "spec.yml")
    victim = data / B_FILES[1]
    os.truncate(victim, victim.stat().st_size // 2)
    out = tmp_path / "out"
    assert_rejected(invoke(runner, "manifest", spec, "-o", out), B_FILES[1], "truncated")
    assert_nothing_written(out)
    assert_rejected(invoke(runner, "inspect", data, "--no-tree"), B_FILES[1], "truncated", code=1)


def test_missing_dataset(demo_root, tmp_path, runner):
    data = c_copy(demo_root, tmp_path / "data")
    spec = draft_spec(data, tmp_path / "spec.yml")
    with h5py.File(data / "sim_00002.h5", "a") as f:
        del f["XPS"]
    out = tmp_path / "out"
    assert_rejected(invoke(runner, "manifest", spec, "-o", out), "sim_00002.h5", "missing dataset /XPS", "'xps'")
    assert_nothing_written(out)
    assert_rejected(invoke(runner, "inspect", data, "--no-tree"), "sim_00002.h5", "missing dataset(s) /XPS",
                    code=1)


def test_ragged_rows(demo_root, tmp_path, runner):
    data = c_copy(demo_root, tmp_path / "data")
    spec = draft_spec(data, tmp_path / "spec.yml")
    with h5py.File(data / "sim_00001.h5", "a") as f:
        xps = f["XPS"][:-1]
        del f["XPS"]
        f["XPS"] = xps
    out = tmp_path / "out"
    assert_rejected(invoke(runner, "manifest", spec, "-o", out), "sim_00001.h5", "ragged", "[4999]", "[5000]")
    assert_nothing_written(out)
    assert_rejected(invoke(runner, "inspect", data, "--no-tree"), "sim_00001.h5", "ragged", "[4999]", code=1)


def test_ragged_batched_row_count(demo_root, tmp_path, runner):
    data = b_copy(demo_root, tmp_path / "data")
    spec = draft_spec(data, tmp_path / "spec.yml")
    with h5py.File(data / B_FILES[0], "a") as f:
        xps = f["XPS"][:-1]
        del f["XPS"]
        f["XPS"] = xps
    out = tmp_path / "out"
    assert_rejected(invoke(runner, "manifest", spec, "-o", out), B_FILES[0], "row counts disagree", "/XPS")
    assert_nothing_written(out)
    assert_rejected(invoke(runner, "inspect", data, "--no-tree"), B_FILES[0], "row counts disagree", code=1)


def _nan_b(demo_root: Path, tmp_path: Path) -> tuple[Path, Path]:
    data = b_copy(demo_root, tmp_path / "data")
    spec = draft_spec(data, tmp_path / "spec.yml")
    with h5py.File(data / B_FILES[1], "a") as f:
        f["params/tenDq"][5] = np.nan
    return data, spec


def test_nan_parameter(demo_root, tmp_path, runner):
    data, spec = _nan_b(demo_root, tmp_path)
    out = tmp_path / "out"
    r = invoke(runner, "manifest", spec, "-o", out)
    assert_rejected(r, f"{B_FILES[1]} index 5", "tenDq", "nan", "--nan-policy")
    assert B_FILES[0] not in r.output
    assert_nothing_written(out)
    assert_rejected(invoke(runner, "inspect", data, "--no-tree"), f"{B_FILES[1]} index 5", "tenDq", code=1)


def test_nan_policy_null(demo_root, tmp_path, runner):
    _, spec = _nan_b(demo_root, tmp_path)
    out = tmp_path / "out"
    r = invoke(runner, "manifest", spec, "-o", out, "--nan-policy", "null")
    assert r.exit_code == 0, r.output
    m = read_manifests(out)
    assert (m.ham.num_rows, m.art.num_rows) == (128, 256)
    df = m.ham.to_pandas().set_index("huid")
    assert pd.isna(df.loc["NiPS3_random_rank0001_0005", "tenDq"])
    assert m.ham.column("tenDq").null_count == 1
    with h5py.File(tmp_path / "data" / B_FILES[1], "r") as f:
        assert df.loc["NiPS3_random_rank0001_0005", "Gam_c"] == f["params/Gam_c"][5]
        assert df.loc["NiPS3_random_rank0001_0006", "tenDq"] == f["params/tenDq"][6]
    assert m.description.nan_policy == "null"
    assert validate(m.ham, m.art) == []


def test_nan_policy_skip(demo_root, tmp_path, runner):
    _, spec = _nan_b(demo_root, tmp_path)
    out = tmp_path / "out"
    r = invoke(runner, "manifest", spec, "-o", out, "--nan-policy", "skip")
    assert r.exit_code == 0, r.output
    assert "skipped 1 entities" in r.output
    m = read_manifests(out)
    assert (m.ham.num_rows, m.art.num_rows) == (127, 254)
    huids = m.ham.column("huid").to_pylist()
    assert "NiPS3_random_rank0001_0005" not in huids
    assert "NiPS3_random_rank0001_0005" not in m.art.column("huid").to_pylist()
    art = m.art.to_pandas()
    in_file = art[art["file"] == B_FILES[1]]
    assert sorted(set(in_file["index"])) == [i for i in range(64) if i != 5]
    # The index of every remaining row is still its row in the file.
    assert (in_file["index"] == in_file["huid"].str[-4:].astype(int)).all()
    assert m.description.provenance["skipped_nan"] == 1
    with h5py.File(tmp_path / "data" / B_FILES[1], "r") as f:
        assert m.ham.to_pandas().set_index("huid").loc["NiPS3_random_rank0001_0006", "tenDq"] == f["params/tenDq"][6]


def test_nan_policy_unknown_is_rejected(demo_specs, tmp_path, runner):
    r = invoke(runner, "manifest", demo_specs[0]["C"], "-o", tmp_path / "out", "--nan-policy", "zero")
    assert_rejected(r, "'zero'", "error, null, skip")
    assert_nothing_written(tmp_path / "out")


def test_duplicate_huid_across_subdirectories(demo_root, tmp_path, runner):
    data = tmp_path / "data"
    copy_files(demo_root / C_DIR, data / "a", ["sim_00001.h5", "sim_00002.h5"])
    copy_files(demo_root / C_DIR, data / "b", ["sim_00001.h5", "sim_00003.h5"])
    spec = tmp_path / "spec.yml"
    r = invoke(runner, "inspect", data, "-o", spec, "--no-tree")
    assert_rejected(r, "a/sim_00001.h5", "b/sim_00001.h5", "duplicate ID", code=1)
    assert sorted(load_spec(spec).sources[0].files) == ["a/*.h5", "b/*.h5"]

    # The same with a hand-written catch-all pattern.
    data_spec = yaml.safe_load(spec.read_text())
    data_spec["sources"][0]["files"] = ["**/*.h5"]
    spec2 = tmp_path / "spec2.yml"
    spec2.write_text(yaml.safe_dump(data_spec))
    for s in (spec, spec2):
        out = tmp_path / f"out_{s.stem}"
        r = invoke(runner, "manifest", s, "-o", out)
        assert_rejected(r, "duplicate huid", "'sim_00001'")
        # The culprit is a pair of files: name them, not only the rows of a table the user never saw.
        assert_rejected(r, "a/sim_00001.h5", "b/sim_00001.h5")
        assert_nothing_written(out)


def test_duplicate_huid_fixed_by_template(demo_root, tmp_path, runner):
    data = tmp_path / "data"
    copy_files(demo_root / C_DIR, data / "a", ["sim_00001.h5", "sim_00002.h5"])
    copy_files(demo_root / C_DIR, data / "b", ["sim_00001.h5"])
    spec = tmp_path / "spec.yml"
    invoke(runner, "inspect", data, "-o", spec, "--no-tree")
    d = yaml.safe_load(spec.read_text())
    d["sources"][0]["huid"] = "{parent}_{stem}"
    spec.write_text(yaml.safe_dump(d))
    r = invoke(runner, "manifest", spec, "-o", tmp_path / "out")
    assert r.exit_code == 0, r.output
    m = read_manifests(tmp_path / "out")
    assert sorted(m.ham.column("huid").to_pylist()) == ["a_sim_00001", "a_sim_00002", "b_sim_00001"]


def test_symlink_escaping_root_via_spec(demo_root, tmp_path, runner):
    data = c_copy(demo_root, tmp_path / "data")
    spec = draft_spec(data, tmp_path / "spec.yml")
    outside = copy_files(demo_root / C_DIR, tmp_path / "outside", ["sim_00010.h5"])
    (data / "sim_00099.h5").symlink_to(outside / "sim_00010.h5")
    out = tmp_path / "out"
    assert_rejected(invoke(runner, "manifest", spec, "-o", out), "sim_00099.h5", "outside the dataset root")
    assert_nothing_written(out)


def test_dotdot_path_via_spec(demo_root, tmp_path, runner):
    data = c_copy(demo_root, tmp_path / "data")
    spec = draft_spec(data, tmp_path / "spec.yml")
    copy_files(demo_root / C_DIR, tmp_path / "elsewhere", ["sim_00010.h5"])
    d = yaml.safe_load(spec.read_text())
    d["sources"][0]["files"] = ["*.h5", "../elsewhere/*.h5"]
    spec.write_text(yaml.safe_dump(d))
    out = tmp_path / "out"
    assert_rejected(invoke(runner, "manifest", spec, "-o", out), "'../elsewhere/sim_00010.h5'", "'..'")
    assert_nothing_written(out)


def test_spec_pattern_matching_nothing(demo_root, tmp_path, runner):
    data = c_copy(demo_root, tmp_path / "data", n=2)
    spec = draft_spec(data, tmp_path / "spec.yml")
    d = yaml.safe_load(spec.read_text())
    d["sources"][0]["files"] = ["*.h5", "runs_*.hdf5"]
    spec.write_text(yaml.safe_dump(d))
    out = tmp_path / "out"
    assert_rejected(invoke(runner, "manifest", spec, "-o", out), "'runs_*.hdf5'", "matches no file")
    assert_nothing_written(out)


# --------------------------------------------------------------------------- plug-in generators

GEN_ROWS = """
def generate(output_dir, n_hamiltonians):
    n = n_hamiltonians or 3
    ham = pd.DataFrame({{"huid": [f"h{{i}}" for i in range(n)],
                        "tenDq": np.linspace(1.0, 2.0, n), "model": ["ising"] * n}})
    art = pd.DataFrame({{"huid": [f"h{{i}}" for i in range(n)], "type": ["rixs"] * n,
                        "file": ["{file}"] * n, "dataset": ["/RIXS"] * n, "index": list(range(n)),
                        "shape": [[151, 40]] * n, "dtype": ["float64"] * n}})
    {extra}
    return ham, art
"""


def _gen_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    with h5py.File(root / "batch.h5", "w") as f:
        f["RIXS"] = np.zeros((5, 151, 40))
    return root


def test_generator_valid_writes_parquet(tmp_path, runner):
    root = _gen_root(tmp_path)
    ref = write_generator(tmp_path / "gen_valid.py", GEN_ROWS.format(file="batch.h5", extra="pass"))
    out = tmp_path / "out"
    r = invoke(runner, "manifest", "--generator", ref, "--root", root, "-o", out, "-n", 5)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == [f"root{ART_SUFFIX}", f"root{HAM_SUFFIX}"]
    m = read_manifests(out)
    assert m.ham.column("huid").to_pylist() == [f"h{i}" for i in range(5)]
    assert m.ham.column("key").to_pylist() == [f"H_h{i}" for i in range(5)]
    assert m.ham.column("tenDq").to_pylist() == list(np.linspace(1.0, 2.0, 5))
    assert m.art.column("index").to_pylist() == list(range(5))
    assert m.art.column("shape").to_pylist() == [[151, 40]] * 5
    d = m.description
    assert (d.label, d.key, d.root) == ("root", "root", str(root.resolve()))
    assert d.provenance["generator"] == ref


def test_generator_label_option(tmp_path, runner):
    root = _gen_root(tmp_path)
    ref = write_generator(tmp_path / "gen_label.py", GEN_ROWS.format(file="batch.h5", extra="pass"))
    out = tmp_path / "out"
    r = invoke(runner, "manifest", "--generator", ref, "--root", root, "-o", out, "--label", "Spin waves v2")
    assert r.exit_code == 0, r.output
    assert (out / f"Spin_waves_v2{HAM_SUFFIX}").exists()
    assert read_manifests(out).description.label == "Spin waves v2"


def test_generator_needs_root(tmp_path, runner):
    ref = write_generator(tmp_path / "gen_noroot.py", GEN_ROWS.format(file="batch.h5", extra="pass"))
    assert_rejected(invoke(runner, "manifest", "--generator", ref, "-o", tmp_path / "out"), "--root")
    assert_nothing_written(tmp_path / "out")


def test_generator_missing_function(tmp_path, runner):
    ref = write_generator(tmp_path / "gen_nofunc.py", GEN_ROWS.format(file="batch.h5", extra="pass"))
    r = invoke(runner, "manifest", "--generator", ref.replace(":generate", ":nope"), "--root", tmp_path,
               "-o", tmp_path / "out")
    assert_rejected(r, "'nope'")


def test_generator_duplicate_type(tmp_path, runner):
    root = _gen_root(tmp_path)
    extra = 'art = pd.concat([art, art.iloc[[1]]], ignore_index=True)'
    ref = write_generator(tmp_path / "gen_duptype.py", GEN_ROWS.format(file="batch.h5", extra=extra))
    out = tmp_path / "out"
    r = invoke(runner, "manifest", "--generator", ref, "--root", root, "-o", out)
    assert_rejected(r, "rows 1, 3", "type 'rixs' appears more than once for huid 'h1'")
    assert_nothing_written(out)


def test_generator_dotdot_path(tmp_path, runner):
    root = _gen_root(tmp_path)
    extra = 'art.loc[2, "file"] = "../x.h5"'
    ref = write_generator(tmp_path / "gen_dotdot.py", GEN_ROWS.format(file="batch.h5", extra=extra))
    out = tmp_path / "out"
    r = invoke(runner, "manifest", "--generator", ref, "--root", root, "-o", out)
    assert_rejected(r, "rows 2 column 'file'", "'../x.h5'", "'..'")
    assert_nothing_written(out)


def test_generator_symlink_escaping_root(tmp_path, runner):
    root = _gen_root(tmp_path)
    (tmp_path / "outside").mkdir()
    with h5py.File(tmp_path / "outside" / "real.h5", "w") as f:
        f["RIXS"] = np.zeros((3, 151, 40))
    (root / "link.h5").symlink_to(tmp_path / "outside" / "real.h5")
    ref = write_generator(tmp_path / "gen_symlink.py", GEN_ROWS.format(file="link.h5", extra="pass"))
    out = tmp_path / "out"
    r = invoke(runner, "manifest", "--generator", ref, "--root", root, "-o", out)
    assert_rejected(r, "'link.h5'", "outside the dataset root")
    assert_nothing_written(out)


def test_generator_nan_parameter(tmp_path, runner):
    root = _gen_root(tmp_path)
    extra = 'ham.loc[1, "tenDq"] = np.nan'
    ref = write_generator(tmp_path / "gen_nan.py", GEN_ROWS.format(file="batch.h5", extra=extra))
    out = tmp_path / "out"
    assert_rejected(invoke(runner, "manifest", "--generator", ref, "--root", root, "-o", out),
                    "rows 1 column 'tenDq'", "nan")
    assert_nothing_written(out)
    r = invoke(runner, "manifest", "--generator", ref, "--root", root, "-o", out, "--nan-policy", "skip")
    assert r.exit_code == 0, r.output
    m = read_manifests(out)
    assert m.ham.column("huid").to_pylist() == ["h0", "h2"]
    assert m.art.column("huid").to_pylist() == ["h0", "h2"]
    assert m.art.column("index").to_pylist() == [0, 2]


@pytest.mark.parametrize("bad", ["np.nan", "np.inf"])
def test_generator_nan_policy_null(tmp_path, runner, bad):
    """--nan-policy null stores NaN *and* inf parameters as null, as the spec-driven path does."""
    root = _gen_root(tmp_path)
    extra = f'ham.loc[1, "tenDq"] = {bad}'
    ref = write_generator(tmp_path / f"gen_null_{bad[3:]}.py", GEN_ROWS.format(file="batch.h5", extra=extra))
    out = tmp_path / "out"
    r = invoke(runner, "manifest", "--generator", ref, "--root", root, "-o", out, "--nan-policy", "null")
    assert r.exit_code == 0, r.output
    m = read_manifests(out)
    assert m.ham.num_rows == 3 and m.art.num_rows == 3
    assert m.ham.column("tenDq").to_pylist() == [1.0, None, 2.0]
