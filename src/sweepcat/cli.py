"""The `sweepcat` command line: a thin layer over the library.

Every command prints errors as plain sentences (culprit, then what to do) and
exits non-zero; a traceback means a bug in sweepcat.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .errors import SweepcatError

app = typer.Typer(
    help=(
        "Make a simulation parameter sweep searchable and servable.\n\n"
        "The flow: HDF5 files -> inspect (draft spec) -> manifest (Parquet) -> catalog -> server.\n\n"
        "Try it:\n\n"
        "  sweepcat demo-data demo/data\n\n"
        "  sweepcat inspect demo/data/NiPS3_batched -o demo/nips3.yml\n\n"
        "  sweepcat manifest demo/nips3.yml -o demo/manifests"
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


@contextlib.contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A bar with rate and ETA on terminals; silent when output is piped."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


@contextlib.contextmanager
def friendly_errors() -> Iterator[None]:
    try:
        yield
    except SweepcatError as exc:
        err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    except KeyboardInterrupt:
        err.print("interrupted; nothing half-written was left behind")
        raise typer.Exit(code=130) from None


@app.command("demo-data")
def demo_data(
    out_dir: Path = typer.Argument(..., help="Directory to write the synthetic sweeps into."),
    scale: str = typer.Option("small", "--scale", help="small (a few hundred entities) or seed (100,000 batched)."),
) -> None:
    """Write synthetic sweeps in all three layouts, shaped like the NiPS3 seed data.

    Creates OUT/NiPS3_batched (layout B), OUT/NiPS3_per_artifact (A) and
    OUT/NiPS3_per_entity (C).

    Example:  sweepcat demo-data demo/data --scale seed
    """
    from . import demodata

    with friendly_errors():
        if scale not in demodata.SCALES:
            raise SweepcatError(f"unknown scale {scale!r}", f"use one of {', '.join(demodata.SCALES)}")
        t0 = time.perf_counter()
        with progress_bar(f"writing {scale} demo data", demodata.work_units(demodata.SCALES[scale])) as advance:
            dirs = demodata.write_demo(out_dir, scale, progress=advance)
        for layout, path in dirs.items():
            out.print(f"layout {layout}: {path}")
        out.print(f"done in {time.perf_counter() - t0:.1f} s; next: sweepcat inspect {dirs['B']} -o spec.yml")


@app.command("inspect")
def inspect_cmd(
    directory: Path = typer.Argument(..., help="Directory holding the HDF5 files of one dataset."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write the draft dataset spec (YAML) here."),
    tree: bool = typer.Option(True, help="Print the schema tree of a representative file."),
) -> None:
    """Explore HDF5 files: schema tree, layout (A, B, C or mixed), draft spec, data-provider report.

    Exits 1 when a constraint fails (not HDF5, corrupt, ragged, NaN, duplicate IDs);
    the report names the files and says what to ask the provider.

    Example:  sweepcat inspect /data/NiPS3 -o nips3.yml
    """
    from . import inspect as insp
    from .h5scan import list_files
    from .spec import dump_spec

    with friendly_errors():
        t0 = time.perf_counter()
        total = len(list_files(directory)) if directory.is_dir() else 0
        with progress_bar("reading HDF5 structure", total) as advance:
            report = insp.inspect_directory(directory, progress=advance)
        if tree and report.representative is not None:
            out.print(f"[bold]schema of {report.representative.rel}[/]")
            out.print(insp.schema_tree(report.representative), markup=False, highlight=False)
            out.print()
        out.print(insp.summary(report), markup=False, highlight=False)
        for note in report.notes:
            out.print(f"note: {note}", markup=False, highlight=False)
        out.print(insp.provider_report(report), markup=False, highlight=False)
        if output is not None and report.spec is not None:
            dump_spec(report.spec, output)
            out.print(f"draft spec written to {output}; next: sweepcat manifest {output} -o manifests/")
        out.print(f"inspected in {time.perf_counter() - t0:.2f} s")
        if not report.ok:
            raise typer.Exit(code=1)


@app.command("manifest")
def manifest_cmd(
    spec_file: Optional[Path] = typer.Argument(None, help="Dataset spec YAML (from `sweepcat inspect -o`)."),
    output: Path = typer.Option(..., "-o", "--output", help="Directory for NAME_hamiltonians.parquet and NAME_artifacts.parquet."),
    limit: Optional[int] = typer.Option(None, "-n", "--limit", help="Only the first N Hamiltonians (to try things out)."),
    generator: Optional[str] = typer.Option(None, "--generator", help="Plug-in generator module:function with "
                                            "generate(output_dir, n_hamiltonians) -> (ham_df, art_df)."),
    root: Optional[Path] = typer.Option(None, "--root", help="With --generator: the data root that 'file' paths are relative to."),
    label: Optional[str] = typer.Option(None, "--label", help="With --generator: the dataset label (default: root's name)."),
    nan_policy: Optional[str] = typer.Option(None, "--nan-policy", help="NaN/inf parameters: error (default), "
                                             "null (store null) or skip (drop the entity)."),
) -> None:
    """Build the two Parquet manifests from a spec (or a plug-in generator), validated before writing.

    Nothing is written when any file or row breaks the contract; files are
    written atomically.

    Examples:

      sweepcat manifest nips3.yml -o manifests/

      sweepcat manifest --generator gen_spinwave.py:generate --root /data/spinwave -o manifests/
    """
    from .contract import NAN_POLICIES, write_manifests
    from .manifest import build_manifests, run_generator
    from .spec import load_spec

    with friendly_errors():
        if nan_policy is not None and nan_policy not in NAN_POLICIES:
            raise SweepcatError(f"--nan-policy {nan_policy!r} is unknown", f"use one of {', '.join(NAN_POLICIES)}")
        t0 = time.perf_counter()
        if generator:
            if root is None:
                raise SweepcatError("--generator needs --root", "pass the directory that artifact 'file' paths are relative to")
            manifests = run_generator(generator, output, root=root, label=label, limit=limit,
                                      nan_policy=nan_policy or "error")
        else:
            if spec_file is None:
                raise SweepcatError("no spec given", "pass SPEC.yml (write one with `sweepcat inspect DIR -o SPEC.yml`) or --generator")
            spec = load_spec(spec_file)
            from .manifest import source_files

            total = sum(len(source_files(Path(spec.root), s, [])) for s in spec.sources)
            with progress_bar("reading parameters", total) as advance:
                manifests = build_manifests(spec, limit=limit, nan_policy=nan_policy, progress=advance,
                                            spec_path=str(spec_file))
        ham_path, art_path = write_manifests(output, manifests)
        skipped = manifests.description.provenance.get("skipped_nan", 0)
        out.print(f"{manifests.ham.num_rows} Hamiltonians -> {ham_path}")
        out.print(f"{manifests.art.num_rows} artifacts   -> {art_path}")
        if skipped:
            out.print(f"skipped {skipped} entities with NaN/inf parameters (--nan-policy skip)")
        out.print(f"done in {time.perf_counter() - t0:.2f} s")


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
