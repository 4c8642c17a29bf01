"""Shared fixtures: one small demo dataset per test session, written through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sweepcat.cli import app


@pytest.fixture(scope="session")
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory, runner: CliRunner) -> Path:
    """``sweepcat demo-data OUT`` at the small scale. Read-only: copy before mutating."""
    out = tmp_path_factory.mktemp("demo") / "data"
    result = runner.invoke(app, ["demo-data", str(out), "--scale", "small"])
    assert result.exit_code == 0, result.output
    for name in ("NiPS3_batched", "NiPS3_per_artifact", "NiPS3_per_entity"):
        assert (out / name).is_dir(), f"demo-data did not write {name}"
    return out


# --------------------------------------------------------------------------- servers and catalogs

import itertools  # noqa: E402

from tests.support.servers import PostgresCluster  # noqa: E402

_db_counter = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> PostgresCluster:
    """A real PostgreSQL cluster (initdb + pg_ctl) for the whole session."""
    cluster = PostgresCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, not yet created catalog on each backend."""
    if request.param == "sqlite":
        return str(tmp_path / "catalog.db")
    cluster = request.getfixturevalue("postgres")
    return cluster.create_database(f"cat{next(_db_counter)}")


@pytest.fixture(scope="session")
def demo_manifests(demo_root: Path, tmp_path_factory: pytest.TempPathFactory, runner: CliRunner) -> Path:
    """Manifests of the three demo datasets in one directory."""
    out = tmp_path_factory.mktemp("manifests")
    for name in ("NiPS3_batched", "NiPS3_per_artifact", "NiPS3_per_entity"):
        spec = out / f"{name}.yml"
        r = runner.invoke(app, ["inspect", str(demo_root / name), "-o", str(spec)])
        assert r.exit_code == 0, r.output
        r = runner.invoke(app, ["manifest", str(spec), "-o", str(out)])
        assert r.exit_code == 0, r.output
    return out


def demo_catalog(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, manifests: Path,
                 name: str) -> str:
    """A catalog on the backend ``request.param`` names ("sqlite" or "postgresql") holding the three demo
    datasets, for module-scoped served fixtures."""
    from sweepcat.catalog.ingest import ingest
    from tests.test_catalog import DATASETS, manifests_of

    if request.param == "sqlite":
        catalog = str(tmp_path_factory.mktemp(name) / "catalog.db")
    else:
        catalog = request.getfixturevalue("postgres").create_database(f"{name}_{id(request)}")
    for dataset in DATASETS:
        ingest(manifests_of(manifests, dataset), catalog)
    return catalog


def sqlite_demo(tmp_path_factory: pytest.TempPathFactory, manifests: Path, name: str,
                datasets: tuple[str, ...] = ("NiPS3_batched", "NiPS3_per_entity")) -> str:
    """A fresh SQLite catalog holding ``datasets`` of the demo data (for module-scoped fixtures)."""
    from sweepcat.catalog.ingest import ingest
    from sweepcat.contract import read_manifests

    path = tmp_path_factory.mktemp(name) / "c.db"
    for dataset in datasets:
        ingest(read_manifests(manifests, dataset=dataset), str(path))
    return str(path)
