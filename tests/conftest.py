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
