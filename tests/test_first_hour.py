"""Issue 12: a newcomer's first hour. The README tour followed literally, Tiled habits, and mistakes
that end in one sentence (exit 2, no traceback), each against real files, catalogs and servers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import yaml
from tiled.client import from_uri

from sweepcat.atomic import umask_mode
from sweepcat.catalog.ingest import ingest
from sweepcat.cli import app
from sweepcat.contract import read_manifests
from sweepcat.errors import SweepcatError
from tests.support.servers import API_KEY, clean_env, free_port, plain_tiled_server, stop, sweepcat_server, wait_ready

REPO = Path(__file__).resolve().parents[1]


def _fails_with_a_sentence(result: Any, *needles: str) -> None:
    """Exit 2, the culprit named, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    for needle in needles:
        assert needle in result.output, (needle, result.output)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory, demo_manifests: Path) -> str:
    path = tmp_path_factory.mktemp("first-hour") / "c.db"
    for name in ("NiPS3_per_entity", "NiPS3_batched"):
        ingest(read_manifests(demo_manifests, dataset=name), str(path))
    return str(path)


@pytest.fixture(scope="module")
def server(catalog: str) -> Any:
    with sweepcat_server(catalog) as url:
        yield url


# --------------------------------------------------------------------------- the tour, literally


def test_demo_data_rewritten_under_a_reader_replaces_whole_files(tmp_path: Path, runner: Any) -> None:
    """Item 1: the demo server holds the files open while the tour runs demo-data again."""
    out = tmp_path / "data"
    assert runner.invoke(app, ["demo-data", str(out)]).exit_code == 0
    path = out / "NiPS3_batched" / "NiPS3_random_rank0000.h5"
    before = path.stat().st_ino
    with h5py.File(path, "r") as held:  # as a running server holds it
        first_row = held["RIXS"][0]
        r = runner.invoke(app, ["demo-data", str(out)])
        assert r.exit_code == 0, r.output
        np.testing.assert_array_equal(held["RIXS"][0], first_row)  # the reader's file was never truncated
    assert path.stat().st_ino != before  # replaced by rename, not rewritten in place
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["RIXS"][0], first_row)
    assert not list(out.rglob("*.tmp"))
    assert path.stat().st_mode & 0o777 == umask_mode()  # the umask's mode, not mkstemp's 0600


def test_a_trial_run_never_replaces_the_real_manifests(demo_root: Path, tmp_path: Path, runner: Any) -> None:
    """Item 2: `manifest ... -n 10` after the full run."""
    spec = tmp_path / "nips3.yml"
    assert runner.invoke(app, ["inspect", str(demo_root / "NiPS3_batched"), "-o", str(spec)]).exit_code == 0
    out = tmp_path / "manifests"
    assert runner.invoke(app, ["manifest", str(spec), "-o", str(out)]).exit_code == 0
    full = read_manifests(out).ham.num_rows
    r = runner.invoke(app, ["manifest", str(spec), "-o", str(out), "-n", "10"])
    _fails_with_a_sentence(r, "NiPS3_batched_hamiltonians.parquet exists", "--overwrite")
    assert read_manifests(out).ham.num_rows == full
    assert runner.invoke(app, ["manifest", str(spec), "-o", str(tmp_path / "trial"), "-n", "10"]).exit_code == 0
    assert read_manifests(tmp_path / "trial").ham.num_rows == 10
    assert runner.invoke(app, ["manifest", str(spec), "-o", str(out), "-n", "10", "--overwrite"]).exit_code == 0
    assert read_manifests(out).ham.num_rows == 10
    assert (out / "NiPS3_batched_hamiltonians.parquet").stat().st_mode & 0o777 == umask_mode()


def test_a_directory_of_several_datasets_says_which_to_pick(demo_manifests: Path) -> None:
    """Item 3: `make demo` writes three pairs into demo/manifests; the README reads one of them."""
    with pytest.raises(SweepcatError) as err:
        read_manifests(demo_manifests)
    assert "3 datasets" in str(err.value) and "dataset='NiPS3_batched'" in str(err.value)
    assert read_manifests(demo_manifests, dataset="NiPS3_batched").description.key == "NiPS3_batched"
    with pytest.raises(SweepcatError, match="no manifests of dataset 'nope'"):
        read_manifests(demo_manifests, dataset="nope")


def test_make_demo_keeps_what_the_tour_wrote() -> None:
    """Item 4: re-running `make demo` deletes nothing under demo/."""
    script = (REPO / "scripts" / "demo.sh").read_text()
    assert "rm -rf demo" not in script and "rm " not in script.replace("# ", "")


def test_the_readme_snippets_name_what_exists() -> None:
    readme = (REPO / "README.md").read_text()
    assert 'read_manifests("demo/manifests", dataset="NiPS3_batched")' in readme
    assert 'c["_axes"]["NiPS3_batched"]' in readme and '["NiPS3_batched"]["_axes"]' not in readme
    assert "-o demo/trial -n 10" in readme


# --------------------------------------------------------------------------- Tiled habits


def test_a_dataset_lists_only_its_hamiltonians(server: str, catalog: str) -> None:
    """Item 5: len(ds) counts Hamiltonians; every child has its arrays; axes live at /_axes/<DATASET>."""
    c = from_uri(server, api_key=API_KEY)
    ds = c["NiPS3_per_entity"]
    assert len(ds) == 24
    for _, h in ds.items():
        assert set(h) == {"rixs", "xps", "mh", "gf"}
    assert "eloss_RIXS" in c["_axes"]["NiPS3_per_entity"]


def test_counts_are_exact_past_tiled_s_default_threshold(server: str) -> None:
    """Item 7: Tiled counts exactly only up to exact_count_limit (100 by default: "1-10 of 101");
    sweepcat's server raises the limit, so 256 Hamiltonians are 256, after repr() too."""
    c = from_uri(server, api_key=API_KEY)
    ds = c["NiPS3_batched"]
    repr(ds)
    assert len(ds) == 256
    assert len(c["NiPS3_batched"].search(__import__("tiled.queries").queries.Key("tenDq") > 0)) == 256


def test_config_runs_with_the_fast_path_through_the_app_factory(runner: Any, catalog: str, demo_root: Path,
                                                                tmp_path: Path, monkeypatch: Any) -> None:
    """Item 6: `sweepcat config` output, run as its header says, serves what `sweepcat serve` serves."""
    r = runner.invoke(app, ["config", "--catalog", catalog], env={"SWEEPCAT_API_KEY": API_KEY})
    assert r.exit_code == 0, r.output
    assert "from_config_env" in r.stdout and "single_user_api_key" in r.stdout
    assert f"API key: {API_KEY}" in r.stderr
    config_file = tmp_path / "tiled.yml"
    config_file.write_text(r.stdout)

    from sweepcat.server.app import from_config_env
    from sweepcat.server.fastpath import LocatorFastPath

    monkeypatch.setenv("SWEEPCAT_CONFIG", str(config_file))
    assert any(m.cls is LocatorFastPath for m in from_config_env().user_middleware)

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "sweepcat.server.app:from_config_env",
                             "--host", "127.0.0.1", "--port", str(port)],
                            env=clean_env(SWEEPCAT_CONFIG=str(config_file)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        got = from_uri(url, api_key=API_KEY)["NiPS3_per_entity"]["H_sim_00003"]["rixs"].read()
        with h5py.File(demo_root / "NiPS3_per_entity" / "sim_00003.h5", "r") as f:
            np.testing.assert_array_equal(got, f["RIXS"][()])
    finally:
        stop(proc)


def test_config_never_creates_a_catalog(runner: Any, tmp_path: Path) -> None:
    r = runner.invoke(app, ["config", "--catalog", str(tmp_path / "typo.db")])
    _fails_with_a_sentence(r, "typo.db", "does not exist")
    assert not (tmp_path / "typo.db").exists()


# --------------------------------------------------------------------------- mistakes that end in a sentence


def test_client_mistakes_are_sentences(server: str) -> None:
    """Item 8/10: server down, the banner's ?api_key= URL, a wrong key, a missing dataset."""
    import sweepcat.client

    with pytest.raises(SweepcatError, match="cannot reach http://127.0.0.1:9"):
        sweepcat.client.open("http://127.0.0.1:9", api_key=API_KEY)  # said at open, not at the first len()
    pasted = sweepcat.client.open(f"{server}/ui/?api_key={API_KEY}")
    assert len(pasted["NiPS3_per_entity"].find("tenDq > 0")) == 24
    with pytest.raises(SweepcatError, match="refused the API key"):
        sweepcat.client.open(server, api_key="wrong")
    with pytest.raises(SweepcatError, match="requires an API key and none was given"):
        sweepcat.client.open(server)
    backend = pasted.backend
    with pytest.raises(SweepcatError) as err:
        backend.search("nope", None, 0, 10)
    text = str(err.value)
    assert "/api/v1/sweepcat/search/nope" in text and "no dataset 'nope'" in text and "plain Tiled" not in text


def test_keyword_ranges_of_three_values_say_what_a_tuple_means() -> None:
    from sweepcat.query import QueryError, from_keywords

    with pytest.raises(QueryError, match=r"takes two values") as err:
        from_keywords(tenDq=(1, 2, 3))
    assert "quotes" not in str(err.value)


def test_chained_comparisons(server: str) -> None:
    """Item 13: `1 < tenDq < 2` as Python writes it, equal to the spelled-out query."""
    import sweepcat.client

    ds = sweepcat.client.open(server, api_key=API_KEY)["NiPS3_per_entity"]
    assert ds.find("1 < tenDq < 2.5").keys() == ds.find("tenDq > 1 and tenDq < 2.5").keys()
    assert ds.find("2 >= tenDq").keys() == ds.find("tenDq <= 2").keys()


@pytest.mark.parametrize("url_args", [["--api-key", "wrong"], [], ["--api-key", API_KEY, "--port9"]])
def test_delete_over_http_mistakes_are_sentences(server: str, runner: Any, url_args: list[str]) -> None:
    url = server if "--port9" not in url_args else "http://127.0.0.1:9"
    args = [a for a in url_args if a != "--port9"]
    r = runner.invoke(app, ["delete", "NiPS3_per_entity", "--url", url, *args, "--yes"], env={"SWEEPCAT_API_KEY": None})
    _fails_with_a_sentence(r, url)
    c = from_uri(server, api_key=API_KEY)
    assert "NiPS3_per_entity" in c  # nothing deleted


def test_register_against_tiled_without_the_adapter_leaves_nothing(tmp_path: Path, demo_manifests: Path,
                                                                   demo_root: Path) -> None:
    """Item 8: a plain Tiled server that cannot take sweepcat's arrays: a sentence, and no empty containers."""
    from sweepcat.catalog.schema import ensure_catalog, parse_catalog
    from sweepcat.client.register import register

    catalog = tmp_path / "plain.db"
    ensure_catalog(parse_catalog(str(catalog)))
    with plain_tiled_server(catalog, [demo_root], tmp_path) as url:  # no adapter for sweepcat's arrays
        with pytest.raises(SweepcatError, match="nothing was left behind") as err:
            register(read_manifests(demo_manifests, dataset="NiPS3_per_entity"), url, API_KEY)
        assert "sweepcat serve" in (err.value.hint or "")
        assert list(from_uri(url, api_key=API_KEY)) == []


def _spec(demo_root: Path, tmp_path: Path, runner: Any, edit: Any) -> Path:
    spec = tmp_path / "spec.yml"
    assert runner.invoke(app, ["inspect", str(demo_root / "NiPS3_per_artifact"), "-o", str(spec)]).exit_code == 0
    data = yaml.safe_load(spec.read_text())
    edit(data)
    spec.write_text(yaml.safe_dump(data))
    return spec


SPEC_MISTAKES = {
    "absolute glob": (lambda d: d["sources"][0].update(files=[d["root"] + "/*_rixs.h5"]), "absolute pattern"),
    "stem_pattern without stem": (lambda d: d["sources"][0].update(stem_pattern="(.+)_rixs"), "no group named 'stem'"),
    "invalid regex": (lambda d: d["sources"][0].update(stem_pattern="(?P<stem>.+"), "not a valid regular expression"),
    "pattern matching nothing": (lambda d: d["sources"][0].update(stem_pattern="zzz(?P<stem>.+)"),
                                 "does not match stem_pattern"),
    "key with a slash": (lambda d: d.update(key="a/b"), "key 'a/b'"),
}


@pytest.mark.parametrize("mistake", list(SPEC_MISTAKES))
def test_spec_mistakes_are_sentences(mistake: str, demo_root: Path, tmp_path: Path, runner: Any) -> None:
    """Item 9: each once a traceback (or, for a stem_pattern matching nothing, a silent fallback)."""
    edit, needle = SPEC_MISTAKES[mistake]
    spec = _spec(demo_root, tmp_path, runner, edit)
    out = tmp_path / "out"
    _fails_with_a_sentence(runner.invoke(app, ["manifest", str(spec), "-o", str(out)]), needle)
    assert not out.exists() or not list(out.iterdir())


def test_cli_path_mistakes_are_sentences(demo_manifests: Path, demo_root: Path, tmp_path: Path, runner: Any) -> None:
    """Item 9: outputs that are files or cannot be made, a catalog that is a directory, two manifest dirs."""
    spec = _spec(demo_root, tmp_path, runner, lambda d: None)
    _fails_with_a_sentence(runner.invoke(app, ["manifest", str(spec), "-o", "/etc/passwd"]), "/etc/passwd is a file")
    _fails_with_a_sentence(runner.invoke(app, ["demo-data", "/proc/x"]), "/proc/x")
    _fails_with_a_sentence(runner.invoke(app, ["ingest", str(demo_manifests), "--catalog", str(tmp_path)]),
                           "is a directory")
    _fails_with_a_sentence(runner.invoke(app, ["ingest", str(demo_manifests), str(tmp_path / "missing")]),
                           "no such file or directory")
    # two manifest directories: both ingested
    other = tmp_path / "other"
    other.mkdir()
    for suffix in ("hamiltonians", "artifacts"):
        name = f"NiPS3_per_artifact_{suffix}.parquet"
        (other / name).write_bytes((demo_manifests / name).read_bytes())
    one = tmp_path / "one"
    one.mkdir()
    for suffix in ("hamiltonians", "artifacts"):
        name = f"NiPS3_per_entity_{suffix}.parquet"
        (one / name).write_bytes((demo_manifests / name).read_bytes())
    r = runner.invoke(app, ["ingest", str(one), str(other), "--catalog", str(tmp_path / "two.db")])
    assert r.exit_code == 0, r.output
    assert "NiPS3_per_entity" in r.output and "NiPS3_per_artifact" in r.output


def test_generator_output_without_shape_and_dtype_is_filled_from_the_headers(tmp_path: Path, runner: Any) -> None:
    """Item 12: `manifest --generator` fills shape/dtype from the HDF5 headers, so `ingest` takes it."""
    root = tmp_path / "root"
    root.mkdir()
    with h5py.File(root / "batch.h5", "w") as f:
        f["RIXS"] = np.arange(5 * 6 * 4, dtype="f4").reshape(5, 6, 4)
        f["one"] = np.arange(7, dtype="i8")
    gen = tmp_path / "gen_bare.py"
    gen.write_text(
        "import pandas as pd\n"
        "def generate(output_dir, n):\n"
        "    ham = pd.DataFrame({'huid': [f'h{i}' for i in range(5)], 'tenDq': [1.0, 2, 3, 4, 5]})\n"
        "    art = pd.DataFrame({'huid': [f'h{i}' for i in range(5)] + ['h0'], 'type': ['rixs'] * 5 + ['one'],\n"
        "                        'file': ['batch.h5'] * 6, 'dataset': ['/RIXS'] * 5 + ['/one'],\n"
        "                        'index': [0, 1, 2, 3, 4, None]})\n"
        "    return ham, art\n")
    out = tmp_path / "out"
    r = runner.invoke(app, ["manifest", "--generator", f"{gen}:generate", "--root", str(root), "-o", str(out)])
    assert r.exit_code == 0, r.output
    m = read_manifests(out)
    art = m.art.to_pandas().set_index(["huid", "type"])
    assert list(art.loc[("h3", "rixs"), "shape"]) == [6, 4] and art.loc[("h3", "rixs"), "dtype"] == "float32"
    assert list(art.loc[("h0", "one"), "shape"]) == [7] and art.loc[("h0", "one"), "dtype"] == "int64"
    r = runner.invoke(app, ["ingest", str(out), "--catalog", str(tmp_path / "g.db")])
    assert r.exit_code == 0, r.output
    # a dataset that is not there: named, nothing written
    gen.write_text(gen.read_text().replace("'/one'", "'/nothere'"))
    out2 = tmp_path / "out2"
    r = runner.invoke(app, ["manifest", "--generator", f"{gen}:generate", "--root", str(root), "-o", str(out2)])
    _fails_with_a_sentence(r, "batch.h5#/nothere")
    assert not out2.exists() or not list(out2.iterdir())


def test_inspect_reports_what_manifest_will_refuse_in_a_mixed_directory(demo_root: Path, tmp_path: Path,
                                                                       runner: Any) -> None:
    """Item 12: a batched file and a per-entity file whose 'rixs' dtypes differ."""
    import shutil

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(demo_root / "NiPS3_batched" / "NiPS3_random_rank0000.h5", mixed)
    shutil.copy(demo_root / "NiPS3_per_entity" / "sim_00002.h5", mixed)
    with h5py.File(mixed / "sim_00002.h5", "a") as f:
        rixs = f["RIXS"][()]
        del f["RIXS"]
        f["RIXS"] = rixs.astype("f4")
    spec = tmp_path / "mixed.yml"
    r = runner.invoke(app, ["inspect", str(mixed), "-o", str(spec), "--no-tree"])
    assert r.exit_code == 1, r.output
    assert "layout: mixed" in r.output
    assert "artifact 'rixs' has dtype float32 here and float64 in NiPS3_random_rank0000.h5" in r.output
    _fails_with_a_sentence(runner.invoke(app, ["manifest", str(spec), "-o", str(tmp_path / "m")]), "'rixs'")


# --------------------------------------------------------------------------- serving like an operator expects


def test_serve_refuses_a_missing_catalog_unless_asked(runner: Any, tmp_path: Path) -> None:
    r = runner.invoke(app, ["serve", "--catalog", str(tmp_path / "typo.db")], env={"SWEEPCAT_API_KEY": API_KEY})
    _fails_with_a_sentence(r, "typo.db", "--create")
    assert not (tmp_path / "typo.db").exists()


def test_serve_says_the_port_is_taken_before_any_banner(server: str, catalog: str, runner: Any) -> None:
    port = server.rsplit(":", 1)[1]
    r = runner.invoke(app, ["serve", "--catalog", catalog, "--port", port], env={"SWEEPCAT_API_KEY": API_KEY})
    _fails_with_a_sentence(r, f"127.0.0.1:{port}", "another --port")
    assert "API key" not in r.output  # no banner for a server that never ran


def test_serve_logs_each_request_at_the_chosen_level(catalog: str) -> None:
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sweepcat.cli", "serve", "--catalog", catalog, "--port", str(port),
                             "--log-level", "info"], env=clean_env(SWEEPCAT_API_KEY=API_KEY), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        httpx.get(f"{url}/api/v1/sweepcat/datasets", headers={"Authorization": f"Apikey {API_KEY}"})
    finally:
        stop(proc)
    log = proc.stdout.read()
    assert '"GET /api/v1/sweepcat/datasets HTTP/1.1" 200' in log, log


def test_version_and_datasets_commands(runner: Any, catalog: str, server: str) -> None:
    import tiled

    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and f"Tiled {tiled.__version__}" in r.output and "sweepcat " in r.output
    local = runner.invoke(app, ["datasets", "--catalog", catalog])
    assert local.exit_code == 0, local.output
    assert "NiPS3_per_entity: 24 Hamiltonians" in local.output and "rixs (151, 40) float64" in local.output
    remote = runner.invoke(app, ["datasets", "--url", server, "--api-key", API_KEY])
    assert remote.exit_code == 0 and remote.output == local.output
    _fails_with_a_sentence(runner.invoke(app, ["datasets", "--url", server, "--api-key", "wrong"]), "401")


def test_install_prints_no_license_deprecation() -> None:
    """Item 13: the SPDX license string (setuptools >= 77) instead of the deprecated table."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert isinstance(project["project"]["license"], str)
    assert any(r.startswith("setuptools>=77") for r in project["build-system"]["requires"])


def test_ruff_is_clean() -> None:
    """Item 15: `ruff check` over the code, the tests and the benchmarks."""
    ruff = Path(sys.executable).with_name("ruff")
    r = subprocess.run([str(ruff), "check", "src", "tests", "bench"], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "NO_COLOR": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
